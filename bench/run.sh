#!/usr/bin/env bash
# gatekeeper benchmark: gatekeeper vs nginx vs HAProxy on loopback, one table.
#
#   bench/run.sh            full run (5 interleaved rounds, 6 s per wrk run; ~8.5 minutes)
#   bench/run.sh --quick    short run (1 round, 3 s per wrk run; ~1.5 minutes)
#   bench/run.sh --pin      every proxy on CPU 1 with one worker, wrk, the upstream and
#                           the other clients on CPU 0 (PROXY_CPU, LOAD_CPU): the proxy's
#                           own ceiling rather than its share of a crowded machine
#
# Options: --no-build (use the existing binary), --keep (keep the work dir),
#          --no-install (never call apt-get).
# Environment: ROUNDS, DURATION (seconds), GATEKEEPER_BIN, STATIC_DIR.
#
# Installs nginx, haproxy, wrk (and python3, curl) from Debian's packages when
# missing, starts every server on 127.0.0.1 with its own config, pid and temp
# paths under a fresh temp dir, and stops each of them by PID on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
unset RUST_LOG

QUICK=0 KEEP=0 BUILD=1 INSTALL=1 PIN=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --pin) PIN=1 ;; # for pin_setup (bench/configs.sh)
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

if ((QUICK)); then
  ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3} WARMUP=1 RELOADS=3 MODE=quick
else
  # More, shorter interleaved rounds rather than few long ones: on a shared
  # host, load drifts, and pairing targets closely in time keeps ratios honest.
  ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-6} WARMUP=2 RELOADS=5 MODE=full
fi
THREADS=2              # wrk threads
PROXY_CONNS=(64 512)   # proxied section
SIDE_CONNS=(64)        # maintenance page and allowlist sections
ALLOW_N=100000
FLIPS=200
IDLE_CONNS=10000
LINGER=15              # recount the idle connections this long after opening them (idle keep-alive timeout probe)
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}
# The same stack with nothing of gatekeeper's (bench/hyper_floor.rs): its row
# tells gatekeeper's own cost from hyper's.
FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/hyper_floor}
STATIC=${STATIC_DIR:-$ROOT/static}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
SUDO=()
((EUID == 0)) || SUDO=(sudo)
missing=()
for cmd in nginx haproxy wrk python3 curl; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if ((${#missing[@]})); then
  ((INSTALL)) || die "missing: ${missing[*]} (and --no-install given)"
  log "installing from Debian's packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- build
if ((BUILD)) && [[ -z ${GATEKEEPER_BIN:-} ]]; then
  for try in 1 2 3 4 5; do
    log "cargo build --release (try $try)"
    if (cd "$ROOT" && cargo build --release --quiet --bin gatekeeper --example hyper_floor); then break; fi
    ((try < 5)) || die "cargo build --release keeps failing"
    sleep 30
  done
fi
[[ -x $GK_BIN ]] || die "no gatekeeper binary at $GK_BIN"
PROXY_TARGETS=(direct nginx haproxy gatekeeper)
if [[ -x $FLOOR_BIN ]]; then PROXY_TARGETS+=(floor); else log "no $FLOOR_BIN: the hyper floor row is left out"; fi
[[ -f $STATIC/index.html ]] || die "no $STATIC/index.html"

# ---------------------------------------------------------------- limits
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < IDLE_CONNS + 2000)); then
  log "warning: ulimit -n is $(ulimit -n); the $IDLE_CONNS-connection test may fail"
fi

# ---------------------------------------------------------------- processes
T=$(mktemp -d /tmp/gatekeeper-bench.XXXXXX)
chmod 755 "$T" # nginx workers (user nobody) must reach their temp paths
mkdir -p "$T/log"
PIDS=()       # every process we started, in start order
EXTRA_PIDS=() # nginx workers, killed by PID only if their master did not take them down
SAMPLER=""

cleanup() {
  local rc=$? pid i n
  trap - EXIT INT TERM
  [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null || true
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

# start NAME CMD... : runs CMD in the background, logs to $T/log/NAME.{out,err}; sets LAST_PID
start() {
  local name=$1
  shift
  "$@" >"$T/log/$name.out" 2>"$T/log/$name.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_http PORT CODE : until GET / answers CODE (10 s max)
wait_http() {
  local port=$1 want=$2 got n
  for ((n = 0; n < 100; n++)); do
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  die "127.0.0.1:$port answers '$got', not $want"
}

# wait_ready NAME PID : until the gatekeeper logs `ready` (15 s max)
wait_ready() {
  local name=$1 pid=$2 n
  for ((n = 0; n < 150; n++)); do
    grep -q 'ready' "$T/log/$name.err" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$T/log/$name.err" >&2; die "$name exited"; }
    sleep 0.1
  done
  cat "$T/log/$name.err" >&2
  die "$name did not log ready"
}

children() { ps -o pid= --ppid "$1" | tr -d ' ' | tr '\n' ' '; }

# rss_sum PID... : sets RSS_SUM to the sum of VmRSS (KiB), no forks
rss_sum() {
  local p k v _
  RSS_SUM=0
  for p in "$@"; do
    [[ -r /proc/$p/status ]] || continue
    while read -r k v _; do
      if [[ $k == VmRSS: ]]; then RSS_SUM=$((RSS_SUM + v)); break; fi
    done <"/proc/$p/status" || true
  done
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

read -r P_UP P_NGX P_HAP P_GK P_NGXM P_GKM P_GKA1 P_GKA100K P_GKP P_GKI P_FLOOR <<<"$(free_ports 11)"

# ---------------------------------------------------------------- configs
# shellcheck source=bench/configs.sh
source "$HERE/configs.sh"
# Unpinned, everything shares every core and each proxy has 2 workers; pinned,
# the proxies have one core and one worker each, the load the other core.
pin_setup

mkdir -p "$T/upstream" "$T/nginx" "$T/nginx-maint" "$T/haproxy"
upstream_conf "$T/upstream" "$P_UP" >"$T/upstream/nginx.conf"
nginx_proxy_conf "$T/nginx" "$P_NGX" "$P_UP" >"$T/nginx/nginx.conf"

nginx_page_conf "$T/nginx-maint" "$P_NGXM" "$STATIC" >"$T/nginx-maint/nginx.conf"

haproxy_conf "$T/haproxy" "$P_HAP" "$P_UP" >"$T/haproxy/haproxy.cfg"

# Allowlists: 1 entry, and ALLOW_N random /24 and /32 entries plus the client.
printf '127.0.0.1\n' >"$T/allow1"
python3 "$HERE/gen_allow.py" --n "$ALLOW_N" --client 127.0.0.1 "$T/allow100k"

# gk_conf NAME PORT [ALLOW_FILE] [LEVEL] : writes $T/NAME/gatekeeper.toml
BUFFERING=""
gk_conf() {
  local name=$1 port=$2 allow=${3:-} level=${4:-info} d="$T/$1"
  mkdir -p "$d/toggle"
  {
    cat <<EOF
listen = ["127.0.0.1:$port"]

[server]
workers = $WORKERS

[upstream]
url = "http://127.0.0.1:$P_UP"

[maintenance]
toggle = "$d/toggle/maintenance-mode-on"
dir = "$STATIC"
EOF
    if [[ -n $allow ]]; then printf '\n[clients]\nallow_file = "%s"\n' "$allow"; fi
    if [[ -n $BUFFERING ]]; then printf '\n[buffering]\nrequests = true\nresponses = true\n'; fi
    printf '\n[log]\naccess = false\nlevel = "%s"\n' "$level"
  } >"$d/gatekeeper.toml"
}

# Does this build accept [buffering] requests/responses? Then state them explicitly.
BUFFERING=1
gk_conf probe "$P_GK"
if "$GK_BIN" check -c "$T/probe/gatekeeper.toml" >/dev/null 2>&1; then
  BUF_NOTE="keys accepted; requests = true, responses = true (the defaults, as nginx buffers by default)"
else
  BUFFERING=""
  BUF_NOTE="keys rejected by this build, left out (built-in behaviour)"
fi
gk_conf gk "$P_GK"
gk_conf gkm "$P_GKM"
gk_conf gka1 "$P_GKA1" "$T/allow1" info
gk_conf gka100k "$P_GKA100K" "$T/allow100k" info
gk_conf gkp "$P_GKP"
gk_conf gki "$P_GKI"
for n in gk gkm gka1 gka100k gkp gki; do
  "$GK_BIN" check -c "$T/$n/gatekeeper.toml" >/dev/null || die "gatekeeper check rejects $T/$n/gatekeeper.toml"
done
: >"$T/gkm/toggle/maintenance-mode-on"
: >"$T/gka1/toggle/maintenance-mode-on"
: >"$T/gka100k/toggle/maintenance-mode-on"
: >"$T/gkp/toggle/maintenance-mode-off"

# ---------------------------------------------------------------- start
log "work dir $T; starting servers on 127.0.0.1"
start upstream "${ON_LOAD[@]}" nginx -e "$T/upstream/error.log" -p "$T/upstream" -c "$T/upstream/nginx.conf" -g 'daemon off;'
PID_UP=$LAST_PID
start nginx "${ON_PROXY[@]}" nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" -g 'daemon off;'
PID_NGX=$LAST_PID
start nginx-maint "${ON_PROXY[@]}" nginx -e "$T/nginx-maint/error.log" -p "$T/nginx-maint" -c "$T/nginx-maint/nginx.conf" -g 'daemon off;'
PID_NGXM=$LAST_PID
start haproxy "${ON_PROXY[@]}" haproxy -db -f "$T/haproxy/haproxy.cfg"
PID_HAP=$LAST_PID
if [[ -x $FLOOR_BIN ]]; then
  start floor "${ON_PROXY[@]}" "$FLOOR_BIN" "127.0.0.1:$P_FLOOR" "127.0.0.1:$P_UP" "$WORKERS"
  PID_FLOOR=$LAST_PID
fi
declare -A GKPID
for n in gk gkm gka1 gka100k gkp; do
  start "$n" "${ON_PROXY[@]}" "$GK_BIN" run -c "$T/$n/gatekeeper.toml"
  GKPID[$n]=$LAST_PID
done
for n in gk gkm gka1 gka100k gkp; do wait_ready "$n" "${GKPID[$n]}"; done
wait_http "$P_UP" 200
wait_http "$P_NGX" 200
wait_http "$P_HAP" 200
wait_http "$P_GK" 200
[[ -z ${PID_FLOOR:-} ]] || wait_http "$P_FLOOR" 200
wait_http "$P_NGXM" 503
wait_http "$P_GKM" 503
wait_http "$P_GKA1" 200
wait_http "$P_GKA100K" 200
wait_http "$P_GKP" 200
sleep 0.3
for p in $PID_UP $PID_NGX $PID_NGXM; do
  for c in $(children "$p"); do EXTRA_PIDS+=("$c"); done
done
curl -s -D - -o /dev/null "http://127.0.0.1:$P_GKA100K/" | grep -qi '^x-maintenance-mode: *bypass' ||
  die "allowed client is not bypassed on the 100k-entry instance"
MAINT_BODY_NGX=$(curl -s "http://127.0.0.1:$P_NGXM/" | wc -c)
MAINT_BODY_GK=$(curl -s "http://127.0.0.1:$P_GKM/" | wc -c)

declare -A URL RSSPIDS
URL[proxy/direct]=$P_UP
URL[proxy/nginx]=$P_NGX
URL[proxy/haproxy]=$P_HAP
URL[proxy/gatekeeper]=$P_GK
URL[proxy/floor]=$P_FLOOR
URL[maint/nginx]=$P_NGXM
URL[maint/gatekeeper]=$P_GKM
URL[allow/allow1]=$P_GKA1
URL[allow/allow100k]=$P_GKA100K
RSSPIDS[proxy/direct]="$PID_UP $(children "$PID_UP")"
RSSPIDS[proxy/nginx]="$PID_NGX $(children "$PID_NGX")"
RSSPIDS[proxy/haproxy]=$PID_HAP
RSSPIDS[proxy/gatekeeper]=${GKPID[gk]}
RSSPIDS[proxy/floor]=${PID_FLOOR:-}
RSSPIDS[maint/nginx]="$PID_NGXM $(children "$PID_NGXM")"
RSSPIDS[maint/gatekeeper]=${GKPID[gkm]}
RSSPIDS[allow/allow1]=${GKPID[gka1]}
RSSPIDS[allow/allow100k]=${GKPID[gka100k]}

# ---------------------------------------------------------------- meta
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem=$(awk '/MemTotal/{printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
  echo "kernel=Linux $(uname -r)"
  echo "gk_version=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"
  echo "nginx_version=$(nginx -v 2>&1 | sed 's/.*: //')"
  echo "haproxy_version=HAProxy $(haproxy -v | head -1 | awk '{print $3}')"
  echo "wrk_version=$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mode=$MODE"
  echo "workers=$WORKERS"
  echo "pin=$( ((PIN)) && echo "proxies on CPU ${PROXY_CPU:-1}; wrk, the upstream and the other clients on CPU ${LOAD_CPU:-0}" || echo none)"
  echo "rounds=$ROUNDS"
  echo "duration=$DURATION"
  echo "threads=$THREADS"
  echo "allow_n=$ALLOW_N"
  echo "buffering=$BUF_NOTE"
  echo "maint_body_nginx=$MAINT_BODY_NGX"
  echo "maint_body_gk=$MAINT_BODY_GK"
} >"$T/meta.env"
: >"$T/results.tsv"

# ---------------------------------------------------------------- wrk runs
# bench SECTION TARGET CONNS ROUND DURATION : one wrk run, one line in results.tsv (ROUND 0 = warm-up, not recorded)
bench() {
  local sec=$1 tgt=$2 conns=$3 round=$4 dur=$5 key="$1/$2" out line
  local -a pids
  read -ra pids <<<"${RSSPIDS[$key]}"
  : >"$T/rss.samples"
  (
    while :; do
      rss_sum "${pids[@]}"
      echo "$RSS_SUM" >>"$T/rss.samples"
      sleep 0.2
    done
  ) &
  SAMPLER=$!
  out=$("${ON_LOAD[@]}" wrk -t"$THREADS" -c"$conns" -d"${dur}s" --timeout 5s -s "$HERE/report.lua" "http://127.0.0.1:${URL[$key]}/" 2>&1) || true
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
  line=$(grep '^WRK ' <<<"$out" || true)
  [[ -n $line ]] || { echo "$out" >&2; die "wrk failed for $key"; }
  # WRK requests duration_us connect read write status timeout p50_us p99_us max_us (p90_us p999_us)
  read -r _ req dus ec er ew es et p50 p99 _ <<<"$line"
  local errs=$((ec + er + ew + et))
  [[ $sec == maint ]] || errs=$((errs + es)) # 503 is the expected answer of the maintenance page
  local peak
  peak=$(awk '$1 > m {m = $1} END {print m + 0}' "$T/rss.samples")
  local rps
  rps=$(awk -v r="$req" -v d="$dus" 'BEGIN{printf "%.1f", r / (d / 1e6)}')
  if ((round > 0)); then
    printf '%s %s %s %s %s %s %s %s %s\n' "$sec" "$tgt" "$conns" "$round" "$rps" \
      "$(awk -v x="$p50" 'BEGIN{printf "%.3f", x/1000}')" "$(awk -v x="$p99" 'BEGIN{printf "%.3f", x/1000}')" \
      "$errs" "$peak" >>"$T/results.tsv"
    log "$(printf '%-6s %-10s c=%-4s round %s: %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  err %s  rss %s KiB' \
      "$sec" "$tgt" "$conns" "$round" "$rps" "$(awk -v x="$p50" 'BEGIN{print x/1000}')" "$(awk -v x="$p99" 'BEGIN{print x/1000}')" "$errs" "$peak")"
  fi
  sleep 0.5
}

# interleaved SECTION "CONNS..." TARGET... : for round: for conns: every target once, order rotated per round
interleaved() {
  local sec=$1 conns_list=$2
  shift 2
  local -a tg=("$@")
  local n=${#tg[@]} r c i
  for t in "${tg[@]}"; do bench "$sec" "$t" 64 0 "$WARMUP"; done
  for ((r = 1; r <= ROUNDS; r++)); do
    for c in $conns_list; do
      for ((i = 0; i < n; i++)); do bench "$sec" "${tg[(i + r - 1) % n]}" "$c" "$r" "$DURATION"; done
    done
  done
}

log "1/6 proxied: ${ROUNDS} round(s) x ${PROXY_CONNS[*]} conns x ${#PROXY_TARGETS[@]} targets x ${DURATION}s"
interleaved proxy "${PROXY_CONNS[*]}" "${PROXY_TARGETS[@]}"
log "2/6 maintenance page"
interleaved maint "${SIDE_CONNS[*]}" nginx gatekeeper
log "3/6 allowlist 1 vs $ALLOW_N entries"
interleaved allow "${SIDE_CONNS[*]}" allow1 allow100k

# ---------------------------------------------------------------- propagation
log "4/6 toggle propagation: $FLIPS flips"
"${ON_LOAD[@]}" python3 "$HERE/propagation.py" --port "$P_GKP" --dir "$T/gkp/toggle" --flips "$FLIPS" >"$T/propagation.json" ||
  log "propagation test failed"

# ---------------------------------------------------------------- reload
log "5/6 reload with $ALLOW_N allowlist entries"
python3 "$HERE/reload.py" --pid "${GKPID[gka100k]}" --log "$T/log/gka100k.err" --n "$RELOADS" >"$T/reload.json" ||
  log "reload test failed"

# ---------------------------------------------------------------- memory
log "6/6 memory: idle, then $IDLE_CONNS idle keep-alive connections"
start gki "${ON_PROXY[@]}" "$GK_BIN" run -c "$T/gki/gatekeeper.toml"
GKPID[gki]=$LAST_PID
wait_ready gki "${GKPID[gki]}"
sleep 1
rss_sum "${GKPID[gki]}"
echo "idle_rss_kib=$RSS_SUM" >>"$T/meta.env"
"${ON_LOAD[@]}" python3 "$HERE/idle_conns.py" --port "$P_GKI" --pid "${GKPID[gki]}" -n "$IDLE_CONNS" --settle 1 --reuse 1000 --linger "$LINGER" >"$T/idle.json" ||
  log "idle-connections test failed"

echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$T/meta.env"
echo
python3 "$HERE/report.py" "$T"
