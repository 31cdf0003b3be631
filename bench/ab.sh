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
#                                 # (while a change is under test; src/ab.rs lists the bits in use)
#   PAIRS=30 DURATION=3 bench/ab.sh 0 1
#   TARGET=page bench/ab.sh 0 1  # the maintenance page instead of the proxied path
#   GATEKEEPER_BIN_B=/tmp/new bench/ab.sh 0 0   # two builds: B runs the second binary
#                                 # (for a change no switch can select, such as a type's layout)
#   PIN=1 CONNS=512 bench/ab.sh 0 1   # pinned: gatekeeper alone on CPU 1 with one worker,
#                                 # wrk (-t1) and the upstream on CPU 0 (bench/configs.sh pin_setup)
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
BIN_B=${GATEKEEPER_BIN_B:-$BIN}
# shellcheck source=bench/configs.sh
source bench/configs.sh
need nginx wrk curl python3
for b in "$BIN" "$BIN_B"; do
    [ -x "$b" ] || { echo "$b: build first: cargo build --release --bin gatekeeper" >&2; exit 1; }
done

PIN=${PIN:-0} pin_setup
THREADS=2
[ "$PIN" = 1 ] && THREADS=1
workdir ab

start_upstream "$W/up" "${ON_LOAD[@]}"
mkdir -p "$W/toggle"
[ "$TARGET" = page ] && touch "$W/toggle/maintenance-mode-on"

# run BITS BINARY: prints "req/s cpu_us_per_request" of one round
run() {
    local port bin=$2
    port=$(free_port)
    if [ "$PIN" = 1 ]; then
        gk_plain_conf "$port" "$UP" "$W" "$WORKERS" >"$W/gk.toml"
    else
        gk_plain_conf "$port" "$UP" "$W" >"$W/gk.toml"
    fi
    GATEKEEPER_AB=$1 "${ON_PROXY[@]}" "$bin" run -c "$W/gk.toml" >/dev/null 2>&1 &
    PROXY_PID=$!
    wait_up "$port"
    local before after out n rps
    before=$(cpu_ns "$PROXY_PID")
    out=$("${ON_LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/")
    after=$(cpu_ns "$PROXY_PID")
    kill "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    awk -v d=$((after - before)) -v n="$n" -v r="$rps" 'BEGIN { printf "%s %.3f\n", r, d / n / 1000 }'
}

echo "# A=$A ($BIN) B=$B ($BIN_B) target=$TARGET pairs=$PAIRS duration=${DURATION}s conns=$CONNS pin=$PIN load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pair a_rps a_us b_rps b_us" > "$W/results"
for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
        a=$(run "$A" "$BIN")
        b=$(run "$B" "$BIN_B")
    else
        b=$(run "$B" "$BIN_B")
        a=$(run "$A" "$BIN")
    fi
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
