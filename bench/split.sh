#!/usr/bin/env bash
# Where a proxied request's CPU goes: user and kernel time per request,
# gatekeeper against the hyper floor (bench/hyper_floor.rs), pinned: each proxy
# alone on CPU 1 with one worker, wrk and the upstream on CPU 0, so each proxy
# runs its core flat out and its own time is all there is on it. User and
# system time come from /proc/<pid>/stat (clock ticks: ~500 per round), page
# faults too; with perf installed, one more short round per proxy counts the
# system calls per request (tracepoints). Rounds alternate between the two.
# `load %` is how much of CPU 0 wrk itself used (schedstat, the middle of the
# round): near 100 %, the load generator, not the proxy, sets the rate.
#
#   bench/split.sh                # 4 rounds × 5 s each, 64 connections
#   ROUNDS=6 CONNS=512 bench/split.sh
#   TARGET=page bench/split.sh    # the maintenance page: gatekeeper against
#                                 # nginx's (bench/run.sh's page configuration)
#
# Needs nginx, wrk, curl, taskset, python3 and the release builds; perf is
# optional. Loopback only; bounded: ROUNDS × 2 runs of DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-5}
[ "$DURATION" -ge 3 ] || { echo "DURATION: 3 seconds at least" >&2; exit 1; }
CONNS=${CONNS:-64}
TARGET=${TARGET:-proxied}
BIN=${GATEKEEPER_BIN:-target/release/gatekeeper}
FLOOR=${FLOOR_BIN:-target/release/examples/hyper_floor}
# shellcheck source=bench/configs.sh
source bench/configs.sh
need nginx wrk curl python3
# Always pinned: the proxy alone on its core (PROXY_CPU, default 1), the load on LOAD_CPU (0).
PIN=1 pin_setup
for b in "$BIN" "$FLOOR"; do
    [ -x "$b" ] || { echo "$b: build first: cargo build --release --bin gatekeeper --example hyper_floor" >&2; exit 1; }
done
TICK=$(getconf CLK_TCK)

workdir split
if [ "$TARGET" = page ]; then
    OTHER=nginx
    UP=1 # never reached: every request gets the page
    mkdir -p "$W/toggle" "$W/ngx"
    touch "$W/toggle/maintenance-mode-on"
else
    OTHER=floor
    start_upstream "$W/up" "${ON_LOAD[@]}"
fi

# start TARGET PORT: the proxy on its core with one worker; sets PROXY_PID, and WORK_PID:
# the process that does the work (nginx's worker, not its master)
start() {
    if [ "$1" = gatekeeper ]; then
        gk_plain_conf "$2" "$UP" "$W" "$WORKERS" "$PWD/static" >"$W/gk.toml"
        "${ON_PROXY[@]}" "$BIN" run -c "$W/gk.toml" >/dev/null 2>&1 &
    elif [ "$1" = nginx ]; then
        nginx_page_conf "$W/ngx" "$2" "$PWD/static" >"$W/ngx/nginx.conf"
        "${ON_PROXY[@]}" nginx -e "$W/ngx/error.log" -p "$W/ngx" -c "$W/ngx/nginx.conf" -g "daemon off;" &
    else
        "${ON_PROXY[@]}" "$FLOOR" "127.0.0.1:$2" "127.0.0.1:$UP" "$WORKERS" >/dev/null 2>&1 &
    fi
    PROXY_PID=$!
    wait_up "$2"
    WORK_PID=$PROXY_PID
    if [ "$1" = nginx ]; then WORK_PID=$(pgrep -P "$PROXY_PID" | head -1); fi
    "${ON_LOAD[@]}" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$2/" >/dev/null
}

stop() {
    kill "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
}

# run TARGET: prints "req/s user_us sys_us faults load_%" per request, one round
run() {
    local port u0 s0 f0 u1 s1 f1 n wrk_pid l0 l1
    port=$(free_port)
    start "$1" "$port"
    read -r f0 u0 s0 < <(awk '{print $10, $14, $15}' /proc/"$WORK_PID"/stat)
    "${ON_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" >"$W/wrk.out" &
    wrk_pid=$!
    sleep 1
    l0=$(cpu_ns "$wrk_pid")
    sleep $((DURATION - 2))
    l1=$(cpu_ns "$wrk_pid")
    wait "$wrk_pid"
    n=$(awk '/requests in/ {print $1}' "$W/wrk.out")
    read -r f1 u1 s1 < <(awk '{print $10, $14, $15}' /proc/"$WORK_PID"/stat)
    stop
    awk -v n="$n" -v d="$DURATION" -v t="$TICK" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v f=$((f1 - f0)) \
        -v l=$((l1 - l0)) -v ld=$((DURATION - 2)) \
        'BEGIN { printf "%.0f %.2f %.2f %.3f %.0f\n", n / d, u / t * 1e6 / n, s / t * 1e6 / n, f / n, l / ld / 1e7 }'
}

echo "# target=$TARGET conns=$CONNS rounds=$ROUNDS duration=${DURATION}s load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round target req/s user_us sys_us faults load_%" | tee "$W/results"
for i in $(seq 1 "$ROUNDS"); do
    order="gatekeeper $OTHER"
    [ $((i % 2)) = 0 ] && order="$OTHER gatekeeper"
    for t in $order; do
        echo "$i $t $(run "$t")" | tee -a "$W/results"
    done
done

python3 - "$W/results" "$OTHER" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).readlines()[1:]]
print("\nper request, medians:")
for t in ("gatekeeper", sys.argv[2]):
    r = [list(map(float, x[2:])) for x in rows if x[1] == t]
    med = [statistics.median(c) for c in zip(*r)]
    print(f"  {t:<11} {med[0]:8.0f} req/s  user {med[1]:5.2f} us  kernel {med[2]:5.2f} us  "
          f"total {med[1] + med[2]:5.2f} us  faults {med[3]:.3f}  wrk's core {med[4]:.0f} %")
EOF

# System calls per request, one short round each (tracing costs throughput, not calls).
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
    echo
    echo "system calls per request (perf stat, tracepoints):"
    for t in gatekeeper $OTHER; do
        port=$(free_port)
        start "$t" "$port"
        events=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait
        perf stat -x, -e "$events" -p "$WORK_PID" -o "$W/perf.$t" -- sleep 3 &
        perf_pid=$!
        n=$("${ON_LOAD[@]}" wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
        wait "$perf_pid" || true
        stop
        awk -F, -v n="$n" -v t="$t" '/sys_enter/ { split($3, e, ":"); s = s sprintf(" %s %.2f", e[2], $1 / n) }
            END { printf "  %-11s%s\n", t, s }' "$W/perf.$t"
    done
fi
