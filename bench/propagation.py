#!/usr/bin/env python3
"""Toggle propagation: delay from the rename syscall to the first changed response.

The toggle's directory holds either `maintenance-mode-off` or `maintenance-mode-on`
(the toggle). Each flip renames one into the other, the classic deploy-script way,
and polls the daemon over ONE kept-alive HTTP/1.1 connection as fast as possible
until the status changes (off->on: first 503; on->off: first 200). The delay is
measured from just before os.rename() to the arrival of that response, so it
includes one request round trip (~0.1-0.3 ms with Python's http.client).

Bounded: `--flips` flips, each waiting at most `--timeout` seconds.
Prints one JSON object.
"""
import argparse
import http.client
import json
import os
import random
import sys
import time


def pct(sorted_vals, p):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


class Poller:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conn = None
        self.reconnects = 0

    def status(self):
        for _ in range(3):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                self.conn.request("GET", "/", headers={"Accept": "text/html"})
                r = self.conn.getresponse()
                r.read()
                if r.will_close:
                    self.conn.close()
                    self.conn = None
                    self.reconnects += 1
                return r.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                self.reconnects += 1
        raise RuntimeError("cannot reach the daemon")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True, help="the toggle's directory")
    ap.add_argument("--on-name", default="maintenance-mode-on")
    ap.add_argument("--off-name", default="maintenance-mode-off")
    ap.add_argument("--flips", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=5.0, help="max wait per flip, seconds")
    a = ap.parse_args()

    on = os.path.join(a.dir, a.on_name)
    off = os.path.join(a.dir, a.off_name)
    if os.path.exists(on):
        os.rename(on, off)
    elif not os.path.exists(off):
        open(off, "w").close()

    p = Poller(a.host, a.port)
    # Settle: maintenance must be off before the first flip.
    deadline = time.monotonic() + a.timeout
    while p.status() != 200:
        if time.monotonic() > deadline:
            sys.exit("daemon does not answer 200 with maintenance off")
        time.sleep(0.01)

    delays = {"on": [], "off": []}
    timeouts = 0
    polls = 0
    rtts = []
    stale = 0  # flips that found the new state already before the rename (should be 0)
    rng = random.Random(1)
    for i in range(a.flips):
        to_on = i % 2 == 0
        src, dst, want = (off, on, 503) if to_on else (on, off, 200)
        # One timed poll in the current state: the round-trip floor of the measurement.
        r0 = time.perf_counter_ns()
        before = p.status()
        rtts.append((time.perf_counter_ns() - r0) / 1e6)
        if before == want:
            stale += 1
        t0 = time.perf_counter_ns()
        os.rename(src, dst)
        limit = t0 + int(a.timeout * 1e9)
        while True:
            st = p.status()
            polls += 1
            now = time.perf_counter_ns()
            if st == want:
                delays["on" if to_on else "off"].append((now - t0) / 1e6)
                break
            if now > limit:
                timeouts += 1
                break
        time.sleep(0.005 + rng.random() * 0.010)  # 5-15 ms between flips

    # Leave maintenance off.
    if os.path.exists(on):
        os.rename(on, off)

    rtts.sort()
    out = {"flips": a.flips, "timeouts": timeouts, "polls": polls, "reconnects": p.reconnects,
           "stale": stale, "rtt_p50_ms": pct(rtts, 50), "rtt_p99_ms": pct(rtts, 99)}
    every = sorted(delays["on"] + delays["off"])
    for name, vals in (("all", every), ("on", sorted(delays["on"])), ("off", sorted(delays["off"]))):
        out[name] = {
            "n": len(vals),
            "p50_ms": pct(vals, 50),
            "p99_ms": pct(vals, 99),
            "max_ms": vals[-1] if vals else None,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
