#!/usr/bin/env bash
# Slow-client benchmark: slowhttptest (slowloris, slow body, slow read with one
# and with two pipelined requests per connection) against
# gatekeeper, nginx with Debian's default config, and nginx tuned, all in
# front of the same sync-worker stand-in app (bench/syncapp.py: 8 threads, one
# connection each at a time), plus the app alone as the baseline. A probe sends
# one ordinary GET every 100 ms on a fresh connection during every run.
#
#   bench/slow_clients.sh          4,000 connections, 30 s of probes per mode (~13 minutes)
#   bench/slow_clients.sh --quick  2,000 connections, 10 s of probes per mode (~6 minutes)
#
# Options: --no-build (use the existing target/release/gatekeeper), --keep
#          (keep the work dir), --no-install (never call apt-get), --no-netns
#          (run on the host's loopback; see below).
# Environment: CONNS, DURATION (seconds), PROBE_TIMEOUT (seconds, default 5),
#          GATEKEEPER_BIN, TARGETS (subset of "app gatekeeper nginx-debian
#          nginx-tuned"), MODES (subset of "slowloris slowbody slowread
#          slowread2"; slowread2: two pipelined requests per slow reader,
#          slowhttptest -k 2), TEMP_DIR (where gatekeeper and nginx put their
#          temp files; default: the work dir, on disk).
#
# Network namespace: when run as root, the measurement runs in a fresh network
# namespace (unshare -n: its own loopback, nothing else on the host sees it)
# with net.ipv4.tcp_wmem capped at 64 KiB. On the host's loopback the kernel
# sizes every send buffer from the 64 KiB loopback MSS, up to tcp_wmem's 4 MiB,
# so it swallows a 1 MiB answer whole and "slow read" tests nothing but
# kernel memory (4,000 x 1 MiB would also exceed the host-wide tcp_mem limit
# and stall every TCP socket on the machine). A slow reader on a real network
# keeps the sender's window, hence its send buffer, in the tens of KiB.
#
# Installs slowhttptest and nginx (and python3, curl) from Debian's packages
# when missing; starts every process with its own config, pid and temp paths
# under a fresh temp dir and stops each by PID on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
unset RUST_LOG

QUICK=0 KEEP=0 BUILD=1 INSTALL=1 NETNS=1 INSIDE=0
ARGS=("$@")
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    --no-netns) NETNS=0 ;;
    --inside-netns) INSIDE=1 ;;
    -h | --help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

if ((QUICK)); then
  CONNS=${CONNS:-2000} DURATION=${DURATION:-10} MODE=quick
else
  CONNS=${CONNS:-4000} DURATION=${DURATION:-30} MODE=full
fi
WORKERS=8
BIG=$((1024 * 1024))        # slow-read answer
PROBE_EVERY=0.1
PROBE_TIMEOUT=${PROBE_TIMEOUT:-5} # as slowhttptest's own probe (-p 5)
LEAVE_WINDOW=5              # seconds of probing around the moment the slow clients leave
RATE_SLOW_HEAD=1000         # connections opened per second (-r)
RATE_SLOW_READ=500          # slow readers' requests do reach the app: 500 MiB/s stays within what 8 Python workers serve
APP_SNDBUF=212992           # net.core.wmem_max: the app's send buffer holds 416 KiB, less than half a 1 MiB answer
TARGETS=${TARGETS:-app gatekeeper nginx-debian nginx-tuned}
MODES=${MODES:-slowloris slowbody slowread slowread2}
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}

log() { printf '[slow %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if ((!INSIDE)); then
  # ------------------------------------------------------------ install
  SUDO=()
  ((EUID == 0)) || SUDO=(sudo)
  missing=()
  for cmd in slowhttptest nginx python3 curl ss; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  if ((${#missing[@]})); then
    ((INSTALL)) || die "missing: ${missing[*]} (and --no-install given)"
    pkgs=()
    for m in "${missing[@]}"; do
      case $m in ss) pkgs+=(iproute2) ;; *) pkgs+=("$m") ;; esac
    done
    log "installing from Debian's packages: ${pkgs[*]}"
    "${SUDO[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends "${pkgs[@]}"
  fi
  # ------------------------------------------------------------ build
  if ((BUILD)) && [[ -z ${GATEKEEPER_BIN:-} ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  fi
  [[ -x $GK_BIN ]] || die "no gatekeeper binary at $GK_BIN"
  # ------------------------------------------------------------ netns
  if ((NETNS)); then
    if ((EUID == 0)) && command -v unshare >/dev/null && command -v ip >/dev/null &&
      unshare -n true 2>/dev/null; then
      log "re-running inside a fresh network namespace (unshare -n)"
      exec unshare -n -- "$0" "${ARGS[@]}" --inside-netns
    fi
    log "no network namespace (needs root and unshare): running on the host loopback (see --help)"
  fi
fi

NET_NOTE="host loopback, tcp_wmem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_wmem)"
if ((INSIDE)); then
  ip link set lo up
  sysctl -qw net.ipv4.tcp_wmem="${NETNS_TCP_WMEM:-4096 16384 65536}"
  NET_NOTE="own network namespace, tcp_wmem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_wmem)"
fi

# ---------------------------------------------------------------- limits
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if ((NOFILE < CONNS + 500)); then
  log "note: RLIMIT_NOFILE hard limit is $NOFILE: running $((NOFILE - 500)) connections instead of $CONNS"
  CONNS=$((NOFILE - 500))
fi

# ---------------------------------------------------------------- processes
T=$(mktemp -d /tmp/gatekeeper-slow.XXXXXX)
chmod 755 "$T" # nginx workers (www-data) must reach their temp paths
mkdir -p "$T/log" "$T/st" "$T/probe"
PIDS=()
EXTRA_PIDS=()
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
  [[ -n ${TEMP_DIR:-} && -n ${TMPS:-} && $TMPS == "$TEMP_DIR"/gatekeeper-slow-tmp.* ]] && rm -rf "$TMPS"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # NAME CMD... ; sets LAST_PID
  local name=$1
  shift
  "$@" >"$T/log/$name.out" 2>"$T/log/$name.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
children() { ps -o pid= --ppid "$1" | tr -d ' ' | tr '\n' ' '; }
wait_http() { # PORT
  local got n
  for ((n = 0; n < 100; n++)); do
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1/probe" || true)
    [[ $got == 200 ]] && return 0
    sleep 0.1
  done
  die "127.0.0.1:$1 answers '$got', not 200"
}
rss_sum() { # PID... -> RSS_SUM (KiB)
  local p k v _
  RSS_SUM=0
  for p in "$@"; do
    [[ -r /proc/$p/status ]] || continue
    while read -r k v _; do
      if [[ $k == VmRSS: ]]; then RSS_SUM=$((RSS_SUM + v)); break; fi
    done <"/proc/$p/status" || true
  done
}
established() { # PORT -> connections to it
  ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
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
read -r P_APP P_GK P_NGD P_NGT <<<"$(free_ports 4)"

# ---------------------------------------------------------------- configs
USER_LINE=""
id www-data >/dev/null 2>&1 && USER_LINE="user www-data;"
mkdir -p "$T/nginx-debian" "$T/nginx-tuned" "$T/gatekeeper/toggle"
TMPS=$T/tmp
if [[ -n ${TEMP_DIR:-} ]]; then TMPS=$(mktemp -d "$TEMP_DIR/gatekeeper-slow-tmp.XXXXXX"); fi
mkdir -p "$TMPS"
chmod 755 "$TMPS"
mkdir -p "$TMPS/gatekeeper" "$TMPS/nginx-debian" "$TMPS/nginx-tuned"
# Debian's /etc/nginx/nginx.conf (bookworm, nginx 1.22) with the site replaced
# by a proxy_pass server block, logs and temp paths moved, access log off.
cat >"$T/nginx-debian/nginx.conf" <<EOF
$USER_LINE
worker_processes auto;
pid $T/nginx-debian/nginx.pid;
error_log $T/nginx-debian/error.log;
events {
	worker_connections 768;
}
http {
	sendfile on;
	tcp_nopush on;
	types_hash_max_size 2048;
	default_type application/octet-stream;
	ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
	ssl_prefer_server_ciphers on;
	access_log off;
	gzip on;
	client_body_temp_path $TMPS/nginx-debian/body;
	proxy_temp_path $TMPS/nginx-debian/proxy;
	server {
		listen 127.0.0.1:$P_NGD;
		location / { proxy_pass http://127.0.0.1:$P_APP; }
	}
}
EOF
# Tuned: room for the connections and their descriptors, a deeper backlog
# (gatekeeper listens with 4096); everything else as above (nginx's defaults:
# client_header_timeout, client_body_timeout and send_timeout 60 s, request and
# response buffering on).
cat >"$T/nginx-tuned/nginx.conf" <<EOF
$USER_LINE
worker_processes auto;
worker_rlimit_nofile 65536;
pid $T/nginx-tuned/nginx.pid;
error_log $T/nginx-tuned/error.log;
events {
	worker_connections 20000;
}
http {
	sendfile on;
	tcp_nopush on;
	types_hash_max_size 2048;
	default_type application/octet-stream;
	access_log off;
	gzip on;
	client_body_temp_path $TMPS/nginx-tuned/body;
	proxy_temp_path $TMPS/nginx-tuned/proxy;
	server {
		listen 127.0.0.1:$P_NGT backlog=4096;
		location / { proxy_pass http://127.0.0.1:$P_APP; }
	}
}
EOF
# gatekeeper: defaults (header_timeout 10s, body_timeout 60s, max_connections
# 16384, buffering on, 64 KiB in memory per body), maintenance off.
cat >"$T/gatekeeper/gatekeeper.toml" <<EOF
listen = ["127.0.0.1:$P_GK"]

[upstream]
url = "http://127.0.0.1:$P_APP"

[maintenance]
toggle = "$T/gatekeeper/toggle/maintenance-mode-on"

[buffering]
dir = "$TMPS/gatekeeper"

[log]
access = false
level = "warn"
EOF
"$GK_BIN" check -c "$T/gatekeeper/gatekeeper.toml" >/dev/null || die "gatekeeper check rejects its config"

# ---------------------------------------------------------------- start
log "work dir $T ($NET_NOTE); $CONNS connections, ${DURATION}s per mode"
# SO_SNDBUF 208 KiB: with syncapp's default 16 KiB, 8 Python workers serve 1 MiB
# answers at ~140/s and a slow-read run measures the app's throughput, not slow
# clients; at 208 KiB they serve ~1,600/s, and a slow reader aimed at the app
# directly still holds a worker (the kernel takes 416 KiB, not 1 MiB).
start app python3 "$HERE/syncapp.py" serve --port "$P_APP" --workers "$WORKERS" --big "$BIG" --backlog 2048 \
  --sndbuf "$APP_SNDBUF"
PID_APP=$LAST_PID
start gatekeeper "$GK_BIN" run -c "$T/gatekeeper/gatekeeper.toml"
PID_GK=$LAST_PID
# Debian's nginx.service sets no LimitNOFILE: nginx gets systemd's soft limit, 1024.
start nginx-debian bash -c "ulimit -Sn 1024; exec nginx -e '$T/nginx-debian/error.log' -p '$T/nginx-debian' -c '$T/nginx-debian/nginx.conf' -g 'daemon off;'"
PID_NGD=$LAST_PID
start nginx-tuned nginx -e "$T/nginx-tuned/error.log" -p "$T/nginx-tuned" -c "$T/nginx-tuned/nginx.conf" -g 'daemon off;'
PID_NGT=$LAST_PID
for p in $P_APP $P_GK $P_NGD $P_NGT; do wait_http "$p"; done
sleep 0.3
for p in $PID_NGD $PID_NGT; do
  for c in $(children "$p"); do EXTRA_PIDS+=("$c"); done
done
declare -A PORT RSSPIDS
PORT[app]=$P_APP PORT[gatekeeper]=$P_GK PORT[nginx-debian]=$P_NGD PORT[nginx-tuned]=$P_NGT
RSSPIDS[app]=$PID_APP
RSSPIDS[gatekeeper]=$PID_GK
RSSPIDS[nginx-debian]="$PID_NGD $(children "$PID_NGD")"
RSSPIDS[nginx-tuned]="$PID_NGT $(children "$PID_NGT")"

{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "host=$(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "gatekeeper=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"
  echo "nginx=$(nginx -v 2>&1 | sed 's/.*: //')"
  echo "slowhttptest=$(slowhttptest -h 2>&1 | grep -o 'version [0-9.]*' | head -1)"
  echo "net=$NET_NOTE"
  echo "temp=$TMPS ($(df -PT "$TMPS" | awk 'NR == 2 {print $2}'))"
  echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$T/meta.env"
: >"$T/results.tsv"

# ---------------------------------------------------------------- runs
# run TARGET MODE : one slowhttptest run with the probe; one line in results.tsv
run() {
  local tgt=$1 mode=$2 port=${PORT[$1]} args url rate name="$1-$2"
  local -a pids
  read -ra pids <<<"${RSSPIDS[$tgt]}"
  case $mode in
    slowloris) args=(-H -i 10) url="http://127.0.0.1:$port/" rate=$RATE_SLOW_HEAD ;;
    slowbody) args=(-B -i 10 -s 1000000) url="http://127.0.0.1:$port/" rate=$RATE_SLOW_HEAD ;;
    slowread) args=(-X -k 1 -w 512 -y 1024 -n 5 -z 32) url="http://127.0.0.1:$port/big" rate=$RATE_SLOW_READ ;;
    # the second request waits behind the first answer, which the client takes 32 bytes at a time
    slowread2) args=(-X -k 2 -w 512 -y 1024 -n 5 -z 32) url="http://127.0.0.1:$port/big" rate=$RATE_SLOW_READ ;;
  esac
  : >"$T/rss.samples"
  (
    while :; do
      rss_sum "${pids[@]}"
      # the kernel's TCP buffers, host-wide (tcp_mem counts every namespace), in pages
      echo "$RSS_SUM $(awk '$1 == "TCP:" {for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)" >>"$T/rss.samples"
      sleep 0.2
    done
  ) &
  SAMPLER=$!
  python3 "$HERE/syncapp.py" probe --url "http://127.0.0.1:$port/probe" --interval "$PROBE_EVERY" \
    --duration "$DURATION" --timeout "$PROBE_TIMEOUT" >"$T/probe/$name.json" &
  local probe=$!
  # A second probe covers the end of the attack: from 1 s before slowhttptest
  # closes its connections to LEAVE_WINDOW - 1 s after. Thousands of slow
  # clients leaving at once cost the proxy work too (each spooled answer's
  # temp file is freed then).
  (
    sleep $((DURATION + PROBE_TIMEOUT))
    exec python3 "$HERE/syncapp.py" probe --url "http://127.0.0.1:$port/probe" --interval "$PROBE_EVERY" \
      --duration "$LEAVE_WINDOW" --timeout "$PROBE_TIMEOUT" >"$T/probe/$name-leave.json"
  ) &
  local leave_probe=$!
  # The attack outlasts the probe window by the probe's timeout: slowhttptest
  # closing its connections at the end must not rescue a stuck probe.
  timeout -k 5 $((DURATION + PROBE_TIMEOUT + 30)) slowhttptest "${args[@]}" -c "$CONNS" -r "$rate" \
    -l $((DURATION + PROBE_TIMEOUT + 1)) -p 5 \
    -g -o "$T/st/$name" -u "$url" >"$T/st/$name.log" 2>&1 || true
  wait "$probe" || true
  wait "$leave_probe" || true
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
  local peak connected ok pct p50 p99 sent tcpmem lpct lp99
  peak=$(awk '$1 > m {m = $1} END {print m + 0}' "$T/rss.samples")
  tcpmem=$(awk '$2 > m {m = $2} END {printf "%.0f", m * 4 / 1024}' "$T/rss.samples")
  connected=$(awk -F, 'NR > 1 && $4 + 0 > m {m = $4 + 0} END {print m + 0}' "$T/st/$name.csv" 2>/dev/null || echo 0)
  read -r sent ok pct p50 p99 < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["sent"], d["ok"], d["success_pct"], d["p50_ms"], d["p99_ms"])' "$T/probe/$name.json")
  read -r lpct lp99 < <(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print(d["success_pct"], d["p99_ms"])
except (OSError, ValueError):
    print("? ?")' "$T/probe/$name-leave.json")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tgt" "$mode" "$pct" "$p50" "$p99" "$ok" "$sent" "$connected" "$peak" \
    "$lpct" "$lp99" >>"$T/results.tsv"
  log "$(printf '%-13s %-10s probe %6s %% 200 (%s/%s)  p50 %8s ms  p99 %8s ms  as they leave %6s %% p99 %8s ms  slowhttptest connected %5s  peak RSS %6d KiB  peak kernel TCP memory %5s MiB' \
    "$tgt" "$mode" "$pct" "$ok" "$sent" "$p50" "$p99" "$lpct" "$lp99" "$connected" "$peak" "$tcpmem")"
  # let the slow connections go before the next run (slowhttptest closed them; the proxy may lag)
  local n
  for ((n = 0; n < 150; n++)); do
    (($(established "$port") < 20)) && break
    sleep 0.2
  done
  sleep 1
}

for tgt in $TARGETS; do
  for mode in $MODES; do
    run "$tgt" "$mode"
  done
done
kill -0 "$PID_GK" 2>/dev/null || die "gatekeeper died during the runs"
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$T/meta.env"

# ---------------------------------------------------------------- report
echo
sed 's/^/# /' "$T/meta.env"
echo "# $MODE: $CONNS slowhttptest connections; probe: GET every ${PROBE_EVERY} s on a fresh connection for ${DURATION} s, ${PROBE_TIMEOUT} s timeout, while the attack runs ($((DURATION + PROBE_TIMEOUT + 1)) s); \"as they leave\": the same for ${LEAVE_WINDOW} s from 1 s before slowhttptest closes its connections"
echo "# app: bench/syncapp.py, $WORKERS sync workers, SO_SNDBUF $APP_SNDBUF, 1 MiB slow-read answer"
echo "# slowhttptest: slowloris -H -i 10 | slowbody -B -i 10 -s 1000000 | slowread -X -k 1 -w 512 -y 1024 -n 5 -z 32 | slowread2 the same with -k 2 (-r $RATE_SLOW_HEAD, slow reads -r $RATE_SLOW_READ)"
echo
printf '| %-13s | %-10s | %13s | %13s | %13s | %22s | %13s | %15s | %15s |\n' "in front" "mode" "probe 200 %" "probe p50 ms" "probe p99 ms" "slowhttptest connected" "peak RSS MiB" "as they leave %" "as they leave p99"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "---------------" "------------" "--------------:" "--------------:" "--------------:" "-----------------------:" "--------------:" "----------------:" "------------------:"
while IFS=$'\t' read -r tgt mode pct p50 p99 ok sent connected peak lpct lp99; do
  name=$tgt
  [[ $tgt == app ]] && name="none (app)"
  printf '| %-13s | %-10s | %13s | %13s | %13s | %22s | %13s | %15s | %17s |\n' "$name" "$mode" "$pct" "$p50" "$p99" "$connected" \
    "$(awk -v k="$peak" 'BEGIN{printf "%.0f", k/1024}')" "$lpct" "$lp99"
done <"$T/results.tsv"
gk_body=$(awk -F'\t' '$1 == "gatekeeper" && $2 == "slowbody" {printf "%.0f", $9/1024}' "$T/results.tsv")
[[ -n $gk_body ]] && echo && echo "gatekeeper peak RSS during the slow-body run: ${gk_body} MiB"
