#!/usr/bin/env bash
# A ring change under load, on loopback: N WebSockets over 4 reference backends with echo
# traffic, then a 5th backend joins with pacing off. wsmigrate reports how long until every
# affected connection is on its new owner, messages lost, and unaffected connections touched.
# Rounds are repeated on a fresh gateway each; every run is bounded in count and time.
# Usage: [BIN_DIR=path] bench/migrate.sh [rounds] [connections] [rate per connection] [policy: live|reconnect]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} conns=${2:-9000} rate=${3:-1} policy=${4:-live}
# The gateway holds two descriptors per connection: 9000 fits under a 20,000 hard limit.
# BIN_DIR=<another build's target/release> runs that build instead (before/after comparisons).
if [ -z "${BIN_DIR:-}" ]; then cargo build --release -q -p gateway-bin -p reference-backend -p wscluster-tools --bins; fi
bin=${BIN_DIR:-target/release}
ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

for i in 1 2 3 4 5; do
  "$bin/wsbackend" --id "backend-$i" --listen "127.0.0.1:1720$i" >"$tmp/backend-$i.log" 2>&1 & pids+=($!)
done
cat >"$tmp/gateway.toml" <<CONF
[listen]
public = "127.0.0.1:17200"
admin = "127.0.0.1:17210"
[migration]
policy = "$policy"
pacing = { rate = 0 }
CONF
echo "machine: $(nproc) cores; $conns connections at $rate msg/s each over 4 backends, add a 5th; policy $policy, pacing off"
for round in $(seq "$rounds"); do
  RUST_LOG=warn "$bin/gateway-bin" --config "$tmp/gateway.toml" run \
    --backend backend-1=127.0.0.1:17201 --backend backend-2=127.0.0.1:17202 \
    --backend backend-3=127.0.0.1:17203 --backend backend-4=127.0.0.1:17204 \
    >"$tmp/gateway.log" 2>&1 & gateway=$!
  sleep 1
  echo "-- round $round"
  "$bin/wsmigrate" --url "ws://127.0.0.1:17200/connect/{user}" --admin 127.0.0.1:17210 \
    --connections "$conns" --rate "$rate" --warmup 3 --after 5 --add backend-5=127.0.0.1:17205 \
    --time-limit 120 || true
  grep -o 'why=[^=]*' "$tmp/gateway.log" | sed 's/ [a-z_]*$//' | sort | uniq -c | sed 's/^/  fell back: /' || true
  kill "$gateway"; wait "$gateway" 2>/dev/null || true
  sleep 1
done
