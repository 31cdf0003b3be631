#!/usr/bin/env python3
"""Sync-worker stand-in app and the probe for bench/slow_clients.sh.

  syncapp.py serve [--port 0] [--workers 8] [--big 1048576] [--sndbuf 16384] [--ready-file F]
      A fixed pool of N threads, each accepting and serving ONE connection at
      a time (like gunicorn's sync workers, unicorn, PHP-FPM): it reads the
      whole request (head + Content-Length body), answers with
      `Connection: close` and closes. No read timeout: a client that trickles
      its request holds the worker, which is exactly what the proxy in front
      has to prevent. SO_SNDBUF is fixed at 16 KiB (--sndbuf): on loopback the
      kernel would otherwise size the send buffer from the 64 KiB loopback MSS,
      up to 4 MiB, and swallow a 1 MiB answer at once, so no slow reader could
      ever hold a worker; on a real network the buffer starts near 16 KiB.
        GET /big   -> 1 MiB body (--big), or ?bytes=N (slow-read target)
        anything   -> 200 "ok <bytes-of-body>\n"
      Prints `listening on 127.0.0.1:PORT` (and writes PORT to --ready-file);
      on SIGTERM prints one JSON line of counters and exits.

  syncapp.py probe --url URL [--interval 0.1] [--duration 30] [--timeout 5]
      One ordinary GET every interval, each on a fresh connection, for
      `duration` seconds (bounded: at most duration/interval + 1 probes).
      Prints one JSON line: sent, ok (status 200), success %, p50/p99/max ms
      (latency of every probe, failures counted at their timeout).

Same behaviour as the Rust stand-in in tests/support/syncapp.rs.
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse

HEAD_LIMIT = 64 * 1024


def serve(args):
    big = b"x" * args.big
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(args.backlog)
    port = lsock.getsockname()[1]
    stats = {"served": 0, "busy_max": 0, "errors": 0}
    busy = [0]
    lock = threading.Lock()

    def read_request(conn):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
            if len(buf) > HEAD_LIMIT:
                return None
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) < 2:
            return None
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = rest
        while len(body) < length:
            chunk = conn.recv(min(65536, length - len(body)))
            if not chunk:
                return None
            body += chunk
        return parts[0].decode("latin-1"), parts[1].decode("latin-1"), len(body)

    def worker():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            if args.sndbuf:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
            with lock:
                busy[0] += 1
                stats["busy_max"] = max(stats["busy_max"], busy[0])
            try:
                req = read_request(conn)
                if req is not None:
                    method, target, n = req
                    path = target.split("?", 1)[0]
                    if path == "/big" and method in ("GET", "HEAD"):
                        q = urllib.parse.parse_qs(target.split("?", 1)[1] if "?" in target else "")
                        body = b"x" * int(q["bytes"][0]) if "bytes" in q else big
                    else:
                        body = b"ok %d\n" % n
                    head = (
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                    ).encode()
                    conn.sendall(head if method == "HEAD" else head + body)
                    with lock:
                        stats["served"] += 1
            except OSError:
                with lock:
                    stats["errors"] += 1
            finally:
                try:
                    conn.close()
                except OSError:
                    pass
                with lock:
                    busy[0] -= 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for t in threads:
        t.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.ready_file + ".tmp", args.ready_file)
    while not done.wait(0.5):
        pass
    with lock:
        print(json.dumps(stats), flush=True)
    # Daemon threads may be blocked in recv() on a slow client: just leave.
    sys.stdout.flush()
    os._exit(0)


def probe_once(host, port, target, timeout):
    t0 = time.monotonic()
    status = 0
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(max(0.001, timeout - (time.monotonic() - t0)))
            s.sendall(
                f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            buf = b""
            while True:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    raise socket.timeout()
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            line = buf.split(b"\r\n", 1)[0].split(b" ")
            if len(line) >= 2 and line[1].isdigit():
                status = int(line[1])
    except (OSError, socket.timeout):
        status = 0
    return status, time.monotonic() - t0


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def probe(args):
    u = urllib.parse.urlsplit(args.url)
    host, port = u.hostname, u.port or 80
    target = (u.path or "/") + (("?" + u.query) if u.query else "")
    lat, statuses = [], {}
    lock = threading.Lock()
    threads = []
    start = time.monotonic()
    n = 0
    max_probes = int(args.duration / args.interval) + 1

    def one():
        st, el = probe_once(host, port, target, args.timeout)
        with lock:
            lat.append(el)
            statuses[st] = statuses.get(st, 0) + 1

    # Fire on a fixed schedule, each probe in its own thread, so a slow
    # answer does not delay the following probes.
    while n < max_probes:
        due = start + n * args.interval
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        if time.monotonic() - start > args.duration:
            break
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
        n += 1
    for t in threads:
        t.join(args.timeout + 2)
    with lock:
        lat_ms = sorted(x * 1000 for x in lat)
        ok = statuses.get(200, 0)
        out = {
            "sent": n,
            "ok": ok,
            "success_pct": round(100.0 * ok / n, 2) if n else 0.0,
            "p50_ms": round(percentile(lat_ms, 50), 2),
            "p99_ms": round(percentile(lat_ms, 99), 2),
            "max_ms": round(lat_ms[-1], 2) if lat_ms else 0.0,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
        }
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--workers", type=int, default=8)
    s.add_argument("--backlog", type=int, default=1024)
    s.add_argument("--big", type=int, default=1 << 20)
    s.add_argument("--sndbuf", type=int, default=16384, help="SO_SNDBUF of accepted connections (0: kernel default)")
    s.add_argument("--ready-file")
    p = sub.add_parser("probe")
    p.add_argument("--url", required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--timeout", type=float, default=5)
    args = ap.parse_args()
    serve(args) if args.cmd == "serve" else probe(args)


if __name__ == "__main__":
    main()
