#!/usr/bin/env bash
# RSS across rounds of idle keep-alive connections (docs/hardening.md, finding C):
# gatekeeper in front of a local nginx (`return 200`), header_timeout 60 s so
# that the daemon keeps every idle connection; bench/idle_conns.py opens N
# connections (one GET each), reads VmRSS, closes them all, reads VmRSS again,
# ROUNDS times.
#
#   bench/idle_rounds.sh                   20 rounds of 5,000 connections (~3 minutes)
#   ROUNDS=3 CONNS=2000 bench/idle_rounds.sh
#   TOOL=massif bench/idle_rounds.sh       the same under valgrind --tool=massif, with a detailed
#                                          snapshot after each round (massif.roundN, for ms_print)
#   TOOL=dhat bench/idle_rounds.sh         ... or --tool=dhat (output kept in the printed dir)
#   HEAP=1 bench/idle_rounds.sh            after each round, glibc's malloc_stats() through gdb:
#                                          bytes in use (ours) against bytes the allocator holds
#   HEAP=1 TRIM=1 bench/idle_rounds.sh     ... with malloc_trim(0) called first (RSS read after it)
#   TLS=1 bench/idle_rounds.sh             the connections over TLS (self-signed; not parked: each
#                                          idle one keeps hyper's and rustls's buffers)
#
# Environment: ROUNDS (default 20, at most 100), CONNS (default 5,000), HEAP, TRIM, TLS,
#   GATEKEEPER_BIN (default target/release/gatekeeper), TOOL (massif or dhat), KEEP (keep the dir),
#   GK_ENV (extra environment for gatekeeper, e.g. "MALLOC_ARENA_MAX=2").
# Loopback only; every process is started with its own files under a fresh
# temp dir and stopped by PID on exit. Prints idle_conns.py's JSON on stdout,
# one line per round on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
. "$HERE/configs.sh"

ROUNDS=${ROUNDS:-20}
CONNS=${CONNS:-5000}
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}
TOOL=${TOOL:-}
[[ -x $GK_BIN ]] || { echo "no gatekeeper binary at $GK_BIN (cargo build --release)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

T=$(mktemp -d /tmp/gatekeeper-idle.XXXXXX)
PIDS=()
cleanup() {
  local rc=$? pid n
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((n = 0; n < 100; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $TOOL || -n ${KEEP:-} ]]; then echo "kept: $T" >&2; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

P_UP=$(free_port)
mkdir -p "$T/up" "$T/gk/toggle"
upstream_conf "$T/up" "$P_UP" >"$T/up/nginx.conf"
nginx -e "$T/up/error.log" -p "$T/up" -c "$T/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
P_GK=$(free_port)
cat >"$T/gk/gatekeeper.toml" <<EOF
listen = ["127.0.0.1:$P_GK"]

[server]
header_timeout = "60s"
workers = 2

[upstream]
url = "http://127.0.0.1:$P_UP"

[maintenance]
toggle = "$T/gk/toggle/maintenance-mode-on"

[log]
access = false
level = "warn"
EOF
tls=()
if [[ -n ${TLS:-} ]]; then
  P_TLS=$(free_port)
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -keyout "$T/gk/key.pem" \
    -out "$T/gk/cert.pem" >/dev/null 2>&1
  printf '\n[tls]\nlisten = ["127.0.0.1:%s"]\ncert = "%s"\nkey = "%s"\n' "$P_TLS" "$T/gk/cert.pem" "$T/gk/key.pem" \
    >>"$T/gk/gatekeeper.toml"
  tls=(--tls)
fi
"$GK_BIN" check -c "$T/gk/gatekeeper.toml" >/dev/null
case $TOOL in
  "") cmd=("$GK_BIN") ;;
  massif) cmd=(valgrind --tool=massif --massif-out-file="$T/massif.out" "$GK_BIN") ;;
  dhat) cmd=(valgrind --tool=dhat --dhat-out-file="$T/dhat.json" "$GK_BIN") ;;
  *) echo "TOOL must be massif or dhat" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086 # GK_ENV is a list of NAME=value words
env ${GK_ENV:-} "${cmd[@]}" run -c "$T/gk/gatekeeper.toml" >"$T/gk/out.log" 2>&1 &
GK=$!
PIDS=("$GK" "${PIDS[@]}")
for ((n = 0; n < 600; n++)); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$P_GK/" && break
  kill -0 "$GK" 2>/dev/null || { cat "$T/gk/out.log" >&2; exit 1; }
  sleep 0.1
done
sleep 1
# valgrind runs the program as the same process (exec), so $GK is the one to read.
after=()
if [[ $TOOL == massif ]]; then
  # one detailed snapshot after each round: what is live then, by allocation stack (ms_print)
  after=(--after-round "vgdb --pid={pid} detailed_snapshot $T/massif.round{round}")
elif [[ -n ${HEAP:-} ]]; then
  # malloc_stats() prints to the daemon's stderr ($T/gk/out.log); gdb stops it for a moment.
  # TRIM=1: malloc_trim(0) first, as the daemon could call it after a wave of connections.
  trim=""
  [[ -n ${TRIM:-} ]] && trim="-ex 'call (int) malloc_trim(0)'"
  after=(--after-round "gdb -p {pid} -batch $trim -ex 'call (void) malloc_stats()'; grep VmRSS /proc/{pid}/status >>$T/rss.after")
fi
python3 "$HERE/idle_conns.py" --port "${P_TLS:-$P_GK}" "${tls[@]}" --pid "$GK" -n "$CONNS" --rounds "$ROUNDS" --settle 1 \
  "${after[@]}" \
  >"$T/rounds.json"
cat "$T/rounds.json"
if [[ -n ${HEAP:-} ]]; then
  python3 - "$T/rounds.json" "$T/gk/out.log" "$T/rss.after" <<'EOF' >&2
import json, re, sys
rounds = json.load(open(sys.argv[1]))["rounds"]
log = open(sys.argv[2]).read()
after = [int(l.split()[1]) for l in open(sys.argv[3])]
# The "Total (incl. mmap)" block of each malloc_stats() call.
totals = re.findall(r"Total \(incl\. mmap\):\s*system bytes\s*=\s*(\d+)\s*in use bytes\s*=\s*(\d+)", log)
arenas = [len(re.findall(r"^Arena \d+:", part, re.M)) for part in log.split("Total (incl. mmap)")[:-1]]
print("round | RSS, connections open | RSS, all closed | malloc: in use | malloc: held (system bytes) | arenas "
      "| RSS after malloc_stats (and malloc_trim) | fds left (listeners, pooled upstream connections)")
for r, (held, used), n, rss in zip(rounds, totals, arenas, after):
    print(f"{r['round']:5} | {r['rss_kib'] / 1024:8.1f} MiB | {r['rss_closed_kib'] / 1024:8.1f} MiB | "
          f"{int(used) / 1048576:8.1f} MiB | {int(held) / 1048576:8.1f} MiB | {n} | {rss / 1024:8.1f} MiB | {r['fds_closed']}")
EOF
fi
