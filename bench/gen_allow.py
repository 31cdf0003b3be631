#!/usr/bin/env python3
"""Writes an allow_file: N random IPv4 /24 and /32 entries (about half each,
fixed seed, none inside 127.0.0.0/8) plus the given client addresses, one per line."""
import argparse
import random

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=100000)
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--client", action="append", default=[])
ap.add_argument("out")
a = ap.parse_args()

rng = random.Random(a.seed)
with open(a.out, "w") as f:
    f.write(f"# {a.n} random entries (/24 and /32) + {len(a.client)} client address(es)\n")
    for _ in range(a.n):
        while True:
            x = rng.getrandbits(32)
            if x >> 24 not in (0, 127) and x >> 28 < 14:  # not 0/8, 127/8, multicast/reserved
                break
        o = [(x >> s) & 255 for s in (24, 16, 8, 0)]
        if rng.random() < 0.5:
            f.write(f"{o[0]}.{o[1]}.{o[2]}.0/24\n")
        else:
            f.write(f"{o[0]}.{o[1]}.{o[2]}.{o[3]}/32\n")
    for c in a.client:
        f.write(c + "\n")
