#!/usr/bin/env bash
# An app restart under load: 64 connections (wrk) through gatekeeper to
# bench/syncapp.py; the app is stopped at 5 s and started again DOWN s later.
#
#   bench/restart.sh target/release/gatekeeper 10s     # upstream.wait = "10s"
#   bench/restart.sh target/release/gatekeeper none 2  # no upstream.wait key (older builds)
#   bench/restart.sh target/release/gatekeeper pause   # `gatekeeper pause` before the stop,
#                                                      # `resume` once the app listens again
#
# Needs wrk (apt-get install wrk). Loopback only; every process started here
# is stopped by PID.
set -euo pipefail
BIN=$1 WAIT=$2 DOWN=${3:-2}
WAITLINE=""; [ "$WAIT" != none ] && [ "$WAIT" != pause ] && WAITLINE="wait = \"$WAIT\""
cd "$(dirname "$0")/.."
W=$(mktemp -d /tmp/gk-restart.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); GK=$(free_port); ADM=$(free_port)
mkdir -p "$W/toggle"
cat > "$W/gk.toml" <<EOT
listen = ["127.0.0.1:$GK"]
[upstream]
url = "http://127.0.0.1:$UP"
timeout = "30s"
$WAITLINE
[maintenance]
toggle = "$W/toggle/maintenance-mode-on"
[admin]
listen = "127.0.0.1:$ADM"
[log]
access = ${ACCESS:-false}
level = "warn"
EOT
python3 bench/syncapp.py serve --port "$UP" --workers 16 > "$W/app1.log" 2>&1 & APP=$!
"$BIN" run -c "$W/gk.toml" 2> "$W/gk.log" & GKP=$!
trap 'kill $APP $GKP 2>/dev/null || true' EXIT
# Both up before the load starts: gatekeeper answers 502 while the app is still starting.
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.1; done
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$GK/" && break; sleep 0.1; done
wrk -t 2 -c 64 -d 15s --timeout 20s "http://127.0.0.1:$GK/" > "$W/wrk.txt" & WRK=$!
sleep 5
[ "$WAIT" = pause ] && "$BIN" pause -c "$W/gk.toml" --max 20s > /dev/null
kill -TERM $APP; wait $APP 2>/dev/null || true
T0=$(date +%s.%N)
sleep "$DOWN"
python3 bench/syncapp.py serve --port "$UP" --workers 16 > "$W/app2.log" 2>&1 & APP=$!
T1=$(date +%s.%N)
if [ "$WAIT" = pause ]; then
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.05; done
    "$BIN" resume -c "$W/gk.toml" > /dev/null
fi
wait $WRK
echo "app down for $(python3 -c "print(round($T1-$T0,2))") s (upstream.wait = $WAIT)"
cat "$W/wrk.txt"
curl -s "http://127.0.0.1:$ADM/metrics" | grep -E '^gatekeeper_(upstream_errors|upstream_waits|requests_total\{decision="proxy")' | grep -v ' 0$' || true
kill -TERM $APP $GKP; wait $APP $GKP 2>/dev/null || true
[ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf "$W"
