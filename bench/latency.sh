#!/usr/bin/env bash
# The latency distribution at many connections: nginx and gatekeeper variants
# (runtime settings given as environment, read by each worker: see src/ab.rs)
# proxying to the same nginx `return 200`, `wrk --latency` at CONNS connections,
# rounds interleaved; p50/p90/p99/p99.9 of each run (wrk's own histogram, from
# bench/report.lua), then medians over rounds and ratios to nginx.
#
#   bench/latency.sh                                  # nginx, gatekeeper as built
#   bench/latency.sh "GATEKEEPER_EVENT_INTERVAL=16" "GATEKEEPER_EVENT_INTERVAL=128"
#   PIN=1 CONNS=512 ROUNDS=5 bench/latency.sh ...     # pinned: proxies on CPU 1, one worker
#
# Each argument is one more gatekeeper variant: space-separated VAR=VALUE pairs.
# Needs nginx, wrk, curl, python3 and the release build. Loopback only; bounded:
# ROUNDS × (2 + variants) runs of DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-512}
BIN=${GATEKEEPER_BIN:-target/release/gatekeeper}
# shellcheck source=bench/configs.sh
source bench/configs.sh
pin_setup
need nginx wrk curl python3
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin gatekeeper" >&2; exit 1; }
VARIANTS=("" "$@")

workdir latency

start_upstream "$W/up" "${ON_LOAD[@]}"

# one LABEL ENV : one wrk run against a fresh proxy; appends a line to results
one() {
    local label=$1 envs=$2 port d
    port=$(free_port)
    d="$W/p$port"
    mkdir -p "$d"
    if [ "$label" = nginx ]; then
        nginx_proxy_conf "$d" "$port" "$UP" > "$d/nginx.conf"
        "${ON_PROXY[@]}" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g "daemon off;" &
    else
        gk_plain_conf "$port" "$UP" "$d" "$WORKERS" > "$d/gk.toml"
        # shellcheck disable=SC2086 # ENV is word-split on purpose: VAR=VALUE pairs
        env $envs "${ON_PROXY[@]}" "$BIN" run -c "$d/gk.toml" >/dev/null 2>&1 &
    fi
    PROXY_PID=$!
    wait_up "$port"
    "${ON_LOAD[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s bench/report.lua \
        "http://127.0.0.1:$port/" > "$d/wrk.out" 2>&1 || true
    kill "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
    local lat
    # WRK requests duration_us ... p50_us p99_us max_us p90_us p999_us (bench/report.lua)
    lat=$(awk '/^WRK / { printf "%.0f\t%.3f\t%.3f\t%.3f\t%.3f", $2 / ($3 / 1e6), $9 / 1000, $12 / 1000, $10 / 1000, $13 / 1000 }' "$d/wrk.out")
    [ -n "$lat" ] || { cat "$d/wrk.out" >&2; echo "wrk failed for $label" >&2; exit 1; }
    printf '%s\t%s\n' "$label" "$lat" >> "$W/results"
}

echo "# conns=$CONNS rounds=$ROUNDS duration=${DURATION}s workers=$WORKERS pin=${PIN:-0} load: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$W/results"
for r in $(seq 1 "$ROUNDS"); do
    n=$(( ${#VARIANTS[@]} + 1 ))
    for i in $(seq 0 $((n - 1))); do
        k=$(( (i + r) % n )) # rotate the order each round
        if [ "$k" = 0 ]; then one nginx ""; else v=${VARIANTS[$((k - 1))]}; one "gatekeeper ${v:-(default)}" "$v"; fi
    done
done

python3 - "$W/results" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, *vals = line.rstrip("\n").split("\t")
    rows[label].append([float(v) for v in vals])
med = {k: [statistics.median(c) for c in zip(*v)] for k, v in rows.items()}
ref = med.get("nginx")
print(f"\n{'target':<48}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'p99 vs nginx':>14}")
for k, (rps, p50, p90, p99, p999) in med.items():
    vs = f"{p99 / ref[3]:.2f}x" if ref and ref[3] else "-"
    print(f"{k:<48}{rps:>9.0f}{p50:>9.2f}{p90:>9.2f}{p99:>9.2f}{p999:>10.2f}{vs:>14}")
EOF
