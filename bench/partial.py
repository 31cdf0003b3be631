#!/usr/bin/env python3
"""Partial maintenance and holding, measured against a running gatekeeper.

  bench/partial.py readonly BIN   # 64 connections of mixed GET/POST while the toggle
                                  # flips 100 times between read-only and off: writes
                                  # decided during read-only never reach the app, and
                                  # no GET is refused
  bench/partial.py held BIN [N]   # N (10000) requests held by `pause`: gatekeeper's RSS,
                                  # and the time from `resume` to the last answer

Starts its own app (a threaded Python server that records what reaches it) and its
own gatekeeper on loopback ports; every process is stopped at the end. Bounded in
time: each run stops after at most 120 s.
"""
import asyncio
import http.server
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

DEADLINE = time.monotonic() + 120


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class App(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, port):
        self.seen = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with self.server.lock:
            self.server.seen.append((self.command, self.path))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = answer


def start(bin_, extra=""):
    d = tempfile.mkdtemp(prefix="gk-partial-")
    os.mkdir(f"{d}/toggle")
    app_port, gk_port, adm = free_port(), free_port(), free_port()
    app = App(app_port)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    cfg = f"{d}/gk.toml"
    with open(cfg, "w") as f:
        f.write(
            f'listen = ["127.0.0.1:{gk_port}"]\n[upstream]\nurl = "http://127.0.0.1:{app_port}"\n'
            f'[maintenance]\ntoggle = "{d}/toggle/maintenance-mode-on"\nrecheck = "2s"\n{extra}\n'
            f'[admin]\nlisten = "127.0.0.1:{adm}"\n[log]\naccess = false\nlevel = "warn"\n'
        )
    gk = subprocess.Popen([bin_, "run", "-c", cfg], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", gk_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return d, cfg, app, gk, gk_port, adm


async def request(reader, writer, method, path, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


def write_toggle(d, text):
    tmp = f"{d}/toggle/.flip"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, f"{d}/toggle/maintenance-mode-on")


async def readonly(bin_):
    d, cfg, app, gk, port, _ = start(bin_)
    posts = []  # (id, sent, answered, status)
    gets = {"ok": 0, "refused": 0}
    windows = []  # (read-only confirmed, about to go off)
    stop = False

    async def worker(w):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        while not stop and time.monotonic() < DEADLINE:
            i += 1
            if i % 2:
                s, _ = await request(reader, writer, "GET", f"/r/{w}/{i}")
                gets["ok" if s == 200 else "refused"] += 1
            else:
                pid = f"{w}-{i}"
                sent = time.monotonic()
                s, h = await request(reader, writer, "POST", f"/w/{pid}", b"data")
                posts.append((pid, sent, time.monotonic(), s))
                if h.get("connection") == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    async def flipper():
        nonlocal stop
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(50):
            write_toggle(d, "read_only = true\n")
            while True:
                _, h = await request(reader, writer, "GET", "/probe")
                if h.get("x-maintenance-mode") == "read-only":
                    break
            confirmed = time.monotonic()
            await asyncio.sleep(0.1)
            leaving = time.monotonic()
            windows.append((confirmed, leaving))
            os.remove(f"{d}/toggle/maintenance-mode-on")
            while True:
                _, h = await request(reader, writer, "GET", "/probe")
                if "x-maintenance-mode" not in h:
                    break
            await asyncio.sleep(0.05)
        stop = True

    t = time.monotonic()
    await asyncio.gather(flipper(), *(worker(w) for w in range(64)))
    took = time.monotonic() - t
    reached = {p.split("/w/")[1] for m, p in app.seen if m == "POST"}
    decided_in_ro = [p for p in posts if any(c <= p[1] and p[2] <= l for c, l in windows)]
    leaked = [p for p in decided_in_ro if p[0] in reached or p[3] != 503]
    gk.terminate()
    gk.wait()
    print(
        f"read-only flips: {2 * len(windows)} flips in {took:.1f} s; GETs {gets['ok']} answered 200, "
        f"{gets['refused']} refused; POSTs {len(posts)}: {len(decided_in_ro)} sent and answered while "
        f"read-only held, of which {len(leaked)} reached the app or were not 503; "
        f"{len(reached)} POSTs reached the app in all (while off)"
    )
    return 0 if not leaked and gets["refused"] == 0 else 1


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def metric(adm, name):
    with socket.create_connection(("127.0.0.1", adm), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    m = re.search(rf"^{re.escape(name)} (\S+)$", data.decode(), re.M)
    return float(m.group(1)) if m else None


async def held(bin_, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d, cfg, app, gk, port, adm = start(bin_, f"max_held = {n + 10}")
    rss_before = rss_kib(gk.pid)
    subprocess.run([bin_, "pause", "-c", cfg, "--max", "60s"], check=True, capture_output=True)
    while metric(adm, "gatekeeper_maintenance") != 1.0:
        await asyncio.sleep(0.05)
    conns = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET /held/{i} HTTP/1.1\r\nHost: shop.example\r\n\r\n".encode())
        conns.append((r, w))
        if i % 500 == 499:
            await asyncio.sleep(0)
    while (metric(adm, "gatekeeper_held_requests") or 0) < n and time.monotonic() < DEADLINE:
        await asyncio.sleep(0.1)
    held_now = metric(adm, "gatekeeper_held_requests")
    rss_held = rss_kib(gk.pid)
    t = time.monotonic()
    subprocess.run([bin_, "resume", "-c", cfg], check=True, capture_output=True)

    async def read(r):
        line = await r.readline()
        return int(line.split()[1]) if line else 0

    statuses = await asyncio.gather(*(read(r) for r, _ in conns))
    took = time.monotonic() - t
    for _, w in conns:
        w.close()
    ok = sum(1 for s in statuses if s == 200)
    counts = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    gk.terminate()
    gk.wait()
    print(
        f"held: {int(held_now or 0)} requests held; gatekeeper RSS {rss_before / 1024:.1f} MiB idle, "
        f"{rss_held / 1024:.1f} MiB holding them; resume to last answer {took:.2f} s; "
        f"{ok} of {n} answered 200 (statuses {counts}); app saw {len(app.seen)}"
    )
    return 0 if ok == n else 1


if __name__ == "__main__":
    mode, binary = sys.argv[1], sys.argv[2]
    if mode == "readonly":
        sys.exit(asyncio.run(readonly(binary)))
    sys.exit(asyncio.run(held(binary, int(sys.argv[3]) if len(sys.argv) > 3 else 10000)))
