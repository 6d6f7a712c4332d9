#!/usr/bin/env bash
# Deterministic handshake costs of one gateway build, with both kinds of client (`--close
# wait`: a browser's close; `--close leave`: its Close, then the socket dropped): system calls
# per handshake (strace -f -c on every thread of the gateway, N handshakes of one 64-byte
# echo, 64 in flight, 2 s for the teardowns) and allocations per handshake (valgrind's DHAT,
# runs of 200 and 1,200 handshakes: (run of 1,200 - run of 200) / 1,000, so start-up cancels
# out). The method of bench/README.md's "Handshake cost" sections. Loopback only, bounded.
# Usage: [BIN_DIR=dir of wsload and wsbackend] bench/handshake-counts.sh [gateway-bin] [handshakes]
# (DHAT=0 skips the allocations)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
gateway=${1:-$bin/gateway-bin} count=${2:-2000}
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for i in 1 2 3; do "$bin/wsbackend" --id "backend-$i" --listen "127.0.0.1:1810$i" >/dev/null 2>&1 & pids+=($!); done
backends=(--backend b1=127.0.0.1:18101 --backend b2=127.0.0.1:18102 --backend b3=127.0.0.1:18103)
url='ws://127.0.0.1:18000/connect/{user}?userId={user}'
sleep 0.5

for close in wait leave; do
  RUST_LOG=warn "$gateway" --workers 2 --public 127.0.0.1:18000 --admin 127.0.0.1:18001 run "${backends[@]}" \
    >/dev/null 2>&1 & gw=$!
  sleep 1
  strace -f -c -S calls -o "$tmp/strace-$close.txt" $(for t in /proc/$gw/task/*; do echo -p "${t##*/}"; done) \
    2>/dev/null & tracer=$!
  sleep 1
  "$bin/wsload" --url "$url" --connections "$count" --messages 1 --size 64 --close "$close" \
    --time-limit 300 --label "$close" >"$tmp/load-$close.txt"
  sleep 2
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  kill "$gw"; wait "$gw" 2>/dev/null || true
done

if [ "${DHAT:-1}" = 1 ]; then
  for close in wait leave; do
    for n in 200 1200; do
      # Logging as in the strace runs and compare.sh: at the default (info) every handshake's
      # spans are formatted too (about 14 allocations more).
      RUST_LOG=warn valgrind --tool=dhat --dhat-out-file="$tmp/dhat-$close-$n.json" "$gateway" --workers 2 \
        --public 127.0.0.1:18000 --admin 127.0.0.1:18001 run "${backends[@]}" >/dev/null 2>&1 & gw=$!
      for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18000) 2>/dev/null && break; sleep 0.2; done
      "$bin/wsload" --url "$url" --connections "$n" --messages 1 --size 64 --close "$close" \
        --time-limit 600 --label "dhat-$close" >/dev/null
      sleep 2
      kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
    done
  done
fi

python3 - "$tmp" "$count" <<'PY'
import json, os, re, sys
tmp, count = sys.argv[1], int(sys.argv[2])
def calls(close):
    out = {}
    for line in open(os.path.join(tmp, f"strace-{close}.txt")):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)?\s*(\w+)$", line)
        if m and m[3] != "total":
            out[m[3]] = (int(m[1]), int(m[2] or 0))
    return out
per = {c: calls(c) for c in ("wait", "leave")}
names = sorted(set(per["wait"]) | set(per["leave"]), key=lambda n: -max(per[c].get(n, (0, 0))[0] for c in per))
loop = {"epoll_wait", "write", "futex", "mprotect", "brk", "madvise", "mmap", "munmap", "clock_gettime"}
print(f"System calls per handshake ({count} handshakes; failed calls in brackets):")
print("| call | wait | leave |")
print("|---|---|---|")
def cell(c, n):
    k, e = per[c].get(n, (0, 0))
    return f"{k / count:.2f}" + (f" ({e / count:.2f} failed)" if e else "") if k else "-"
for n in names:
    print(f"| {n} | {cell('wait', n)} | {cell('leave', n)} |")
tot = {c: sum(k for k, _ in per[c].values()) / count for c in per}
core = {c: sum(k for n, (k, _) in per[c].items() if n not in loop) / count for c in per}
print(f"| **total** | **{tot['wait']:.1f}** | **{tot['leave']:.1f}** |")
print(f"| without epoll_wait, eventfd writes, futex, clock and memory calls | {core['wait']:.1f} | {core['leave']:.1f} |")
def dhat(close, n):
    path = os.path.join(tmp, f"dhat-{close}-{n}.json")
    if not os.path.exists(path):
        return None
    pps = json.load(open(path))["pps"]
    # DHAT's "tbk": total blocks (allocations), "tb": total bytes.
    return sum(p["tbk"] for p in pps), sum(p["tb"] for p in pps)
rows = []
for close in ("wait", "leave"):
    a, b = dhat(close, 200), dhat(close, 1200)
    if a and b:
        rows.append(f"| {close} | {(b[0] - a[0]) / 1000:.1f} | {(b[1] - a[1]) / 1000:,.0f} |")
if rows:
    print()
    print("Allocations per handshake (DHAT, (run of 1,200 - run of 200) / 1,000):")
    print("| client | allocations | bytes allocated |")
    print("|---|---|---|")
    print("\n".join(rows))
PY
