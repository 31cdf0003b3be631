#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable whatever
# else the machine is doing. gatekeeper (release build) runs under callgrind in
# front of a local nginx `return 200`; a Python client sends N1, then (in a second
# run) N2 requests on one kept-alive connection; per request = (I2 - I1) / (N2 - N1),
# so start-up and shutdown cancel out. Both the proxied path and the maintenance
# page are measured, then the same for nginx in gatekeeper's place and for the
# hyper floor (bench/hyper_floor.rs: the same stack with nothing of gatekeeper's),
# also with its hand-written upstream side (floor-raw).
#
#   bench/callgrind.sh            # N1=1000, N2=5000
#   N1=500 N2=2500 bench/callgrind.sh
#   ONLY="gatekeeper floor" KEEP=/tmp/cg bench/callgrind.sh   # only these; keep
#                                 # the callgrind.out files for callgrind_annotate
#   CACHE=1 bench/callgrind.sh    # also simulate the caches (valgrind's model of
#                                 # this CPU's L1): misses per request as well
#
# Needs valgrind and nginx (apt-get install valgrind nginx). Loopback only; every
# process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-1000}
N2=${N2:-5000}
BIN=${GATEKEEPER_BIN:-target/release/gatekeeper}
FLOOR=${FLOOR_BIN:-target/release/examples/hyper_floor}
[ -x "$BIN" ] || cargo build --release --locked --bin gatekeeper >&2
[ -x "$FLOOR" ] || cargo build --release --locked --example hyper_floor >&2
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 1; }

W=$(mktemp -d /tmp/gatekeeper-callgrind.XXXXXX)
NGINX_PID=""
cleanup() {
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$W"/out/cg.* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$W"
}
trap cleanup EXIT

# shellcheck source=bench/configs.sh
source bench/configs.sh
UP=$(free_port)
GK=$(free_port)
mkdir -p "$W/toggle" "$W/out" "$W/up"
upstream_conf "$W/up" "$UP" > "$W/up/nginx.conf"
nginx -e "$W/up/error.log" -p "$W/up" -c "$W/up/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
gk_plain_conf "$GK" "$UP" "$W" > "$W/gk.toml"
cat > "$W/client.py" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", "/", headers={"User-Agent": "callgrind", "Accept": "*/*"})
    c.getresponse().read()
EOF

# count SERVER LABEL N: total instructions of a whole run of SERVER (gatekeeper
# or nginx) serving N requests
count() {
    local server=$1 label=$2 n=$3 out="$W/out/cg.$1.$2.$3" stop=TERM
    local cmd=("$BIN" run -c "$W/gk.toml")
    # nginx stops gracefully on QUIT; callgrind writes its counts at exit.
    [ "$server" = nginx ] && cmd=(nginx -c "$W/ngx/$label.conf" -p "$W/ngx" -e "$W/ngx/error.log") stop=QUIT
    [ "$server" = floor ] && cmd=("$FLOOR" "127.0.0.1:$GK" "127.0.0.1:$UP" 2)
    [ "$server" = floor-raw ] && cmd=("$FLOOR" "127.0.0.1:$GK" "127.0.0.1:$UP" 2 raw)
    local sim=()
    [ -n "${CACHE:-}" ] && sim=(--cache-sim=yes)
    valgrind --tool=callgrind "${sim[@]}" --dump-instr=no --callgrind-out-file="$out" "${cmd[@]}" 2>/dev/null &
    local vp=$!
    for _ in $(seq 1 200); do
        curl -s -o /dev/null "http://127.0.0.1:$GK/" 2>/dev/null && break
        sleep 0.2
    done
    python3 "$W/client.py" "$GK" "$n"
    kill -"$stop" "$vp"
    wait "$vp" 2>/dev/null || true
    # No early exit in awk: callgrind_annotate would die of SIGPIPE (and pipefail stop us).
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }'
}

# per_request SERVER LABEL
per_request() {
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]] || return 0
    local a b
    a=$(count "$1" "$2" "$N1")
    b=$(count "$1" "$2" "$N2")
    echo "$1 $2: $(( (b - a) / (N2 - N1) )) instructions per request ($N1 requests: $a, $N2 requests: $b)"
    [ -z "${CACHE:-}" ] || misses "$W/out/cg.$1.$2.$N1" "$W/out/cg.$1.$2.$N2"
}

# misses FILE1 FILE2: cache misses per request, from the two runs' totals
misses() {
    python3 - "$1" "$2" "$((N2 - N1))" <<'PY'
import sys
def totals(path):
    events, total = [], []
    for line in open(path):
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            total = [int(x) for x in line.split()[1:]]
    return dict(zip(events, total))
a, b, n = totals(sys.argv[1]), totals(sys.argv[2]), int(sys.argv[3])
keys = ["I1mr", "D1mr", "D1mw"]
print("    misses per request: " + ", ".join(f"{k} {(b[k] - a[k]) / n:.0f}" for k in keys if k in b))
PY
}

rm -f "$W/toggle/maintenance-mode-on"
per_request gatekeeper proxied
touch "$W/toggle/maintenance-mode-on"
per_request gatekeeper maintenance-page

# nginx in gatekeeper's place, counted the same way: proxy_pass with upstream
# keepalive, and the same 503 page through an open-file cache (as in
# bench/run.sh), in one process (master_process off).
mkdir -p "$W/ngx"
# ngx_conf FILE SERVER_BODY: one config per job, so neither pays for the other.
ngx_conf() {
    cat > "$1" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $W/ngx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/ct; proxy_temp_path $W/pt; fastcgi_temp_path $W/ft; uwsgi_temp_path $W/ut; scgi_temp_path $W/st;
  types { text/html html; }
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  server {
    listen 127.0.0.1:$GK;
$2
  }
}
EOF
}
ngx_conf "$W/ngx/proxied.conf" '    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }'
ngx_conf "$W/ngx/maintenance-page.conf" "    root $PWD/static;
    error_page 503 /index.html;
    location = /index.html { internal; add_header Retry-After 600 always; add_header Cache-Control no-store always; }
    location / { return 503; }"
per_request nginx proxied
per_request nginx maintenance-page
per_request floor proxied
per_request floor-raw proxied
