#!/usr/bin/env bash
# HTTP/2 throughput of gatekeeper, measured with h2load (nghttp2), through h2c
# (prior knowledge, the plain listener) and through TLS (ALPN h2), proxied to
# one HTTP/1.1 upstream and serving the 503 page, against nginx and HAProxy
# doing the same jobs with the same number of workers. All on loopback.
#
#   bench/h2load.sh            3 interleaved rounds, h2load -n 100000 -c 64 -m 10 (~4 minutes)
#   bench/h2load.sh --quick    1 round, -n 20000
#   bench/h2load.sh --pin      1 worker each, the proxies on CPU 1, h2load and the upstream on CPU 0
#
# Options: --no-build (use the existing binary), --no-install (never call apt-get),
#          --keep (keep the work dir), --no-nginx, --no-haproxy (leave a reference out),
#          --pin (as above; bench/run.sh's convention).
# Environment: ROUNDS, N (requests per run), C (connections), M (streams per
#          connection), WORKERS (per proxy; default 2, 1 with --pin), GATEKEEPER_BIN,
#          GATEKEEPER_BIN_B (a second build, run in the same rounds as "gk-b": A/B of
#          a change), SCENARIOS (a subset of: h2c tls h1-tls page-h2c page-tls asset-tls),
#          STATIC_DIR.
#
# The upstream is the one bench/run.sh uses: nginx, worker_processes 1,
# `return 200 "ok\n"`. gatekeeper runs with [log] access = false and
# [server] workers = WORKERS, TLS with a throwaway ECDSA P-256 certificate.
# nginx: worker_processes WORKERS, `listen ... http2` (h2c by prior knowledge,
# as h2load speaks it to http:// URLs) and `listen ... ssl http2`, proxy_pass
# with keepalive to the same upstream; for maintenance `return 503` with the
# same static page. HAProxy: nbthread WORKERS, `bind ... proto h2` and
# `bind ... ssl crt ... alpn h2,http/1.1`, `http-reuse always` (bench/configs.sh);
# for maintenance `http-request return status 503` with the same file.
# Within a round each scenario runs every server back to back (the order
# rotates per round); a row is the median of the rounds, a ratio the median of
# the same-round ratios (with their range).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
unset RUST_LOG

QUICK=0 KEEP=0 BUILD=1 INSTALL=1 NGINX_REF=1 HAPROXY_REF=1 PIN=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    --no-nginx) NGINX_REF=0 ;;
    --no-haproxy) HAPROXY_REF=0 ;;
    --pin) PIN=1 ;;
    -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if ((QUICK)); then
  ROUNDS=${ROUNDS:-1} N=${N:-20000}
else
  ROUNDS=${ROUNDS:-3} N=${N:-100000}
fi
C=${C:-64} M=${M:-10}
if ((PIN)); then WORKERS=${WORKERS:-1}; else WORKERS=${WORKERS:-2}; fi
SCENARIOS=${SCENARIOS:-h2c tls h1-tls page-h2c page-tls asset-tls}
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}
GK_BIN_B=${GATEKEEPER_BIN_B:-}
STATIC=${STATIC_DIR:-$ROOT/static}
# --pin: the servers under test on CPU 1, the load and the app on CPU 0.
if ((PIN)); then
  ON_PROXY=(taskset -c 1) ON_LOAD=(taskset -c 0)
else
  ON_PROXY=() ON_LOAD=()
fi

log() { printf '[h2load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
SUDO=()
((EUID == 0)) || SUDO=(sudo)
missing=()
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
((HAPROXY_REF == 0)) || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
((PIN == 0)) || command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
for cmd in openssl curl python3; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
if ((${#missing[@]})); then
  ((INSTALL)) || die "missing: ${missing[*]} (and --no-install given)"
  log "installing from Debian's packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ((PIN)) && (($(nproc) < 2)); then die "--pin needs two CPUs"; fi

# ---------------------------------------------------------------- build
if ((BUILD)) && [[ -z ${GATEKEEPER_BIN:-} ]]; then
  for try in 1 2 3; do
    log "cargo build --release (try $try)"
    if (cd "$ROOT" && cargo build --release --quiet); then break; fi
    ((try < 3)) || die "cargo build --release keeps failing"
    sleep 30
  done
fi
[[ -x $GK_BIN ]] || die "no gatekeeper binary at $GK_BIN"
[[ -z $GK_BIN_B || -x $GK_BIN_B ]] || die "no gatekeeper binary at $GK_BIN_B"
[[ -f $STATIC/index.html ]] || die "no $STATIC/index.html"
ulimit -n 65536 2>/dev/null || true

# ---------------------------------------------------------------- processes
T=$(mktemp -d /tmp/gatekeeper-h2load.XXXXXX)
chmod 755 "$T"
mkdir -p "$T/log"
PIDS=()
EXTRA_PIDS=()
cleanup() {
  local rc=$? i n pid
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((n = 0; n < 50; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for pid in "${EXTRA_PIDS[@]}"; do
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == nginx ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  if ((KEEP)); then log "work dir kept: $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {
  local name=$1
  shift
  "$@" >"$T/log/$name.out" 2>"$T/log/$name.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
# The upstream; per server a proxy port pair (h2c, TLS) and a maintenance pair.
read -r P_UP P_NGX P_NGXS P_NGXM P_NGXMS P_HAP P_HAPS P_HAPM P_HAPMS P_GK P_GKS P_GKB P_GKBS <<<"$(free_ports 13)"

# ---------------------------------------------------------------- certificate, configs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$T/privkey.pem" -out "$T/fullchain.pem" 2>/dev/null || die "openssl req failed"
chmod 644 "$T/privkey.pem" # nginx workers (user nobody) read it; a throwaway key
cat "$T/fullchain.pem" "$T/privkey.pem" >"$T/haproxy.pem"

# shellcheck source=bench/configs.sh
source "$HERE/configs.sh"
nginx_conf() { # DIR BODY
  { nginx_common "$1"; printf '%s\n' "$2"; } >"$1/nginx.conf"
}
nginx_tls_http_common() { # DIR : bench/configs.sh's, plus HTTP/2 and TLS
  nginx_http_common "$1"
  cat <<EOF
  http2_max_requests 1000000;
  ssl_certificate $T/fullchain.pem;
  ssl_certificate_key $T/privkey.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
EOF
}
# nginx >= 1.25.1 spells HTTP/2 `http2 on;`, older ones `listen ... http2`.
nginx_ver=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if [[ "$(printf '%s\n1.25.1\n' "$nginx_ver" | sort -V | head -1)" == 1.25.1 ]]; then
  H2_LISTEN="ssl" H2C_LISTEN="" H2_ON="http2 on;"
else
  H2_LISTEN="ssl http2" H2C_LISTEN="http2" H2_ON=""
fi

mkdir -p "$T/upstream" "$T/nginx" "$T/nginx-maint" "$T/haproxy" "$T/gk/toggle" "$T/gk-b"
nginx_conf "$T/upstream" "worker_processes 1;
events { worker_connections 32768; }
http {
$(nginx_tls_http_common "$T/upstream")
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    location / { return 200 \"ok\\n\"; }
  }
}"
nginx_conf "$T/nginx" "worker_processes $WORKERS;
events { worker_connections 16384; }
http {
$(nginx_tls_http_common "$T/nginx")
  upstream app {
    server 127.0.0.1:$P_UP;
    keepalive 512;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$P_NGX $H2C_LISTEN backlog=4096;
    listen 127.0.0.1:$P_NGXS $H2_LISTEN backlog=4096;
    $H2_ON
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}"
nginx_conf "$T/nginx-maint" "worker_processes $WORKERS;
events { worker_connections 16384; }
http {
$(nginx_tls_http_common "$T/nginx-maint")
  types { text/html html; text/css css; image/svg+xml svg; }
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  server {
    listen 127.0.0.1:$P_NGXM $H2C_LISTEN backlog=4096;
    listen 127.0.0.1:$P_NGXMS $H2_LISTEN backlog=4096;
    $H2_ON
$(nginx_page_locations "$STATIC")
    location = /style.css { }
  }
}"
# bench/configs.sh's HAProxy (http-reuse always), with WORKERS threads, its bind
# line made h2c + TLS, and a second frontend answering the 503 page.
haproxy_conf "$T/haproxy" "$P_HAP" "$P_UP" |
  sed -e "s/^  nbthread .*/  nbthread $WORKERS/" \
    -e "s|^  bind 127\.0\.0\.1:$P_HAP\$|  bind 127.0.0.1:$P_HAP proto h2\n  bind 127.0.0.1:$P_HAPS ssl crt $T/haproxy.pem alpn h2,http/1.1|" \
    >"$T/haproxy/haproxy.cfg"
cat >>"$T/haproxy/haproxy.cfg" <<EOF
frontend maint
  bind 127.0.0.1:$P_HAPM proto h2
  bind 127.0.0.1:$P_HAPMS ssl crt $T/haproxy.pem alpn h2,http/1.1
  http-request return status 503 content-type "text/html" file $STATIC/index.html hdr Retry-After 600 hdr Cache-Control no-store
EOF
grep -q "proto h2" "$T/haproxy/haproxy.cfg" || die "bench/configs.sh's haproxy_conf bind line changed; fix the sed above"

TOGGLE="$T/gk/toggle/maintenance-mode-on"
gk_conf() { # DIR PORT TLS_PORT
  cat >"$1/gatekeeper.toml" <<EOF
listen = ["127.0.0.1:$2"]

[server]
workers = $WORKERS

[upstream]
url = "http://127.0.0.1:$P_UP"

[maintenance]
toggle = "$TOGGLE"
dir = "$STATIC"

[tls]
listen = ["127.0.0.1:$3"]
cert = "$T/fullchain.pem"
key = "$T/privkey.pem"

[log]
access = false
EOF
}
gk_conf "$T/gk" "$P_GK" "$P_GKS"
gk_conf "$T/gk-b" "$P_GKB" "$P_GKBS"
"$GK_BIN" check -c "$T/gk/gatekeeper.toml" >/dev/null || die "gatekeeper check rejects $T/gk/gatekeeper.toml"

# ---------------------------------------------------------------- start
log "work dir $T; starting servers on 127.0.0.1 ($WORKERS worker(s) each$( ((PIN)) && echo ", pinned: servers on CPU 1, h2load and upstream on CPU 0"))"
start upstream "${ON_LOAD[@]}" nginx -e "$T/upstream/error.log" -p "$T/upstream" -c "$T/upstream/nginx.conf" -g 'daemon off;'
TARGETS=(gk)
if [[ -n $GK_BIN_B ]]; then TARGETS+=(gk-b); fi
declare -A PID_OF # target -> its processes (CPU time is summed over them and their children: cpu_ns)
if ((NGINX_REF)); then
  TARGETS+=(nginx)
  start nginx "${ON_PROXY[@]}" nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" -g 'daemon off;'
  PID_OF[nginx]=$LAST_PID
  start nginx-maint "${ON_PROXY[@]}" nginx -e "$T/nginx-maint/error.log" -p "$T/nginx-maint" -c "$T/nginx-maint/nginx.conf" -g 'daemon off;'
  PID_OF[nginx]+=" $LAST_PID"
fi
if ((HAPROXY_REF)); then
  TARGETS+=(haproxy)
  start haproxy "${ON_PROXY[@]}" haproxy -db -f "$T/haproxy/haproxy.cfg"
  PID_OF[haproxy]=$LAST_PID
fi
start gk "${ON_PROXY[@]}" "$GK_BIN" run -c "$T/gk/gatekeeper.toml"
GK_PIDS=("$LAST_PID")
PID_OF[gk]=$LAST_PID
if [[ -n $GK_BIN_B ]]; then
  start gk-b "${ON_PROXY[@]}" "$GK_BIN_B" run -c "$T/gk-b/gatekeeper.toml"
  GK_PIDS+=("$LAST_PID")
  PID_OF[gk-b]=$LAST_PID
fi
GK_NAMES=(gk gk-b)
for i in "${!GK_PIDS[@]}"; do
  for ((n = 0; n < 150; n++)); do
    grep -q 'ready' "$T/log/${GK_NAMES[i]}.err" 2>/dev/null && break
    kill -0 "${GK_PIDS[i]}" 2>/dev/null || { cat "$T/log/${GK_NAMES[i]}.err" >&2; die "${GK_NAMES[i]} exited"; }
    sleep 0.1
  done
done

# wait_for URL CODE [curl args] : until a GET answers CODE (10 s max)
wait_for() {
  local url=$1 want=$2 got n
  shift 2
  for ((n = 0; n < 100; n++)); do
    got=$(curl -sk "$@" -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  die "$url answers '$got', not $want"
}
wait_for "http://127.0.0.1:$P_UP/" 200
for pid in "${PIDS[@]}"; do
  for p in $(ps -o pid= --ppid "$pid"); do EXTRA_PIDS+=("$p"); done
done
# URLs per target and scenario.
declare -A URL
for t in "${TARGETS[@]}"; do
  case $t in
    gk) h=$P_GK s=$P_GKS hm=$P_GK sm=$P_GKS ;;
    gk-b) h=$P_GKB s=$P_GKBS hm=$P_GKB sm=$P_GKBS ;;
    nginx) h=$P_NGX s=$P_NGXS hm=$P_NGXM sm=$P_NGXMS ;;
    haproxy) h=$P_HAP s=$P_HAPS hm=$P_HAPM sm=$P_HAPMS ;;
  esac
  URL[$t/h2c]="http://127.0.0.1:$h/"
  URL[$t/tls]="https://127.0.0.1:$s/"
  URL[$t/h1-tls]="https://127.0.0.1:$s/"
  URL[$t/page-h2c]="http://127.0.0.1:$hm/"
  URL[$t/page-tls]="https://127.0.0.1:$sm/"
  [[ $t == haproxy ]] || URL[$t/asset-tls]="https://127.0.0.1:$sm/style.css"
done
for t in "${TARGETS[@]}"; do
  wait_for "${URL[$t/h2c]}" 200 --http2-prior-knowledge
  wait_for "${URL[$t/tls]}" 200 --http2
  proto=$(curl -sk --http2 -o /dev/null -w '%{http_version}' "${URL[$t/tls]}")
  [[ $proto == 2 ]] || die "$t's TLS listener did not negotiate h2 (curl says HTTP/$proto)"
  if [[ $t != gk* ]]; then
    wait_for "${URL[$t/page-h2c]}" 503 --http2-prior-knowledge
    wait_for "${URL[$t/page-tls]}" 503 --http2
  fi
done

# ---------------------------------------------------------------- measure
maintenance() { # on|off : flip gatekeeper and wait until it shows
  local t want=200
  if [[ $1 == on ]]; then : >"$TOGGLE"; want=503; else rm -f "$TOGGLE"; fi
  for t in "${TARGETS[@]}"; do
    if [[ $t == gk* ]]; then wait_for "${URL[$t/tls]}" "$want" --http2; fi
  done
}

# run TARGET SCENARIO : one h2load run; appends "TARGET SCENARIO ROUND req/s mean_ms 2xx 5xx done errored cpu_ns" to results
run() {
  local t=$1 sc=$2 out args=(-m "$M") c0 c1
  [[ -n ${URL[$t/$sc]:-} ]] || return 0
  [[ $sc == h1-tls ]] && args=(--h1 -m 1)
  out="$T/log/h2load-$t-$sc-$ROUND.txt"
  # shellcheck disable=SC2086 # a list of PIDs
  c0=$(cpu_ns ${PID_OF[$t]})
  timeout 300 "${ON_LOAD[@]}" h2load -n "$N" -c "$C" "${args[@]}" "${URL[$t/$sc]}" >"$out" 2>&1 || true
  # shellcheck disable=SC2086
  c1=$(cpu_ns ${PID_OF[$t]})
  python3 - "$t" "$sc" "$ROUND" "$out" "$((c1 - c0))" >>"$T/results" <<'EOF'
import re, sys
t, sc, rnd, path, cpu = sys.argv[1:]
txt = open(path).read()
m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", txt)
rps = m.group(1) if m else "nan"
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", txt)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", txt)
lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", txt)
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    if not m: return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
mean = ms(lat.group(3)) if lat else float("nan")
print(t, sc, rnd, rps, f"{mean:.2f}", codes.group(1) if codes else "?", codes.group(4) if codes else "?",
      req.group(3) if req else "0", req.group(6) if req else "?", cpu)
EOF
}

# each SCENARIO : every target once, in this round's rotation
each() {
  local sc=$1 i k=${#TARGETS[@]}
  for ((i = 0; i < k; i++)); do run "${TARGETS[(i + ROUND) % k]}" "$sc"; done
}
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

: >"$T/results"
LOAD_BEFORE=$(uptime | sed 's/.*load average: //')
log "h2load -n $N -c $C -m $M, $ROUNDS round(s), targets: ${TARGETS[*]}; scenarios: $SCENARIOS; load $LOAD_BEFORE"
# Warm-up (TLS session setup, upstream keep-alive pools).
for t in "${TARGETS[@]}"; do
  for sc in h2c tls; do
    timeout 60 "${ON_LOAD[@]}" h2load -n 5000 -c "$C" -m "$M" "${URL[$t/$sc]}" >/dev/null 2>&1 || true
  done
done
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  log "round $ROUND/$ROUNDS (load $(uptime | sed 's/.*load average: //'))"
  maintenance off
  for sc in h2c tls h1-tls; do want "$sc" && each "$sc"; done
  if want page-h2c || want page-tls || want asset-tls; then
    maintenance on
    for sc in page-h2c page-tls asset-tls; do want "$sc" && each "$sc"; done
  fi
done
maintenance off
LOAD_AFTER=$(uptime | sed 's/.*load average: //')

# ---------------------------------------------------------------- report
python3 - "$T/results" "$N" "$C" "$M" "$ROUNDS" "$WORKERS" "$PIN" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF'
import statistics, sys
path, n, c, m, rounds, workers, pin, lb, la = sys.argv[1:]
runs = {}
for line in open(path):
    t, sc, rnd, rps, mean, ok2, err5, done, errored, cpu = line.split()
    us = int(cpu) / 1000 / max(int(done), 1)
    runs[(t, sc, int(rnd))] = (float(rps), float(mean), int(ok2) if ok2.isdigit() else -1,
                               int(err5) if err5.isdigit() else -1, int(done), errored, us)
scen = {
    "h2c": ("h2c", "proxied", "2xx"),
    "tls": ("h2 (TLS)", "proxied", "2xx"),
    "h1-tls": ("http/1.1 TLS", "proxied", "2xx"),
    "page-h2c": ("h2c", "503 page", "5xx"),
    "page-tls": ("h2 (TLS)", "503 page", "5xx"),
    "asset-tls": ("h2 (TLS)", "/style.css", "2xx"),
}
order = ["gk", "gk-b", "nginx", "haproxy"]
targets = [t for t in order if any(k[0] == t for k in runs)]
print(f"h2load on 127.0.0.1: -n {n} -c {c} -m {m} (http/1.1: -m 1), {workers} worker(s) per server"
      f"{', pinned (servers CPU 1, load + upstream CPU 0)' if pin == '1' else ', unpinned'}; median of {rounds} round(s);"
      f" load average before {lb}, after {la}")
print(f"{'scenario':13} {'what':10} {'server':8} {'req/s':>9} {'mean ms':>8} {'CPU us/req':>10}  {'expected':>8}  {'done':>7}  errored")
bad = 0
for sc, (proto, what, want) in scen.items():
    for t in targets:
        r = [v for k, v in runs.items() if k[0] == t and k[1] == sc]
        if not r:
            continue
        rps = statistics.median(x[0] for x in r)
        mean = statistics.median(x[1] for x in r)
        us = statistics.median(x[6] for x in r)
        expected = sum(x[2] if want == "2xx" else x[3] for x in r)
        done = sum(x[4] for x in r)
        errored = ",".join(sorted(set(x[5] for x in r)))
        total = int(n) * len(r)
        flag = "" if expected == total else "  <-- not all answers were " + want
        bad += expected != total
        print(f"{proto:13} {what:10} {t:8} {rps:9.0f} {mean:8.2f} {us:10.2f}  {expected:>8}  {done:>7}  {errored}{flag}")
print()
pairs = [("gk", "nginx"), ("gk", "haproxy"), ("gk-b", "gk"), ("gk-b", "nginx"), ("gk-b", "haproxy")]
# req/s: a/b; CPU per request: b/a (above 1: a needs less CPU per request than b).
for title, field, inv in (("req/s", 0, False), ("CPU per request, inverted (b's us/req / a's)", 6, True)):
    print(f"same-round ratios of {title} (median, [min-max] over rounds)")
    for sc, (proto, what, _) in scen.items():
        cells = []
        for a, b in pairs:
            rs = []
            for i in range(1, int(rounds) + 1):
                if (a, sc, i) in runs and (b, sc, i) in runs:
                    x, y = runs[(a, sc, i)][field], runs[(b, sc, i)][field]
                    if inv:
                        x, y = y, x
                    if y > 0:
                        rs.append(x / y)
            if rs:
                cells.append(f"{a}/{b} {statistics.median(rs):.2f} [{min(rs):.2f}-{max(rs):.2f}]")
        if cells:
            print(f"  {proto:13} {what:10} " + "   ".join(cells))
sys.exit(1 if bad else 0)
EOF
