#!/usr/bin/env python3
"""Prints the benchmark table from the files run.sh wrote in its work dir.

results.tsv: section target conns round rps p50_ms p99_ms errors peak_rss_kib
meta.env: key=value lines; propagation.json, idle.json, reload.json: helper outputs.
Medians over rounds for req/s and latencies; errors summed; peak RSS is the max.
Targets are printed next to ratios for reading, never asserted.
"""
import json
import os
import statistics
import sys
from collections import defaultdict

work = sys.argv[1]


def load_json(name):
    p = os.path.join(work, name)
    if not os.path.exists(p):
        return None
    try:
        with open(p) as f:
            return json.load(f)
    except ValueError:
        return None


meta = {}
with open(os.path.join(work, "meta.env")) as f:
    for line in f:
        k, _, v = line.rstrip("\n").partition("=")
        meta[k] = v

rows = defaultdict(list)  # (section, target, conns) -> [record]
with open(os.path.join(work, "results.tsv")) as f:
    for line in f:
        s, t, c, r, rps, p50, p99, err, rss = line.split()
        rows[(s, t, int(c))].append(
            dict(rps=float(rps), p50=float(p50), p99=float(p99), err=int(err), rss=int(rss))
        )


def agg(key):
    rs = rows.get(key)
    if not rs:
        return None
    return dict(
        rps=statistics.median(r["rps"] for r in rs),
        p50=statistics.median(r["p50"] for r in rs),
        p99=statistics.median(r["p99"] for r in rs),
        err=sum(r["err"] for r in rs),
        rss=max(r["rss"] for r in rs),
        n=len(rs),
    )


def mib(kib):
    return f"{kib / 1024:.1f}" if kib else "-"


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}x"


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "MISSED")


out = []
w = out.append
w(f"gatekeeper benchmark  {meta.get('date', '')}")
w(f"machine: {meta.get('nproc')} CPUs, {meta.get('cpu')}, {meta.get('mem')}, {meta.get('kernel')}")
w(f"load average (1/5/15 min; other work on the host shows here): before {meta.get('load')}, after {meta.get('load_end')}")
w(f"versions: gatekeeper {meta.get('gk_version')}; {meta.get('nginx_version')}; {meta.get('haproxy_version')}; {meta.get('wrk_version')}")
w(f"mode: {meta.get('mode')}: {meta.get('rounds')} round(s) x {meta.get('duration')} s per wrk run, rounds interleaved "
  f"(round r: every target once, order rotated), wrk -t{meta.get('threads')}; medians over rounds, errors summed")
nw = meta.get('workers', '2')
w(f"workers: gatekeeper = {nw} worker(s), each a single-threaded tokio runtime; nginx proxy = "
  f"worker_processes {nw}; HAProxy = nbthread {nw}; hyper floor = {nw} worker(s) like gatekeeper's")
w("upstream (all rows): nginx, worker_processes 1, `return 200 \"ok\\n\"`, keepalive_requests 1000000, access_log off")
if meta.get('pin', 'none') == 'none':
    w("CPU budget: NO pinning - wrk (2 threads), the upstream (1 worker) and the proxy under test (2 workers)")
    w("  all share the same 2 cores, so absolute figures are low and ratios are what counts.")
else:
    w(f"CPU budget: PINNED (--pin) - {meta.get('pin')}: each proxy's own ceiling on one core.")
w(f"gatekeeper [buffering]: {meta.get('buffering')}")
w("")

hdr = f"{'target':<26}{'conns':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'peak RSS MiB':>14}"

w("1. Proxied requests (GET / through the proxy to the upstream)")
w(hdr + f"{'vs nginx':>10}{'vs haproxy':>12}")
labels = {
    "direct": "upstream direct (ceiling)",
    "nginx": "nginx proxy_pass+keepalive",
    "haproxy": "HAProxy http-reuse always",
    "gatekeeper": "gatekeeper",
    "floor": "hyper floor",
}
conns_list = sorted({k[2] for k in rows if k[0] == "proxy"})
for c in conns_list:
    ng, hp = agg(("proxy", "nginx", c)), agg(("proxy", "haproxy", c))
    for t in ("direct", "nginx", "haproxy", "gatekeeper", "floor"):
        a = agg(("proxy", t, c))
        if not a:
            continue
        rss = "-" if t == "direct" else mib(a["rss"])
        rn = fmt_ratio(ratio(a["rps"], ng["rps"] if ng else None))
        rh = fmt_ratio(ratio(a["rps"], hp["rps"] if hp else None))
        w(f"{labels[t]:<26}{c:>6}{a['rps']:>11.0f}{a['p50']:>9.2f}{a['p99']:>9.2f}{a['err']:>8}{rss:>14}{rn:>10}{rh:>12}")
w("  (hyper floor: bench/hyper_floor.rs, the same runtimes and hyper HTTP/1.1 server and client with")
w("   nothing of gatekeeper's - no decision, pool, timeouts or parking - what this stack costs at least)")
w("  (peak RSS: sum of VmRSS over the proxy's processes, sampled every 0.2 s during the runs;")
w(f"   nginx = master + {nw} worker(s), so shared pages are counted once per process)")
w("")

w("2. Maintenance page served (503 + static/index.html; nginx: error_page 503 /index.html + return 503)")
w(hdr + f"{'vs nginx':>10}")
mconns = sorted({k[2] for k in rows if k[0] == "maint"})
for c in mconns:
    ng = agg(("maint", "nginx", c))
    for t, lab in (("nginx", "nginx return 503"), ("gatekeeper", "gatekeeper maintenance on")):
        a = agg(("maint", t, c))
        if a:
            w(f"{lab:<26}{c:>6}{a['rps']:>11.0f}{a['p50']:>9.2f}{a['p99']:>9.2f}{a['err']:>8}{mib(a['rss']):>14}"
              f"{fmt_ratio(ratio(a['rps'], ng['rps'] if ng else None)):>10}")
w(f"  (response bodies: nginx {meta.get('maint_body_nginx')} B, gatekeeper {meta.get('maint_body_gk')} B; "
  "errors = socket errors/timeouts, 503 is the expected status)")
w("")

w("3. Allowlist decision cost (maintenance on, client 127.0.0.1 allowed -> proxied)")
w(hdr + f"{'vs 1':>10}")
aconns = sorted({k[2] for k in rows if k[0] == "allow"})
for c in aconns:
    one = agg(("allow", "allow1", c))
    for t, lab in (("allow1", "allow_file: 1 entry"), ("allow100k", f"allow_file: {meta.get('allow_n')} entries")):
        a = agg(("allow", t, c))
        if a:
            w(f"{lab:<26}{c:>6}{a['rps']:>11.0f}{a['p50']:>9.2f}{a['p99']:>9.2f}{a['err']:>8}{mib(a['rss']):>14}"
              f"{fmt_ratio(ratio(a['rps'], one['rps'] if one else None)):>10}")
w("")

prop = load_json("propagation.json")
w("4. Toggle propagation (mv maintenance-mode-off <-> maintenance-mode-on; rename() -> first changed response,")
w("   one kept-alive connection polled back to back by Python http.client; includes one poll round trip)")
if prop:
    a = prop["all"]
    w(f"   flips {prop['flips']} (timeouts {prop['timeouts']}): median {a['p50_ms']:.2f} ms, p99 {a['p99_ms']:.2f} ms, max {a['max_ms']:.2f} ms")
    w(f"   one poll round trip without a flip (the floor of this measurement): median {prop['rtt_p50_ms']:.2f} ms, p99 {prop['rtt_p99_ms']:.2f} ms")
    w(f"   off->on (first 503): median {prop['on']['p50_ms']:.2f} ms, p99 {prop['on']['p99_ms']:.2f} ms;"
      f"  on->off (first 200): median {prop['off']['p50_ms']:.2f} ms, p99 {prop['off']['p99_ms']:.2f} ms")
else:
    w("   (no result)")
w("")

idle = load_json("idle.json")
idle_rss = int(meta.get("idle_rss_kib") or 0)
w("5. gatekeeper memory (fresh process)")
w(f"   idle (after `ready`, no traffic): VmRSS {mib(idle_rss)} MiB")
if idle:
    w(f"   {idle['kept_alive']} idle keep-alive connections (one GET each, opened in {idle['open_seconds']} s, {idle['alive_after_settle']} still open when read; "
      f"errors {idle['errors']}): VmRSS {mib(idle['rss_kib'])} MiB (peak VmHWM {mib(idle['hwm_kib'])} MiB, {idle['server_fds']} fds)")
    if idle.get("reused"):
        w(f"   then a second GET on {idle['reused']} of them: {idle['reused_ok']} answered")
    if idle.get("alive_after_linger") is not None:
        w(f"   idle keep-alive lifetime probe: {idle['alive_after_linger']} of {idle['kept_alive']} still open "
          f"{idle['linger_s']:.0f} s after they were opened (nginx keeps them keepalive_timeout = 75 s by default)")
    if idle["open_seconds"] + idle["settle_s"] > 9:
        w(f"   WARNING: opening took {idle['open_seconds']} s; connections idle longer than the server's keep-alive limit")
        w("   may already be closed when RSS is read (see 'still open')")
else:
    w("   (10,000-connection run: no result)")
w("")

rl = load_json("reload.json")
w(f"6. Full reload with {meta.get('allow_n')} allowlist entries (SIGHUP)")
if rl and rl.get("logged_ms_median") is not None:
    ent = rl.get("allowlist_entries")
    w(f"   daemon-logged reload time: median {rl['logged_ms_median']:.1f} ms, max {rl['logged_ms_max']:.1f} ms over {rl['completed']} reloads"
      + (f" (allowlist_entries={ent})" if ent is not None else ""))
    w(f"   kill -HUP -> 'config reloaded' line in the log, observed from outside: median {rl['observed_ms_median']:.1f} ms")
elif rl and rl.get("completed"):
    w(f"   the daemon does not log a reload duration -> skipped. (For reference, SIGHUP -> '{'config reloaded'}' line in")
    w(f"   its log, observed from outside: median {rl['observed_ms_median']:.1f} ms, max {rl['observed_ms_max']:.1f} ms over {rl['completed']})")
else:
    w("   no reload log line seen -> skipped")
w("")

# Targets (printed, not asserted).
w("Targets (informational; the script never fails on them)")
g64, n64, h64 = agg(("proxy", "gatekeeper", 64)), agg(("proxy", "nginx", 64)), agg(("proxy", "haproxy", 64))
def line(name, value, target, ok):
    w(f"   {name:<50}{value:>12}   target {target:<10}{verdict(ok)}")
r = ratio(g64 and g64["rps"], n64 and n64["rps"])
line("proxied req/s @64, gatekeeper / nginx", fmt_ratio(r), ">= 1.0x", None if r is None else r >= 1.0)
r = ratio(g64 and g64["rps"], h64 and h64["rps"])
line("proxied req/s @64, gatekeeper / HAProxy", fmt_ratio(r), ">= 1.0x", None if r is None else r >= 1.0)
for c in conns_list:
    g, n = agg(("proxy", "gatekeeper", c)), agg(("proxy", "nginx", c))
    r = ratio(g and g["p99"], n and n["p99"])
    line(f"p99 @{c}, gatekeeper / nginx", fmt_ratio(r), "<= 1.0x", None if r is None else r <= 1.0)
mc = mconns[0] if mconns else None
g, n = agg(("maint", "gatekeeper", mc)), agg(("maint", "nginx", mc))
r = ratio(g and g["rps"], n and n["rps"])
line(f"maintenance page req/s @{mc}, gatekeeper / nginx", fmt_ratio(r), ">= 1.2x", None if r is None else r >= 1.2)
ac = aconns[0] if aconns else None
big, one = agg(("allow", "allow100k", ac)), agg(("allow", "allow1", ac))
r = ratio(big and big["rps"], one and one["rps"])
line(f"req/s @{ac}, 100k allowlist / 1 entry", fmt_ratio(r), ">= 0.97x", None if r is None else r >= 0.97)
if prop:
    line("propagation median", f"{prop['all']['p50_ms']:.2f} ms", "< 5 ms", prop['all']['p50_ms'] < 5)
    line("propagation p99", f"{prop['all']['p99_ms']:.2f} ms", "< 20 ms", prop['all']['p99_ms'] < 20)
line("idle RSS", f"{mib(idle_rss)} MiB", "< 10 MiB", idle_rss / 1024 < 10 if idle_rss else None)
if idle:
    line("RSS with 10,000 idle keep-alive conns", f"{mib(idle['rss_kib'])} MiB", "< 64 MiB", idle["rss_kib"] / 1024 < 64)
# The same stack doing nothing else, in the same run: what gatekeeper's own work is measured against.
floor = [(c, agg(("proxy", "floor", c)), agg(("proxy", "nginx", c))) for c in conns_list]
floor = [(c, f, n) for c, f, n in floor if f and n]
if floor:
    w("Context: the hyper floor (bench/hyper_floor.rs) in the same run, vs nginx")
    for c, f, n in floor:
        w(f"   @{c}: req/s {fmt_ratio(ratio(f['rps'], n['rps']))}, p99 {fmt_ratio(ratio(f['p99'], n['p99']))}")

print("\n".join(out))
