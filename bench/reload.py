#!/usr/bin/env python3
"""Full reload time with a large allowlist.

Sends SIGHUP to the daemon and waits for its log line ("config reloaded", or a
refusal). Reports (a) the duration the daemon itself logs for the reload, if it
logs one (a field such as `elapsed=`, `took=`, `duration=`, `ms=`), and (b) the
externally observed time from kill(2) to the line appearing in the log file
(polled every 0.5 ms; an upper bound that includes log buffering).

Bounded: --n reloads, each waiting at most --timeout seconds.
Prints one JSON object.
"""
import argparse
import json
import os
import re
import signal
import statistics
import time

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DONE = re.compile(r"config reloaded|reload refused|allowlist.*(loaded|reloaded)", re.I)
DUR = re.compile(
    r"\b(?:elapsed|took|duration|reload_ms|elapsed_ms|ms|time)\s*[=:]\s*\"?([0-9]+(?:\.[0-9]+)?)\s*(ms|s|µs|us|ns)?",
    re.I,
)
SCALE = {"ms": 1.0, "s": 1000.0, "µs": 0.001, "us": 0.001, "ns": 1e-6, None: 1.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    observed, logged, lines, refused, entries = [], [], [], 0, None
    for _ in range(a.n):
        start = os.path.getsize(a.log)
        t0 = time.perf_counter()
        os.kill(a.pid, signal.SIGHUP)
        found = None
        while found is None and time.perf_counter() - t0 < a.timeout:
            with open(a.log, "rb") as f:
                f.seek(start)
                new = f.read().decode("utf-8", "replace")
            for line in ANSI.sub("", new).splitlines():
                if DONE.search(line):
                    found = line
                    break
            if found is None:
                time.sleep(0.0005)
        if found is None:
            continue
        observed.append((time.perf_counter() - t0) * 1000)
        lines.append(found.strip())
        if "refused" in found:
            refused += 1
        e = re.search(r"allowlist_entries\s*[=:]\s*([0-9]+)", found)
        if e:
            entries = int(e.group(1))
        m = DUR.search(found)
        if m:
            logged.append(float(m.group(1)) * SCALE.get(m.group(2), 1.0))
        time.sleep(0.2)

    out = {
        "n": a.n,
        "completed": len(observed),
        "refused": refused,
        "observed_ms_median": statistics.median(observed) if observed else None,
        "observed_ms_max": max(observed) if observed else None,
        "logged_ms_median": statistics.median(logged) if logged else None,
        "logged_ms_max": max(logged) if logged else None,
        "allowlist_entries": entries,
        "sample_line": lines[-1] if lines else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
