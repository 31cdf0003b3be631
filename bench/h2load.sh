#!/usr/bin/env bash
# HTTP/2 over TLS throughput of gatekeeper's HTTPS listener, measured with h2load
# (nghttp2), maintenance off (proxied) and on (the 503 page, and an asset), with
# nginx doing the same over TLS + h2 as the reference. All on loopback.
#
#   bench/h2load.sh            3 interleaved rounds, h2load -n 20000 -c 16 -m 10 (~2 minutes)
#   bench/h2load.sh --quick    1 round, -n 5000
#
# Options: --no-build (use the existing binary), --no-install (never call apt-get),
#          --keep (keep the work dir), --no-nginx (gatekeeper rows only).
# Environment: ROUNDS, N (requests per run), C (connections), M (streams per
#          connection), GATEKEEPER_BIN, STATIC_DIR.
#
# The upstream is the one bench/run.sh uses: nginx, worker_processes 1,
# `return 200 "ok\n"`. gatekeeper runs with [log] access = false, TLS with a
# throwaway ECDSA P-256 certificate; the reference nginx has worker_processes 2
# (gatekeeper's runtime has one worker per core = 2), ssl + http2, proxy_pass
# with keepalive to the same upstream, and for maintenance `return 503` with
# the same static page. Nothing is pinned: h2load, the upstream and the server
# under test share the machine's cores. Each row is the median of the rounds.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
unset RUST_LOG

QUICK=0 KEEP=0 BUILD=1 INSTALL=1 NGINX_REF=1
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    --no-nginx) NGINX_REF=0 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if ((QUICK)); then
  ROUNDS=${ROUNDS:-1} N=${N:-5000}
else
  ROUNDS=${ROUNDS:-3} N=${N:-20000}
fi
C=${C:-16} M=${M:-10}
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}
STATIC=${STATIC_DIR:-$ROOT/static}

log() { printf '[h2load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
SUDO=()
((EUID == 0)) || SUDO=(sudo)
missing=()
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
for cmd in openssl curl python3; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
if ((${#missing[@]})); then
  ((INSTALL)) || die "missing: ${missing[*]} (and --no-install given)"
  log "installing from Debian's packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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
read -r P_UP P_NGX P_NGXM <<<"$(free_ports 3)"

# ---------------------------------------------------------------- certificate, configs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$T/privkey.pem" -out "$T/fullchain.pem" 2>/dev/null || die "openssl req failed"
chmod 644 "$T/privkey.pem" # nginx workers (user nobody) read it; a throwaway key

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
  H2_LISTEN="ssl" H2_ON="http2 on;"
else
  H2_LISTEN="ssl http2" H2_ON=""
fi

mkdir -p "$T/upstream" "$T/nginx" "$T/nginx-maint" "$T/gk/toggle"
nginx_conf "$T/upstream" "worker_processes 1;
events { worker_connections 32768; }
http {
$(nginx_tls_http_common "$T/upstream")
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    location / { return 200 \"ok\\n\"; }
  }
}"
nginx_conf "$T/nginx" "worker_processes 2;
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
    listen 127.0.0.1:$P_NGX $H2_LISTEN backlog=4096;
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
nginx_conf "$T/nginx-maint" "worker_processes 2;
events { worker_connections 16384; }
http {
$(nginx_tls_http_common "$T/nginx-maint")
  types { text/html html; text/css css; image/svg+xml svg; }
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  server {
    listen 127.0.0.1:$P_NGXM $H2_LISTEN backlog=4096;
    $H2_ON
    root $STATIC;
    error_page 503 /index.html;
    location = /index.html {
      internal;
      add_header Retry-After 600 always;
      add_header Cache-Control no-store always;
    }
    location = /style.css { }
    location / { return 503; }
  }
}"

TOGGLE="$T/gk/toggle/maintenance-mode-on"
cat >"$T/gk/gatekeeper.toml" <<EOF
listen = ["127.0.0.1:0"]

[upstream]
url = "http://127.0.0.1:$P_UP"

[maintenance]
toggle = "$TOGGLE"
dir = "$STATIC"

[tls]
listen = ["127.0.0.1:0"]
cert = "$T/fullchain.pem"
key = "$T/privkey.pem"

[log]
access = false
EOF
"$GK_BIN" check -c "$T/gk/gatekeeper.toml" >/dev/null || die "gatekeeper check rejects $T/gk/gatekeeper.toml"

# ---------------------------------------------------------------- start
log "work dir $T; starting servers on 127.0.0.1"
start upstream nginx -e "$T/upstream/error.log" -p "$T/upstream" -c "$T/upstream/nginx.conf" -g 'daemon off;'
if ((NGINX_REF)); then
  start nginx nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" -g 'daemon off;'
  start nginx-maint nginx -e "$T/nginx-maint/error.log" -p "$T/nginx-maint" -c "$T/nginx-maint/nginx.conf" -g 'daemon off;'
fi
start gk "$GK_BIN" run -c "$T/gk/gatekeeper.toml"
GK_PID=$LAST_PID
for ((n = 0; n < 150; n++)); do
  grep -q 'ready' "$T/log/gk.err" 2>/dev/null && break
  kill -0 "$GK_PID" 2>/dev/null || { cat "$T/log/gk.err" >&2; die "gatekeeper exited"; }
  sleep 0.1
done
P_GK=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\) (https).*/\1/p' "$T/log/gk.err" | head -1)
[[ -n $P_GK ]] || { cat "$T/log/gk.err" >&2; die "no https listener in gatekeeper's log"; }

# wait_https PORT CODE [PATH] : until an h2 GET answers CODE (10 s max)
wait_https() {
  local port=$1 want=$2 path=${3:-/} got n
  for ((n = 0; n < 100; n++)); do
    got=$(curl -sk --http2 -o /dev/null -w '%{http_code}' --max-time 1 "https://127.0.0.1:$port$path" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  die "https://127.0.0.1:$port$path answers '$got', not $want"
}
for ((n = 0; n < 100; n++)); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$P_UP/" || true) == 200 ]] && break
  sleep 0.1
done
for pid in $(ps -o pid= --ppid "${PIDS[0]}"); do EXTRA_PIDS+=("$pid"); done
wait_https "$P_GK" 200
if ((NGINX_REF)); then
  for pid in "${PIDS[1]}" "${PIDS[2]}"; do
    for p in $(ps -o pid= --ppid "$pid"); do EXTRA_PIDS+=("$p"); done
  done
  wait_https "$P_NGX" 200
  wait_https "$P_NGXM" 503
fi
proto=$(curl -sk --http2 -o /dev/null -w '%{http_version}' "https://127.0.0.1:$P_GK/")
[[ $proto == 2 ]] || die "gatekeeper's TLS listener did not negotiate h2 (curl says HTTP/$proto)"

# ---------------------------------------------------------------- measure
maintenance() { # on|off : flip gatekeeper and wait until it shows
  if [[ $1 == on ]]; then : >"$TOGGLE"; wait_https "$P_GK" 503; else rm -f "$TOGGLE"; wait_https "$P_GK" 200; fi
}

# run NAME URL [h2load args...] : one h2load run; appends "NAME req/s mean_ms 2xx 5xx failed errored" to results
run() {
  local name=$1 url=$2 out
  shift 2
  out="$T/log/h2load-$name-$ROUND.txt"
  h2load -n "$N" -c "$C" "$@" "$url" >"$out" 2>&1 || true
  python3 - "$name" "$out" >>"$T/results" <<'EOF'
import re, sys
name, path = sys.argv[1], sys.argv[2]
t = open(path).read()
def num(pat, default="nan"):
    m = re.search(pat, t)
    return m.group(1) if m else default
rps = num(r"finished in [\d.]+\w*, ([\d.]+) req/s")
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", t)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", t)
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    if not m: return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
mean = ms(lat.group(3)) if lat else float("nan")
done = req.group(3) if req else "0"
errored = req.group(6) if req else "?"
print(name, rps, f"{mean:.2f}", codes.group(1) if codes else "?", codes.group(4) if codes else "?", done, errored)
EOF
}

: >"$T/results"
log "h2load -n $N -c $C -m $M, $ROUNDS round(s); gatekeeper https :$P_GK$( ((NGINX_REF)) && echo ", nginx https :$P_NGX (proxy) :$P_NGXM (503 page)")"
# Warm-up (TLS session setup, upstream keep-alive pools).
h2load -n 2000 -c "$C" -m "$M" "https://127.0.0.1:$P_GK/" >/dev/null 2>&1 || true
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  log "round $ROUND/$ROUNDS"
  maintenance off
  run gk-h2-proxied "https://127.0.0.1:$P_GK/" -m "$M"
  run gk-h1-proxied "https://127.0.0.1:$P_GK/" --h1 -m 1
  maintenance on
  run gk-h2-page "https://127.0.0.1:$P_GK/" -m "$M"
  run gk-h2-asset "https://127.0.0.1:$P_GK/style.css" -m "$M"
  if ((NGINX_REF)); then
    run nginx-h2-proxied "https://127.0.0.1:$P_NGX/" -m "$M"
    run nginx-h1-proxied "https://127.0.0.1:$P_NGX/" --h1 -m 1
    run nginx-h2-page "https://127.0.0.1:$P_NGXM/" -m "$M"
    run nginx-h2-asset "https://127.0.0.1:$P_NGXM/style.css" -m "$M"
  fi
done
maintenance off

# ---------------------------------------------------------------- report
python3 - "$T/results" "$N" "$C" "$M" "$ROUNDS" <<'EOF'
import statistics, sys
path, n, c, m, rounds = sys.argv[1:]
rows = {}
for line in open(path):
    name, rps, mean, ok2, err5, done, errored = line.split()
    rows.setdefault(name, []).append((float(rps), float(mean), int(ok2) if ok2.isdigit() else -1,
                                       int(err5) if err5.isdigit() else -1, int(done), errored))
desc = {
    "gk-h2-proxied": ("gatekeeper", "h2", "maintenance off: proxied", "2xx"),
    "gk-h1-proxied": ("gatekeeper", "http/1.1", "maintenance off: proxied", "2xx"),
    "gk-h2-page": ("gatekeeper", "h2", "maintenance on: 503 page", "5xx"),
    "gk-h2-asset": ("gatekeeper", "h2", "maintenance on: /style.css", "2xx"),
    "nginx-h2-proxied": ("nginx", "h2", "proxy_pass (keepalive)", "2xx"),
    "nginx-h1-proxied": ("nginx", "http/1.1", "proxy_pass (keepalive)", "2xx"),
    "nginx-h2-page": ("nginx", "h2", "return 503 + page", "5xx"),
    "nginx-h2-asset": ("nginx", "h2", "static /style.css", "2xx"),
}
print(f"h2load over TLS on 127.0.0.1: -n {n} -c {c} -m {m} (http/1.1: -m 1), median of {rounds} round(s)")
print(f"{'server':11} {'proto':9} {'what':28} {'req/s':>9} {'mean ms':>8}  {'expected':>8}  {'done':>6}  errors")
bad = 0
for name, (server, proto, what, want) in desc.items():
    if name not in rows:
        continue
    r = rows[name]
    rps = statistics.median(x[0] for x in r)
    mean = statistics.median(x[1] for x in r)
    expected = sum(x[2] if want == "2xx" else x[3] for x in r)
    done = sum(x[4] for x in r)
    errored = ",".join(sorted(set(x[5] for x in r)))
    total = int(n) * len(r)
    flag = "" if expected == total else "  <-- not all answers were " + want
    bad += expected != total
    print(f"{server:11} {proto:9} {what:28} {rps:9.0f} {mean:8.2f}  {expected:>8}  {done:>6}  {errored}{flag}")
sys.exit(1 if bad else 0)
EOF
