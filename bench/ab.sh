#!/usr/bin/env bash
# A/B of one change, same binary: GATEKEEPER_AB=<A> against GATEKEEPER_AB=<B>
# (a bit mask read once per worker thread, src/ab.rs: a set bit runs the old side
# of the change it names). Each pair runs A and B in turn, the order alternating
# pair to pair, each a fresh gatekeeper on a fresh port in front of the same local
# nginx `return 200`, under one `wrk -t2 -c64`; CPU per request is every thread
# of gatekeeper, user and kernel, from /proc/<pid>/task/*/schedstat (as
# bench/cpu.sh). Prints each pair, then the median B/A ratio and a two-sided sign
# test: how often B cost less than A, and how likely that count is if the change
# made no difference. Single effects of 2-3 % are below one round's noise; they
# take pairs, not a longer round.
#
#   bench/ab.sh 0 1              # A = the kept code, B = the old side of bit 1
#   PAIRS=30 DURATION=3 bench/ab.sh 0 7
#   TARGET=page bench/ab.sh 0 1  # the maintenance page instead of the proxied path
#
# Needs nginx, wrk, curl, python3 (bench/run.sh installs them) and the release
# build. Loopback only; bounded: PAIRS × 2 runs of DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
A=${1:?usage: bench/ab.sh A_BITS B_BITS}
B=${2:?usage: bench/ab.sh A_BITS B_BITS}
PAIRS=${PAIRS:-30}
DURATION=${DURATION:-3}
CONNS=${CONNS:-64}
TARGET=${TARGET:-proxied}
BIN=${GATEKEEPER_BIN:-target/release/gatekeeper}
for cmd in nginx wrk curl python3; do
    command -v "$cmd" >/dev/null || { echo "$cmd is not installed" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin gatekeeper" >&2; exit 1; }

W=$(mktemp -d /tmp/gatekeeper-ab.XXXXXX)
UP_PID="" GK_PID=""
cleanup() {
    for p in $GK_PID $UP_PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT

# shellcheck source=bench/configs.sh
source bench/configs.sh
UP=$(free_port)
mkdir -p "$W/up" "$W/toggle"
upstream_conf "$W/up" "$UP" > "$W/up/nginx.conf"
nginx -e "$W/up/error.log" -p "$W/up" -c "$W/up/nginx.conf" -g "daemon off;" &
UP_PID=$!
[ "$TARGET" = page ] && touch "$W/toggle/maintenance-mode-on"

cpu_ns() {
    local t ns _ total=0
    for t in /proc/"$1"/task/*; do
        read -r ns _ < "$t/schedstat" 2>/dev/null || continue
        total=$((total + ns))
    done
    echo "$total"
}

# run BITS: prints "req/s cpu_us_per_request" of one round
run() {
    local port
    port=$(free_port)
    cat > "$W/gk.toml" <<EOF
listen = ["127.0.0.1:$port"]
[upstream]
url = "http://127.0.0.1:$UP"
[maintenance]
toggle = "$W/toggle/maintenance-mode-on"
[log]
access = false
level = "warn"
EOF
    GATEKEEPER_AB=$1 "$BIN" run -c "$W/gk.toml" >/dev/null 2>&1 &
    GK_PID=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    local before after out n rps
    before=$(cpu_ns "$GK_PID")
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/")
    after=$(cpu_ns "$GK_PID")
    kill "$GK_PID"
    wait "$GK_PID" 2>/dev/null || true
    GK_PID=""
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    awk -v d=$((after - before)) -v n="$n" -v r="$rps" 'BEGIN { printf "%s %.3f\n", r, d / n / 1000 }'
}

for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.1; done
echo "# A=$A B=$B target=$TARGET pairs=$PAIRS duration=${DURATION}s conns=$CONNS load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pair a_rps a_us b_rps b_us" > "$W/results"
for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then a=$(run "$A"); b=$(run "$B"); else b=$(run "$B"); a=$(run "$A"); fi
    echo "$i $a $b" | tee -a "$W/results"
done

python3 - "$W/results" "$A" "$B" <<'EOF'
import math, statistics, sys
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1]).readlines()[1:]]
cpu = [b_us / a_us for _, a_us, _, b_us in rows]
rps = [b_r / a_r for a_r, _, b_r, _ in rows]
n, lower = len(cpu), sum(r < 1 for r in cpu)
# Two-sided sign test: P(a count at least this far from n/2 | no difference).
k = min(lower, n - lower)
p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
print(f"\nB ({sys.argv[3]}) / A ({sys.argv[2]}) over {n} pairs:")
print(f"  CPU per request: median {statistics.median(cpu):.3f}x (B cheaper in {lower} of {n}; sign test p = {p:.3g})")
print(f"  req/s:           median {statistics.median(rps):.3f}x")
print(f"  A: {statistics.median(r[1] for r in rows):.2f} us/request, B: {statistics.median(r[3] for r in rows):.2f} us/request (medians)")
EOF
