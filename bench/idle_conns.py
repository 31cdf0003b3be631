#!/usr/bin/env python3
"""RSS of a server process holding N idle keep-alive connections.

Opens N TCP connections to HOST:PORT in batches, sends one `GET /` on each and
reads the whole response (so each connection is a kept-alive, idle HTTP/1.1
connection), waits, then reads VmRSS/VmHWM of --pid and checks how many
connections are still open; with --reuse, then sends a second request on some
of them (an idle connection must still serve). Source addresses rotate over 127.0.0.2..127.0.0.N
so that no single source address runs out of ephemeral ports.

Bounded: at most N connections, every socket operation has a timeout.
Prints one JSON object.
"""
import argparse
import json
import resource
import select
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def status_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def fd_count(pid):
    try:
        import os
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def count_alive(socks):
    """Connections still open: a closed one is readable with EOF."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    readable = {fd for fd, _ in poller.poll(0)}
    alive = 0
    for s in socks:
        if s.fileno() not in readable:
            alive += 1
        else:
            try:
                if s.recv(1, socket.MSG_PEEK):
                    alive += 1
            except OSError:
                pass
    return alive


def read_response(s):
    """Reads one HTTP/1.1 response with Content-Length; returns (status, keepalive)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close = None, False
    for h in lines[1:]:
        k, _, v = h.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"connection" and b"close" in v.lower():
            close = True
    if length is None:
        raise ValueError("response without Content-Length")
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return status, not close


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--sources", type=int, default=40, help="spread over 127.0.0.2..127.0.0.(1+N)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between the last connection and the RSS reading")
    ap.add_argument("--reuse", type=int, default=0,
                    help="after the RSS reading, send a second request on this many of the idle connections")
    ap.add_argument("--linger", type=float, default=0.0,
                    help="if > 0: count open connections again this many seconds after the last one opened")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.n + 100
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        sys.exit(f"RLIMIT_NOFILE {soft} < {need}: raise ulimit -n")

    before = status_kb(a.pid)
    socks, errors, statuses = [], 0, {}
    req = f"GET / HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nUser-Agent: idle_conns\r\n\r\n".encode()
    t0 = time.monotonic()
    i = 0
    while i < a.n:
        batch = []
        for _ in range(min(a.batch, a.n - i)):
            src = f"127.0.0.{2 + (i % a.sources)}"
            i += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                # Pick the port at connect() time (per 4-tuple), not at bind().
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
                s.connect((a.host, a.port))
                s.sendall(req)
                batch.append(s)
            except OSError:
                errors += 1
                s.close()
        for s in batch:
            try:
                st, keep = read_response(s)
                statuses[st] = statuses.get(st, 0) + 1
                if keep:
                    socks.append(s)
                else:
                    errors += 1
                    s.close()
            except (OSError, ValueError):
                errors += 1
                s.close()
    opened_s = time.monotonic() - t0
    t_open = time.monotonic()
    time.sleep(a.settle)

    alive = count_alive(socks)
    after = status_kb(a.pid)
    fds = fd_count(a.pid)
    # Idle connections must still serve: a second request on some of them.
    reused, reused_ok = 0, 0
    spread = socks[:: max(1, len(socks) // a.reuse)][: a.reuse] if a.reuse > 0 else []
    for s in spread:
        reused += 1
        try:
            s.sendall(req)
            st, _ = read_response(s)
            reused_ok += st in statuses
        except (OSError, ValueError):
            pass
    # How long does the server keep idle keep-alive connections? Look again later.
    lingered = None
    if a.linger > 0:
        time.sleep(max(0.0, t_open + a.linger - time.monotonic()))
        lingered = count_alive(socks)
    for s in socks:
        s.close()

    print(json.dumps({
        "requested": a.n,
        "kept_alive": len(socks),
        "alive_after_settle": alive,
        "settle_s": a.settle,
        "linger_s": a.linger,
        "alive_after_linger": lingered,
        "errors": errors,
        "reused": reused,
        "reused_ok": reused_ok,
        "statuses": statuses,
        "open_seconds": round(opened_s, 2),
        "rss_before_kib": before.get("VmRSS"),
        "rss_kib": after.get("VmRSS"),
        "hwm_kib": after.get("VmHWM"),
        "threads": after.get("Threads"),
        "server_fds": fds,
    }))


if __name__ == "__main__":
    main()
