#!/usr/bin/env python3
"""RSS of a server process holding N idle keep-alive connections.

Opens N TCP connections to HOST:PORT in batches, sends one `GET /` on each and
reads the whole response (so each connection is a kept-alive, idle HTTP/1.1
connection), waits, then reads VmRSS/VmHWM of --pid and checks how many
connections are still open; with --reuse, then sends a second request on some
of them (an idle connection must still serve). Source addresses rotate over 127.0.0.2..127.0.0.N
so that no single source address runs out of ephemeral ports.

With --rounds R (> 1) it does that R times, closing every connection after
each round and waiting (at most 30 s) until the server's descriptor count is
back near where it started or stops falling, and reads VmRSS again then: RSS
per round with the connections open and after they closed, to see whether
memory creeps.

Bounded: at most N connections per round and R rounds, every socket operation
has a timeout. With --h2 each connection speaks HTTP/2 instead (h2c with prior
knowledge, or ALPN h2 with --tls): the preface and SETTINGS, one GET / on
stream 1 read to its end, the server's SETTINGS acknowledged (and its PINGs
while the client reads); the stream-per-connection reuse sends stream 3.
Prints one JSON object (with --rounds > 1: one line per round on
stderr as it goes, and the rounds in "rounds").
"""
import argparse
import json
import resource
import select
import socket
import ssl
import subprocess
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


TREE = False


def descendants(pid):
    """pid and every process below it (nginx: the master and its workers)."""
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def status_kb(pid):
    """VmRSS, VmHWM, Threads of pid; with --tree summed over its descendants
    too, and Pss (shared pages divided among the processes that map them: the
    sum over nginx's master and workers counts their shared pages once)."""
    out = {}
    for p in descendants(pid) if TREE else [pid]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM", "Threads"):
                        out[k] = out.get(k, 0) + int(v.split()[0])
            if TREE:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        k, _, v = line.partition(":")
                        if k == "Pss":
                            out[k] = out.get(k, 0) + int(v.split()[0])
        except OSError:
            pass
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
                # the TCP stream itself (a TLS socket refuses MSG_PEEK)
                if socket.socket.recv(s, 1, socket.MSG_PEEK):
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


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_STATUS = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}


def h2_frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def h2_request(a, stream):
    """HEADERS for GET / on `stream`, HPACK by hand: indexed :method GET, :scheme,
    :path /, literal :authority and user-agent (never indexed)."""
    auth = f"{a.host}:{a.port}".encode()
    ua = b"idle_conns"
    block = bytes([0x82, 0x87 if a.tls else 0x86, 0x84, 0x01, len(auth)]) + auth
    block += bytes([0x0f, 0x2b, len(ua)]) + ua
    return h2_frame(0x1, 0x5, stream, block)  # END_STREAM | END_HEADERS


def recv_exact(s, n, buf):
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_h2_response(s, stream, pending=b""):
    """Reads frames until `stream` ends; acknowledges SETTINGS and PING on the
    way. Returns (status, keepalive: no GOAWAY seen). Bounded by the socket's
    timeout and at most 1,000 frames."""
    status, keep, buf = None, True, pending
    for _ in range(1000):
        buf = recv_exact(s, 9, buf)
        length = int.from_bytes(buf[:3], "big")
        ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = recv_exact(s, 9 + length, buf)
        payload, buf = buf[9:9 + length], buf[9 + length:]
        if ftype == 0x4 and not flags & 0x1:  # SETTINGS
            s.sendall(h2_frame(0x4, 0x1, 0))
        elif ftype == 0x6 and not flags & 0x1:  # PING
            s.sendall(h2_frame(0x6, 0x1, 0, payload))
        elif ftype == 0x7:  # GOAWAY
            keep = False
        elif ftype == 0x1 and sid == stream:  # HEADERS
            off = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
            if status is None and len(payload) > off:
                status = H2_STATUS.get(payload[off], 0)
            if flags & 0x1:
                break
        elif ftype == 0x0 and sid == stream:  # DATA
            if length:  # give the window back, as a client that keeps the connection would
                s.sendall(h2_frame(0x8, 0, 0, length.to_bytes(4, "big")))
            if flags & 0x1:
                break
        elif ftype == 0x3 and sid == stream:  # RST_STREAM
            raise ConnectionError("stream reset")
    else:
        raise ValueError("too many frames")
    if status is None:
        raise ValueError("no :status")
    return status, keep


def one_round(a):
    """Opens the connections, reads RSS, optionally reuses some, closes them all."""
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
                if a.tls:
                    s = a.tls.wrap_socket(s, server_hostname="localhost")
                if a.h2:
                    s.sendall(H2_PREFACE + h2_frame(0x4, 0, 0) + h2_request(a, 1))
                else:
                    s.sendall(req)
                batch.append(s)
            except OSError:
                errors += 1
                s.close()
        for s in batch:
            try:
                st, keep = read_h2_response(s, 1) if a.h2 else read_response(s)
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
    if a.after_open:
        subprocess.run(a.after_open.format(pid=a.pid), shell=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    # Idle connections must still serve: a second request on some of them.
    reused, reused_ok = 0, 0
    spread = socks[:: max(1, len(socks) // a.reuse)][: a.reuse] if a.reuse > 0 else []
    for s in spread:
        reused += 1
        try:
            if a.h2:
                s.sendall(h2_request(a, 3))
                st, _ = read_h2_response(s, 3)
            else:
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

    return {
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
        "pss_before_kib": before.get("Pss"),
        "pss_kib": after.get("Pss"),
        "hwm_kib": after.get("VmHWM"),
        "threads": after.get("Threads"),
        "server_fds": fds,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls", action="store_true",
                    help="connect with TLS (certificate not verified): such connections are not parked")
    ap.add_argument("--h2", action="store_true",
                    help="HTTP/2: h2c with prior knowledge, or ALPN h2 with --tls (never parked)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--sources", type=int, default=40, help="spread over 127.0.0.2..127.0.0.(1+N)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between the last connection and the RSS reading")
    ap.add_argument("--reuse", type=int, default=0,
                    help="after the RSS reading, send a second request on this many of the idle connections")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat this many times, closing every connection between rounds")
    ap.add_argument("--after-round", default="",
                    help="with --rounds: shell command run after each round's readings ({pid}, {round} replaced)")
    ap.add_argument("--tree", action="store_true",
                    help="sum VmRSS/VmHWM over --pid and every process below it (nginx's master and workers)")
    ap.add_argument("--after-open", default="",
                    help="shell command run right after the RSS reading with the connections open ({pid} replaced)")
    ap.add_argument("--linger", type=float, default=0.0,
                    help="if > 0: count open connections again this many seconds after the last one opened")
    a = ap.parse_args()
    global TREE
    TREE = a.tree
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"] if a.h2 else ["http/1.1"])
        a.tls = ctx
    a.rounds = max(1, min(a.rounds, 100))

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

    if a.rounds <= 1:
        print(json.dumps(one_round(a)))
        return
    base_fds = fd_count(a.pid) or 0
    start = status_kb(a.pid)
    rounds = []
    for r in range(a.rounds):
        out = one_round(a)
        # Let the server see every close before reading RSS again: until its
        # descriptor count is back near the start or has not moved for 1 s
        # (pooled upstream connections stay open), at most 30 s.
        deadline = time.monotonic() + 30
        last, still_since = None, time.monotonic()
        while time.monotonic() < deadline:
            n = fd_count(a.pid) or 0
            if n != last:
                last, still_since = n, time.monotonic()
            if n <= base_fds + 20 or time.monotonic() - still_since >= 1.0:
                break
            time.sleep(0.1)
        time.sleep(a.settle)
        closed = status_kb(a.pid)
        out["round"] = r + 1
        out["rss_closed_kib"] = closed.get("VmRSS")
        out["fds_closed"] = fd_count(a.pid)
        if a.after_round:
            subprocess.run(a.after_round.format(pid=a.pid, round=r + 1), shell=True, timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        rounds.append(out)
        print(f"round {r + 1}: {out['kept_alive']} open: VmRSS {out['rss_kib'] / 1024:.1f} MiB; "
              f"all closed: VmRSS {out['rss_closed_kib'] / 1024:.1f} MiB, VmHWM {closed.get('VmHWM', 0) / 1024:.1f} MiB, "
              f"{out['fds_closed']} fds", file=sys.stderr, flush=True)
    print(json.dumps({
        "rss_start_kib": start.get("VmRSS"),
        "rss_open_kib": [x["rss_kib"] for x in rounds],
        "rss_closed_kib": [x["rss_closed_kib"] for x in rounds],
        "hwm_kib": status_kb(a.pid).get("VmHWM"),
        "rounds": rounds,
    }))


if __name__ == "__main__":
    main()
