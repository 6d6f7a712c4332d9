#!/usr/bin/env bash
# Handshake cost A/B on loopback: each round starts every given gateway binary fresh (2
# workers, 3 reference backends), warms it with 1000 handshakes, then opens N WebSockets with
# one echo each and reports the gateway's CPU (user + system, from /proc) per handshake and
# wsload's handshakes/s. Rounds interleave the binaries. Bounded: fixed counts, time limits.
# Usage: bench/handshakes.sh [rounds] [handshakes] [gateway-bin ...]  (default: this build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5} count=${2:-6000}
shift $(( $# >= 2 ? 2 : $# ))
cargo build --release -q -p gateway-bin -p reference-backend -p wscluster-tools --bins
bin=${CARGO_TARGET_DIR:-target}/release
gateways=("$@"); [ ${#gateways[@]} -gt 0 ] || gateways=("$bin/gateway-bin")
ulimit -n "$(ulimit -Hn)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in 1 2 3; do "$bin/wsbackend" --id "backend-$i" --listen "127.0.0.1:1820$i" >/dev/null 2>&1 & pids+=($!); done
hz=$(getconf CLK_TCK)
url='ws://127.0.0.1:18000/connect/{user}?userId={user}'
results=$(mktemp)
for round in $(seq "$rounds"); do
  for gateway in "${gateways[@]}"; do
    RUST_LOG=warn "$gateway" --workers 2 --public 127.0.0.1:18000 --admin 127.0.0.1:18001 run \
      --backend b1=127.0.0.1:18201 --backend b2=127.0.0.1:18202 --backend b3=127.0.0.1:18203 >/dev/null 2>&1 &
    gw=$!
    sleep 0.7
    "$bin/wsload" --url "$url" --connections 1000 --messages 1 --time-limit 60 --label warm >/dev/null
    before=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    out=$("$bin/wsload" --url "$url" --connections "$count" --messages 1 --time-limit 120 --label run)
    after=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    kill "$gw"; wait "$gw" 2>/dev/null || true
    cpu_us=$(( (after - before) * 1000000 / hz / count ))
    rate=$(echo "$out" | awk '{print $4}')
    echo "round $round $gateway: ${cpu_us} µs CPU per handshake, $rate handshakes/s" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+): (\d+) µs CPU per handshake, (\d+) handshakes/s", line)
    if m:
        rows.setdefault(m[1], []).append((int(m[2]), int(m[3])))
print()
print("| gateway | CPU µs / handshake | handshakes/s |")
print("|---|---|---|")
for g, v in rows.items():
    print(f"| {g} | {statistics.median(c for c, _ in v)} | {statistics.median(r for _, r in v)} |")
PY
rm -f "$results"
