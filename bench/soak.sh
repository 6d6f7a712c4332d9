#!/usr/bin/env bash
# A bounded churn soak of the reference gateway (`gateway-bin demo`) on loopback.
#
# Until the time is up, each round runs at once: a wsload echo run and a wsload
# connect/disconnect run (bounded counts), one ring change through the admin API (a scale-up,
# or a removal that drains the backend's users to their new owners; never fewer than 2
# backends), and wshostile with every kind of hostile client. After a warm-up and a settle it
# records the gateway's open descriptors, RSS and registry size (`connections` of
# GET /admin/ring); at the end it restores the starting backend count, lets the gateway settle
# with no load, records them again and prints both side by side.
#
# Fails (exit 1) if the registry is not back to 0, descriptors are more than FD_TOLERANCE above
# the start, RSS grew by more than RSS_GROWTH_MB, the gateway died, or it no longer serves a
# plain WebSocket afterwards.
#
# Usage: bench/soak.sh [SECONDS=300]
# Environment (defaults): SETTLE=10 (s of no load before each measurement), FD_TOLERANCE=8,
#   RSS_GROWTH_MB=64, LOAD_CONNS=200, LOAD_MESSAGES=20, CHURN_CONNS=300,
#   HOSTILE_CONNS=3 (0: none), HOSTILE_ANSWER_MS=3000 (a slowloris client leaves after this;
#   above the gateway's head deadline it waits to be closed, and rounds last that long),
#   MAX_BACKENDS=6, PUBLIC_PORT=7300, ADMIN_PORT=7301 (the next free pair above is taken if
#   busy), SOAK_KEEP=1 keeps the logs even on success, WSCLUSTER_ADMIN_TOKEN (generated when
#   the gateway supports an admin token and none is given).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-300}
settle=${SETTLE:-10}
fd_tolerance=${FD_TOLERANCE:-8}
rss_growth_mb=${RSS_GROWTH_MB:-64}
load_conns=${LOAD_CONNS:-200}
load_messages=${LOAD_MESSAGES:-20}
churn_conns=${CHURN_CONNS:-300}
hostile_conns=${HOSTILE_CONNS:-3}
hostile_answer_ms=${HOSTILE_ANSWER_MS:-3000}
hostile_seconds=$((hostile_answer_ms * 2 / 1000 + 10)) # a handshake and an answer, with room
max_backends=${MAX_BACKENDS:-6}
min_backends=2

cargo build --release -q -p gateway-bin -p reference-backend -p wscluster-tools --bins
bin=target/release
ulimit -n "$(ulimit -Hn)"
command -v jq >/dev/null || { echo "soak: needs jq" >&2; exit 2; }

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
public_port=${PUBLIC_PORT:-7300} admin_port=${ADMIN_PORT:-7301}
for _ in $(seq 50); do
  port_free "$public_port" && port_free "$admin_port" && break
  public_port=$((public_port + 2)) admin_port=$((admin_port + 2))
done
port_free "$public_port" && port_free "$admin_port" || { echo "soak: no free port pair" >&2; exit 2; }
public=127.0.0.1:$public_port admin=127.0.0.1:$admin_port
url="ws://$public/connect/{user}"

# The admin API may require a bearer token: pass one if the gateway knows the variable.
if [ -z "${WSCLUSTER_ADMIN_TOKEN:-}" ] && "$bin/gateway-bin" --help | grep -q WSCLUSTER_ADMIN_TOKEN; then
  WSCLUSTER_ADMIN_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  export WSCLUSTER_ADMIN_TOKEN
fi
auth=()
[ -n "${WSCLUSTER_ADMIN_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $WSCLUSTER_ADMIN_TOKEN")
admin_api() { # admin_api METHOD PATH [max seconds]
  curl -sS --max-time "${3:-20}" "${auth[@]}" -X "$1" "http://$admin$2"
}

tmp=$(mktemp -d)
failed=1
gateway=""
cleanup() {
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$failed" = 0 ] && [ -z "${SOAK_KEEP:-}" ]; then rm -rf "$tmp"; else echo "soak: logs in $tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RUST_LOG=${RUST_LOG:-warn} "$bin/gateway-bin" --public "$public" --admin "$admin" demo \
  >"$tmp/gateway.log" 2>&1 & gateway=$!
for _ in $(seq 100); do
  admin_api GET /admin/ring 2 >"$tmp/ring.json" 2>/dev/null && jq -e .members "$tmp/ring.json" >/dev/null 2>&1 && break
  kill -0 "$gateway" 2>/dev/null || { cat "$tmp/gateway.log"; echo "soak: the gateway exited" >&2; exit 1; }
  sleep 0.1
done
jq -e .members "$tmp/ring.json" >/dev/null 2>&1 ||
  { echo "soak: no ring from the admin API: $(head -c 300 "$tmp/ring.json")" >&2; exit 1; }

ring() { admin_api GET /admin/ring 5; }
registry() { ring | jq .connections; }
backends() { ring | jq '.members | length'; }
fds() { ls "/proc/$gateway/fd" | wc -l; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$gateway/status"; }
alive() { kill -0 "$gateway" 2>/dev/null; }
add_backend() { admin_api POST /admin/backends 20 >>"$tmp/admin.log" 2>&1 || echo "add failed" >>"$tmp/admin.log"; echo >>"$tmp/admin.log"; }
remove_backend() { admin_api DELETE "/admin/backends/$1" 30 >>"$tmp/admin.log" 2>&1 || echo "remove $1 failed" >>"$tmp/admin.log"; echo >>"$tmp/admin.log"; }
measure() { # measure LABEL: descriptors, RSS, registry and backends into $tmp/LABEL
  echo "$(fds) $(rss_kb) $(registry) $(backends)" >"$tmp/$1"
}

echo "soak: ${duration}s against gateway-bin demo on $public (admin $admin), pid $gateway"
echo "soak: per round: wsload $load_conns conns x $load_messages msgs, wsload $churn_conns connect/disconnect," \
  "wshostile all kinds x $hostile_conns, one ring change ($min_backends..$max_backends backends)"

# One round: the wsload runs, wshostile (when HOSTILE is set) and ring change $1 (add, remove
# or none), all at once; returns when all are done (each is bounded).
load_round() { # load_round LABEL add|remove|none HOSTILE(0|1)
  local pids=() p members n
  "$bin/wsload" --url "$url" --connections "$load_conns" --messages "$load_messages" --rate 20 \
    --time-limit 30 --label "echo-$1" >>"$tmp/wsload.log" 2>&1 & pids+=($!)
  "$bin/wsload" --url "$url" --connections "$churn_conns" --messages 0 --time-limit 30 \
    --label "churn-$1" >>"$tmp/wsload.log" 2>&1 & pids+=($!)
  if [ "$3" = 1 ] && [ "$hostile_conns" -gt 0 ]; then
    "$bin/wshostile" --url "$url" --kind all --connections "$hostile_conns" --answer-ms "$hostile_answer_ms" \
      --hold-ms 2000 --seconds "$hostile_seconds" >>"$tmp/hostile.log" 2>&1 & pids+=($!)
  fi
  mapfile -t members < <(ring | jq -r '.members[].id')
  n=${#members[@]}
  case $2 in
    add) [ "$n" -lt "$max_backends" ] && { add_backend & pids+=($!); } ;;
    remove) [ "$n" -gt "$min_backends" ] && { remove_backend "${members[RANDOM % n]}" & pids+=($!); } ;;
  esac
  for p in "${pids[@]}"; do wait "$p" || true; done
}

# Warm-up: two well-behaved rounds, a scale-up and a removal, so that the allocator and the
# runtimes have seen the load before the baseline.
start_backends=$(backends)
load_round warmup-1 add 0
load_round warmup-2 none 0
while alive && [ "$(backends)" -gt "$start_backends" ]; do
  remove_backend "$(ring | jq -r '.members[-1].id')"
done
sleep "$settle"
measure start

end=$((SECONDS + duration))
round=0
while [ "$SECONDS" -lt "$end" ]; do
  round=$((round + 1))
  alive || { echo "soak: the gateway died in round $round" >&2; tail -20 "$tmp/gateway.log" >&2; exit 1; }
  n=$(backends)
  if [ "$n" -lt "$max_backends" ] && { [ "$n" -le "$min_backends" ] || [ $((RANDOM % 2)) = 0 ]; }; then
    load_round "$round" add 1
  else
    load_round "$round" remove 1
  fi
  printf 'round %d (%ds): %s backends, registry %s, fds %s, rss %s KiB\n' \
    "$round" "$SECONDS" "$(backends)" "$(registry)" "$(fds)" "$(rss_kb)"
done

# Back to the starting number of backends, then no load for the settle period.
while alive && [ "$(backends)" -gt "$start_backends" ]; do
  remove_backend "$(ring | jq -r '.members[-1].id')"
done
while alive && [ "$(backends)" -lt "$start_backends" ]; do
  add_backend
  sleep 0.5
done
alive || { echo "soak: the gateway died" >&2; tail -20 "$tmp/gateway.log" >&2; exit 1; }
sleep "$settle"
measure end

read -r fd0 rss0 reg0 be0 <"$tmp/start"
read -r fd1 rss1 reg1 be1 <"$tmp/end"
echo
printf '%-22s %12s %12s\n' "" start end
printf '%-22s %12s %12s\n' "open descriptors" "$fd0" "$fd1"
printf '%-22s %12s %12s\n' "RSS KiB" "$rss0" "$rss1"
printf '%-22s %12s %12s\n' "registry connections" "$reg0" "$reg1"
printf '%-22s %12s %12s\n' "backends" "$be0" "$be1"
echo
echo "wsload runs: $(grep -c ' errors' "$tmp/wsload.log" || true)," \
  "with errors: $(grep -c ', [1-9][0-9]* errors' "$tmp/wsload.log" || true)," \
  "errors: $(grep -o '[0-9]* errors' "$tmp/wsload.log" | awk '{s += $1} END {print s + 0}')," \
  "time limits hit: $(grep -c 'time limit' "$tmp/wsload.log" || true)"
echo "ring changes: $(grep -c '"id"' "$tmp/admin.log" || true) added, $(grep -c '"removed"' "$tmp/admin.log" || true) removed," \
  "$(grep -c 'failed' "$tmp/admin.log" || true) failed"
echo "wshostile, summed over $round rounds (answer: count):"
awk '/^kind=/ {
  for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  k = f["kind"]; if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
  n[k] += f["n"]; t[k] += f["timeouts"]
  m = split(f["answered"], a, ",")
  for (j = 1; j <= m; j++) { c = a[j]; sub(/:[0-9]+$/, "", c); v = a[j]; sub(/.*:/, "", v); h[k, c] += v; if (!((k, c) in hs)) { hs[k, c] = 1; labels[k] = labels[k] " " c } }
}
END {
  for (i = 1; i <= nk; i++) {
    k = order[i]; out = ""; nl = split(labels[k], ls, " ")
    for (j = 1; j <= nl; j++) out = out (out == "" ? "" : ",") ls[j] ":" h[k, ls[j]]
    printf "  %-18s n=%-4d timeouts=%-4d %s\n", k, n[k], t[k], out
  }
}' "$tmp/hostile.log" 2>/dev/null || true
echo "gateway log: $(grep -c ' WARN ' "$tmp/gateway.log" || true) warnings, $(grep -c ' ERROR ' "$tmp/gateway.log" || true) errors"

verdict=0
if [ "$reg1" != 0 ]; then echo "FAIL: registry holds $reg1 connections after the settle (want 0)"; verdict=1; fi
if [ "$fd1" -gt $((fd0 + fd_tolerance)) ]; then
  echo "FAIL: $((fd1 - fd0)) more open descriptors than at the start (tolerance $fd_tolerance)"; verdict=1
fi
if [ $((rss1 - rss0)) -gt $((rss_growth_mb * 1024)) ]; then
  echo "FAIL: RSS grew by $(((rss1 - rss0) / 1024)) MiB (bound $rss_growth_mb MiB)"; verdict=1
fi
if ! "$bin/wsload" --url "$url" --connections 10 --messages 5 --time-limit 10 --label after >"$tmp/after.log" 2>&1; then
  echo "FAIL: a plain wsload run fails after the soak: $(cat "$tmp/after.log")"; verdict=1
fi
if [ "$verdict" = 0 ]; then
  echo "PASS: registry back to 0, descriptors within $fd_tolerance of the start, RSS growth within $rss_growth_mb MiB"
fi
failed=$verdict
exit "$verdict"
