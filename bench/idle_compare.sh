#!/usr/bin/env bash
# RSS with N idle connections, gatekeeper beside nginx and HAProxy, in one run
# (docs/perf-idle.md): each server in front of the same local nginx (`return
# 200`), started afresh for each measurement; bench/idle_conns.py opens N
# connections, one GET / each (read to its end), waits SETTLE seconds and
# reads VmRSS summed over the server's processes (nginx: master and workers),
# and PSS (their shared pages counted once).
#
#   bench/idle_compare.sh                 HTTP/1.1 keep-alive and h2c, 10,000 connections
#   MODES=h1 CONNS=5000 bench/idle_compare.sh
#   SERVERS="gatekeeper nginx" bench/idle_compare.sh
#   REPS=3 bench/idle_compare.sh          each measurement 3 times (servers interleaved)
#   GK_BASE=/tmp/gk-old SERVERS="gk-base gatekeeper" bench/idle_compare.sh
#                                         another gatekeeper build (before/after), interleaved
#   HEAP=1 bench/idle_compare.sh          gatekeeper: also glibc's malloc_stats() through gdb
#                                         with the connections open (in use / held)
#
# Modes: h1 (one GET, then idle keep-alive), h2c (prior knowledge: preface,
# SETTINGS, one GET on stream 1, then idle). The servers: gatekeeper (release
# build, 2 workers, header_timeout 60s so that it keeps every idle connection),
# nginx (nginx_proxy_conf from configs.sh, 2 workers, plus `listen ... http2`
# on a second port for h2c), HAProxy (haproxy_conf, 2 threads, maxconn raised
# above the connection count; plus `bind ... proto h2` for h2c). HAProxy
# refuses a maxconn above half the descriptor limit (a proxied connection may
# need two): where the hard limit is lower than 2 x CONNS it gets fewer
# connections (the per-connection figure still compares).
#
# Loopback only; bounded: REPS (at most 10) x servers x modes measurements of
# at most CONNS (at most 30,000) connections, every socket with a timeout.
# Every process is started under a fresh temp dir and stopped by PID on exit.
# Prints one line per measurement and a summary table.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
. "$HERE/configs.sh"

CONNS=${CONNS:-10000}
((CONNS <= 30000)) || { echo "CONNS at most 30000" >&2; exit 2; }
REPS=${REPS:-1}
((REPS >= 1 && REPS <= 10)) || { echo "REPS from 1 to 10" >&2; exit 2; }
MODES=${MODES:-h1 h2c}
SERVERS=${SERVERS:-gatekeeper nginx haproxy}
SETTLE=${SETTLE:-2}
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}
[[ -x $GK_BIN ]] || { echo "no gatekeeper binary at $GK_BIN (cargo build --release)" >&2; exit 1; }
GK_BASE=${GK_BASE:-}
[[ $SERVERS != *gk-base* || -x $GK_BASE ]] || { echo "SERVERS has gk-base: GK_BASE must be a gatekeeper binary" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

T=$(mktemp -d /tmp/gatekeeper-idlecmp.XXXXXX)
UP=""
SRV=""
stop() { # PID: TERM, wait at most 10 s, then KILL
  local pid=$1 n
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((n = 0; n < 100; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $SRV ]] && stop "$SRV"
  [[ -n $UP ]] && stop "$UP"
  if [[ -n ${KEEP:-} ]]; then echo "kept: $T" >&2; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

P_UP=$(free_port)
mkdir -p "$T/up"
upstream_conf "$T/up" "$P_UP" >"$T/up/nginx.conf"
nginx -e "$T/up/error.log" -p "$T/up" -c "$T/up/nginx.conf" -g 'daemon off;' &
UP=$!

wait_port() { # PORT PID
  local n
  for ((n = 0; n < 300; n++)); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

N_START=0
start_server() { # NAME -> SRV (pid), D (its dir), P1 (HTTP/1.1 port), P2 (h2c port)
  local name=$1 d
  N_START=$((N_START + 1))
  d="$T/$1.$N_START"
  D=$d
  mkdir -p "$d"
  P1=$(free_port)
  case $name in
    gatekeeper | gk-base)
      P2=$P1 # HTTP/1.1 and h2c (prior knowledge) on one socket
      mkdir -p "$d/toggle"
      cat >"$d/gatekeeper.toml" <<EOF
listen = ["127.0.0.1:$P1"]

[server]
header_timeout = "60s"
workers = 2

[upstream]
url = "http://127.0.0.1:$P_UP"

[maintenance]
toggle = "$d/toggle/maintenance-mode-on"

[log]
access = false
level = "warn"
EOF
      bin=$GK_BIN
      [[ $name == gk-base ]] && bin=$GK_BASE
      "$bin" run -c "$d/gatekeeper.toml" >"$d/out.log" 2>&1 &
      ;;
    nginx)
      P2=$(free_port)
      nginx_proxy_conf "$d" "$P1" "$P_UP" |
        sed "s|^\(    listen 127.0.0.1:$P1 backlog=4096;\)|\1\n    listen 127.0.0.1:$P2 http2 backlog=4096;|" >"$d/nginx.conf"
      nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g 'daemon off;' &
      ;;
    haproxy)
      P2=$(free_port)
      haproxy_conf "$d" "$P1" "$P_UP" |
        sed -e "s|maxconn 8000|maxconn $HAP_MAXCONN|" \
          -e "s|^\(  bind 127.0.0.1:$P1\)$|\1\n  bind 127.0.0.1:$P2 proto h2|" >"$d/haproxy.cfg"
      haproxy -db -f "$d/haproxy.cfg" >"$d/out.log" 2>&1 &
      ;;
  esac
  SRV=$!
  wait_port "$P1" "$SRV" || { echo "$name did not start" >&2; cat "$d"/*.log >&2 || true; exit 1; }
}

cat >"$T/fmt.py" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
name, mode, rep = sys.argv[2:5]
n = max(1, r["alive_after_settle"])
each = (r["rss_kib"] - r["rss_before_kib"]) / n
print(f"{name:10} {mode:4} rep {rep}: {r['alive_after_settle']}/{r['requested']} open, "
      f"statuses {r['statuses']}, VmRSS {r['rss_before_kib'] / 1024:.1f} -> {r['rss_kib'] / 1024:.1f} MiB "
      f"(+{each:.2f} KiB each), PSS {r['pss_before_kib'] / 1024:.1f} -> {r['pss_kib'] / 1024:.1f} MiB, reused {r['reused_ok']}/{r['reused']}, opened in {r['open_seconds']} s, {r['server_fds']} fds (main process)")
EOF
# HAProxy: maxconn at most half the descriptors, less its own few.
HAP_MAXCONN=$(((CONNS + 500) < ($(ulimit -n) - 100) / 2 ? CONNS + 500 : ($(ulimit -n) - 100) / 2))
HAP_CONNS=$((CONNS < HAP_MAXCONN - 100 ? CONNS : HAP_MAXCONN - 100))
results=()
for ((rep = 1; rep <= REPS; rep++)); do
  for mode in $MODES; do
    for name in $SERVERS; do
      start_server "$name"
      sleep 1
      port=$P1 extra=()
      [[ $mode == h2c ]] && port=$P2 extra=(--h2)
      after=()
      if [[ $name == g* && -n ${HEAP:-} ]]; then
        after=(--after-open "gdb -p {pid} -batch -ex 'call (void) malloc_stats()' >/dev/null 2>&1")
      fi
      n=$CONNS
      [[ $name == haproxy ]] && n=$HAP_CONNS
      out=$(python3 "$HERE/idle_conns.py" --port "$port" --pid "$SRV" --tree -n "$n" --settle "$SETTLE" \
        --reuse 100 "${extra[@]}" "${after[@]}")
      line=$(python3 "$T/fmt.py" "$out" "$name" "$mode" "$rep")
      echo "$line"
      results+=("$line")
      if [[ $name == g* && -n ${HEAP:-} ]]; then
        grep -A2 "^Total (incl. mmap)" "$D/out.log" || true
      fi
      stop "$SRV"
      SRV=""
    done
  done
done
echo
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${results[@]}"
