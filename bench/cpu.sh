#!/usr/bin/env bash
# CPU time per proxied request, every thread of the proxy, user and kernel:
# on-CPU nanoseconds from /proc/<pid>/task/*/schedstat (exact, not tick-sampled)
# before and after one `wrk -t2 -c64`, divided by wrk's request count. nginx,
# HAProxy, gatekeeper and the hyper floor (bench/hyper_floor.rs, also with its
# hand-written upstream side: floor-raw) each proxy to the same local nginx
# `return 200`; every round starts each proxy afresh on a fresh port, in turn.
# Prints each round, then medians and same-round ratios to nginx: the machine's
# speed drifts between rounds, the ratio within a round much less.
#
#   bench/cpu.sh              # 8 rounds × 4 s per proxy (~4 minutes)
#   ROUNDS=3 DURATION=3 bench/cpu.sh
#
# Needs nginx, haproxy, wrk, curl, python3 (bench/run.sh installs them) and the
# release builds (`cargo build --release --bin gatekeeper --example hyper_floor`).
# Loopback only; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-4}
BIN=${GATEKEEPER_BIN:-target/release/gatekeeper}
FLOOR=${FLOOR_BIN:-target/release/examples/hyper_floor}
TARGETS=(nginx haproxy gatekeeper floor floor-raw)
# shellcheck source=bench/configs.sh
source bench/configs.sh
need nginx haproxy wrk curl python3
[ -x "$BIN" ] && [ -x "$FLOOR" ] || { echo "build first: cargo build --release --bin gatekeeper --example hyper_floor" >&2; exit 1; }

workdir cpu

start_upstream "$W/up"

# The proxies' configs, as bench/run.sh writes them: two workers each.
proxy_configs() {
    local port=$1 d="$W/p$1"
    mkdir -p "$d/toggle"
    nginx_proxy_conf "$d" "$port" "$UP" > "$d/nginx.conf"
    haproxy_conf "$d" "$port" "$UP" > "$d/haproxy.cfg"
    gk_plain_conf "$port" "$UP" "$d" > "$d/gatekeeper.toml"
}

echo "round target req/s cpu_us_per_request" > "$W/results"
for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        port=$(free_port)
        proxy_configs "$port"
        d="$W/p$port"
        case $t in
            nginx) nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g "daemon off;" & ;;
            haproxy) haproxy -db -f "$d/haproxy.cfg" >/dev/null 2>&1 & ;;
            gatekeeper) "$BIN" run -c "$d/gatekeeper.toml" >/dev/null 2>&1 & ;;
            floor) "$FLOOR" "127.0.0.1:$port" "127.0.0.1:$UP" 2 & ;;
            floor-raw) "$FLOOR" "127.0.0.1:$port" "127.0.0.1:$UP" 2 raw & ;;
        esac
        PROXY_PID=$!
        wait_up "$port"
        before=$(cpu_ns "$PROXY_PID")
        out=$(wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$port/")
        after=$(cpu_ns "$PROXY_PID")
        n=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        us=$(awk -v d=$((after - before)) -v n="$n" 'BEGIN { printf "%.2f", d / n / 1000 }')
        echo "$r $t $rps $us" | tee -a "$W/results"
        kill "$PROXY_PID"
        wait "$PROXY_PID" 2>/dev/null || true
        PROXY_PID=""
    done
done

python3 - "$W/results" <<'EOF'
import collections, statistics, sys
cpu, rps = collections.defaultdict(dict), collections.defaultdict(dict)
for line in open(sys.argv[1]).readlines()[1:]:
    r, t, q, us = line.split()
    cpu[t][r], rps[t][r] = float(us), float(q)
print("\n             CPU µs per request       same round vs nginx")
print("target       median  range           CPU    req/s")
for t in cpu:
    c = list(cpu[t].values())
    ratio_cpu = statistics.median(cpu[t][r] / cpu["nginx"][r] for r in cpu[t])
    ratio_rps = statistics.median(rps[t][r] / rps["nginx"][r] for r in rps[t])
    spread = f"{min(c):.1f}-{max(c):.1f}"
    print(f"{t:12} {statistics.median(c):6.1f}  {spread:14}  {ratio_cpu:4.2f}x  {ratio_rps:4.2f}x")
EOF
