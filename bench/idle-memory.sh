#!/usr/bin/env bash
# RSS per idle WebSocket, A/B on loopback: each round starts every given gateway binary fresh
# (2 workers, 3 reference backends), reads its anonymous RSS, opens N WebSockets that then stay idle,
# reads the RSS again 2 s after the last handshake, and reports (during - before) / N. Rounds
# interleave the binaries, the order alternating; medians at the end. Bounded: fixed counts,
# time limits. Ports PORT_BASE..+1 and +101..+103 (default 19000). WARM="connections messages"
# first runs that echo load through the fresh gateway (as bench/compare.sh's idle step
# follows its echo rounds), so the hold reuses what the load freed.
# Usage: [NO_BUILD=1] bench/idle-memory.sh [rounds] [connections] [gateway-bin ...]
# (default: this build; NO_BUILD=1 takes the tools as they are in the target directory)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3} count=${2:-9000}
shift $(( $# >= 2 ? 2 : $# ))
base=${PORT_BASE:-19000}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p gateway-bin -p reference-backend -p wscluster-tools --bins
bin=${CARGO_TARGET_DIR:-target}/release
gateways=("$@"); [ ${#gateways[@]} -gt 0 ] || gateways=("$bin/gateway-bin")
# Two descriptors per connection in the gateway, one per connection in wsload.
ulimit -n "$(ulimit -Hn)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
backends=()
for i in 1 2 3; do
  "$bin/wsbackend" --id "b$i" --listen "127.0.0.1:$(( base + 100 + i ))" >/dev/null 2>&1 & pids+=($!)
  backends+=(--backend "b$i=127.0.0.1:$(( base + 100 + i ))")
done
url="ws://127.0.0.1:$base/connect/{user}?userId={user}"
# Anonymous memory only: the binary's file-backed pages come and go with the page cache (a
# reclaim during the hold would show as negative growth), and none of them is per connection.
rss_kb() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
results=$(mktemp) out=$(mktemp)
for round in $(seq "$rounds"); do
  order=("${gateways[@]}")
  if (( round % 2 == 0 )); then for i in "${!gateways[@]}"; do order[i]=${gateways[-1 - i]}; done; fi
  for gateway in "${order[@]}"; do
    RUST_LOG=warn "$gateway" --workers 2 --public "127.0.0.1:$base" --admin "127.0.0.1:$(( base + 1 ))" \
      run "${backends[@]}" >/dev/null 2>&1 &
    gw=$!
    sleep 1
    # Listening with SO_REUSEPORT, a gateway shares its port with any other process bound
    # there: its 2 listeners must be the only ones, or it would get part of the connections.
    listeners=$(ss -ltnH "sport = :$base" | wc -l)
    if [ "$listeners" -ne 2 ]; then
      echo "round $round $gateway: skipped, $listeners listeners on port $base" | tee -a "$results"
      kill "$gw"; wait "$gw" 2>/dev/null || true
      continue
    fi
    if [ -n "${WARM:-}" ]; then
      read -r warm_conns warm_msgs <<<"$WARM"
      "$bin/wsload" --url "$url" --connections "$warm_conns" --messages "$warm_msgs" --time-limit 120 \
        --label warm >/dev/null
      sleep 1
    fi
    before=$(rss_kb "$gw")
    "$bin/wsload" --url "$url" --connections "$count" --hold 8 --time-limit 120 --label idle >"$out" &
    loader=$!
    wait_for_hold "$out" "$loader" 1200
    during=$(rss_kb "$gw")
    wait "$loader" || true
    kill "$gw"; wait "$gw" 2>/dev/null || true
    echo "round $round $gateway: $(( (during - before) * 1024 / count )) B per idle WebSocket (RSS $before -> $during KiB); $(tail -1 "$out")" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+): (\d+) B", line)
    if m:
        rows.setdefault(m.group(1), []).append(int(m.group(2)))
for gateway, values in rows.items():
    print(f"{gateway}: median {statistics.median(values):.0f} B per idle WebSocket ({values})")
PY
rm -f "$results" "$out"
