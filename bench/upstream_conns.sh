#!/usr/bin/env bash
# How many upstream connections each proxy opens and keeps, and what that costs
# the app: nginx, HAProxy (`http-reuse always`) and gatekeeper in front of the
# same nginx `return 200` (1 worker), under `wrk -c 64` and `-c 512`. For each:
# connections the app accepted during the run (its stub_status), the most held
# open at once (`ss`, sampled every 0.5 s), the app's CPU per request (schedstat)
# and the proxy's req/s.
#
#   bench/upstream_conns.sh             # 2 workers per proxy, 5 s per run
#   PIN=1 bench/upstream_conns.sh       # proxies on CPU 1 with one worker; the rest on CPU 0
#
# Needs nginx, haproxy, wrk, curl, python3, ss (iproute2) and the release build.
# Loopback only; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
DURATION=${DURATION:-5}
BIN=${GATEKEEPER_BIN:-target/release/gatekeeper}
# shellcheck source=bench/configs.sh
source bench/configs.sh
pin_setup
need nginx haproxy wrk curl python3 ss
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin gatekeeper" >&2; exit 1; }

workdir upconns

start_upstream "$W/up" "${ON_LOAD[@]}"

accepts() { curl -s "http://127.0.0.1:$UP/.upstream-status" | awk 'NR == 3 { print $1 }'; }

printf '%-11s %6s %10s %16s %14s %18s\n' proxy conns req/s "app accepted" "most open" "app CPU us/req"
for conns in 64 512; do
    for t in nginx haproxy gatekeeper; do
        port=$(free_port)
        d="$W/$t$conns"
        mkdir -p "$d"
        case $t in
            nginx)
                nginx_proxy_conf "$d" "$port" "$UP" > "$d/nginx.conf"
                "${ON_PROXY[@]}" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g "daemon off;" & ;;
            haproxy)
                haproxy_conf "$d" "$port" "$UP" > "$d/haproxy.cfg"
                "${ON_PROXY[@]}" haproxy -db -f "$d/haproxy.cfg" >/dev/null 2>&1 & ;;
            gatekeeper)
                gk_plain_conf "$port" "$UP" "$d" "$WORKERS" > "$d/gk.toml"
                "${ON_PROXY[@]}" "$BIN" run -c "$d/gk.toml" >/dev/null 2>&1 & ;;
        esac
        PROXY_PID=$!
        wait_up "$port"
        a0=$(accepts)
        c0=$(cpu_ns "$UP_PID")
        "${ON_LOAD[@]}" wrk -t2 -c"$conns" -d"${DURATION}s" "http://127.0.0.1:$port/" > "$d/wrk.out" &
        wrk_pid=$!
        most=0
        for _ in $(seq 1 $((DURATION * 2 + 4))); do
            kill -0 "$wrk_pid" 2>/dev/null || break
            n=$(ss -Htn state established "( dport = :$UP )" | wc -l)
            [ "$n" -gt "$most" ] && most=$n
            sleep 0.5
        done
        wait "$wrk_pid"
        c1=$(cpu_ns "$UP_PID")
        a1=$(accepts)
        kill "$PROXY_PID"
        wait "$PROXY_PID" 2>/dev/null || true
        PROXY_PID=""
        n=$(awk '/requests in/ {print $1}' "$d/wrk.out")
        rps=$(awk '/Requests\/sec/ {print $2}' "$d/wrk.out")
        us=$(awk -v d=$((c1 - c0)) -v n="$n" 'BEGIN { printf "%.2f", d / n / 1000 }')
        printf '%-11s %6s %10s %16s %14s %18s\n' "$t" "$conns" "$rps" "$((a1 - a0))" "$most" "$us"
    done
done
