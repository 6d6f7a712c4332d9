#!/usr/bin/env bash
# Side-by-side on loopback: the same 3 reference backends and the same wsload runs, direct to
# one backend, through wscluster's gateway, through the axum example app served two ways (the
# relay's generic path under axum::serve, its fast path under hyper's HTTP/1 builder), and
# through nginx (`hash $arg_userId consistent`) and HAProxy (`balance url_param userId`,
# `hash-type consistent`). With BASELINE=<an older gateway-bin binary>,
# that build runs too (`wscluster-before`), interleaved with the others, for before/after.
# Rounds are interleaved and medians reported. Bounded: every run has a count and a time limit.
# A last step sends large messages (LARGE="connections messages bytes", default 50 x 20 x 1 MiB;
# LARGE=0 skips it) through direct, wscluster, nginx and HAProxy, and reports MiB/s and the
# proxy's CPU per MiB. Then handshakes alone (HANDSHAKES=3000 WebSockets, one echo each;
# HANDSHAKES=0 skips it): handshakes/s and the proxy's CPU per handshake. PERF=1 then profiles
# one more handshake pass per proxy with `perf record` (Debian's linux-perf) and splits its CPU
# per handshake into the kernel's and its own code's. The handshake step runs twice: with
# clients that close as a browser does (their Close, then the server's) and with clients that
# leave without waiting (their Close, then the socket dropped).
# TLS (TLS=0 skips it): the same ECDSA P-256 certificate (made here, from a test CA) on a
# wscluster gateway (rustls), nginx and HAProxy (Debian's OpenSSL), the same backends; echo
# rounds, TLS handshakes alone with both kinds of client (TLS_HANDSHAKES=2000, full
# handshakes: wsload resumes no session) and RSS per idle TLS WebSocket (TLS_IDLE=5000).
# Usage: [BASELINE=path] bench/compare.sh [rounds] [connections] [messages] [size] [idle-connections]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3} conns=${2:-1000} msgs=${3:-200} size=${4:-64} idle=${5:-9000}
read -r large_conns large_msgs large_size <<<"${LARGE:-50 20 1048576}"
handshakes=${HANDSHAKES:-3000}
tls=${TLS:-1} tls_handshakes=${TLS_HANDSHAKES:-2000} tls_idle=${TLS_IDLE:-5000}
# A proxy holds two descriptors per connection: 10k idle connections need a hard limit above
# 20,000 open files, which not every sandbox grants (then pass a smaller idle count).

command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
cargo build --release -q -p gateway-bin -p reference-backend -p wscluster-tools --bins
bin=${CARGO_TARGET_DIR:-target}/release
ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d); chmod 755 "$tmp"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# One test CA and one ECDSA P-256 certificate for 127.0.0.1 (PKCS#8 key), for every proxy.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key" 2>/dev/null
openssl req -x509 -new -key "$tmp/ca.key" -subj "/CN=wscluster bench CA" -days 2 -out "$tmp/ca.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/leaf.key" 2>/dev/null
openssl req -new -key "$tmp/leaf.key" -subj "/CN=127.0.0.1" -out "$tmp/leaf.csr"
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tmp/leaf.ext"
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 2 -extfile "$tmp/leaf.ext" -out "$tmp/leaf.pem" 2>/dev/null
cat "$tmp/leaf.pem" "$tmp/leaf.key" >"$tmp/haproxy.pem"

for i in 1 2 3; do
  "$bin/wsbackend" --id "backend-$i" --listen "127.0.0.1:1710$i" >"$tmp/backend-$i.log" 2>&1 & pids+=($!)
done
# The reference gateway as it ships: one worker per core (a current-thread runtime and an
# SO_REUSEPORT listener each), like nginx's 2 workers here.
RUST_LOG=warn "$bin/gateway-bin" --workers 2 --public 127.0.0.1:17000 --admin 127.0.0.1:17001 run \
  --backend backend-1=127.0.0.1:17101 --backend backend-2=127.0.0.1:17102 --backend backend-3=127.0.0.1:17103 \
  >"$tmp/gateway.log" 2>&1 & gateway=$!; pids+=($gateway)
# The same gateway with TLS on its public listener (the only difference).
RUST_LOG=warn "$bin/gateway-bin" --tls-cert "$tmp/leaf.pem" --tls-key "$tmp/leaf.key" --workers 2 \
  --public 127.0.0.1:17443 --admin 127.0.0.1:17444 run \
  --backend backend-1=127.0.0.1:17101 --backend backend-2=127.0.0.1:17102 --backend backend-3=127.0.0.1:17103 \
  >"$tmp/gateway-tls.log" 2>&1 & gateway_tls=$!; pids+=($gateway_tls)
# The same gateway on one shared multi-threaded runtime (`--workers 0`, what an embedding app gets).
RUST_LOG=warn "$bin/gateway-bin" --workers 0 --public 127.0.0.1:17010 --admin 127.0.0.1:17011 run \
  --backend backend-1=127.0.0.1:17101 --backend backend-2=127.0.0.1:17102 --backend backend-3=127.0.0.1:17103 \
  >"$tmp/gateway-shared.log" 2>&1 & gateway_shared=$!; pids+=($gateway_shared)
# The axum example app (an embedding user's app) on both relay paths, nothing else different.
backend_args=(--backend backend-1=127.0.0.1:17101 --backend backend-2=127.0.0.1:17102 --backend backend-3=127.0.0.1:17103)
"$bin/wsaxum" --server axum --listen 127.0.0.1:17020 "${backend_args[@]}" >"$tmp/axum-generic.log" 2>&1 & axum_generic=$!; pids+=($axum_generic)
"$bin/wsaxum" --server hyper --listen 127.0.0.1:17030 "${backend_args[@]}" >"$tmp/axum-fast.log" 2>&1 & axum_fast=$!; pids+=($axum_fast)
before_pid=""
if [ -n "${BASELINE:-}" ]; then
  RUST_LOG=warn "$BASELINE" --workers 2 --public 127.0.0.1:17040 --admin 127.0.0.1:17041 run "${backend_args[@]}" \
    >"$tmp/gateway-before.log" 2>&1 & before_pid=$!; pids+=($before_pid)
fi

cat >"$tmp/nginx.conf" <<CONF
daemon off;
worker_processes 2;
worker_rlimit_nofile 200000;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log error;
events { worker_connections 65536; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $tmp/cb; proxy_temp_path $tmp/px; fastcgi_temp_path $tmp/fc; uwsgi_temp_path $tmp/uw; scgi_temp_path $tmp/sc;
  upstream backends {
    hash \$arg_userId consistent;
    server 127.0.0.1:17101; server 127.0.0.1:17102; server 127.0.0.1:17103;
    keepalive 64;
  }
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  # One server, plaintext on 17080 and TLS on 17483.
  server {
    listen 127.0.0.1:17080 backlog=4096;
    listen 127.0.0.1:17483 ssl backlog=4096;
    ssl_certificate $tmp/leaf.pem;
    ssl_certificate_key $tmp/leaf.key;
    # nginx 1.22's default is TLSv1 to TLSv1.2; the gateway and HAProxy speak 1.2 and 1.3.
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 600s;
    }
  }
}
CONF
nginx -c "$tmp/nginx.conf" -p "$tmp" & nginx_master=$!; pids+=($nginx_master)
# HAProxy as Debian ships it, 2 threads like nginx's 2 workers, consistent hashing on the
# same query parameter; `timeout tunnel` governs the upgraded WebSockets. Its maxconn must fit
# the descriptor limit (two per connection), or it refuses to start.
cat >"$tmp/haproxy.cfg" <<CONF
global
  maxconn $(( $(ulimit -Hn) / 2 - 100 ))
  nbthread 2
  log stderr format raw local0 err
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout tunnel 600s
frontend ws
  bind 127.0.0.1:17090
  default_backend backends
frontend wss
  bind 127.0.0.1:17493 ssl crt $tmp/haproxy.pem alpn http/1.1
  default_backend backends
backend backends
  balance url_param userId
  hash-type consistent
  server b1 127.0.0.1:17101
  server b2 127.0.0.1:17102
  server b3 127.0.0.1:17103
CONF
haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
sleep 1

rss_kb() { # RSS of a process and its children, in KiB
  local total=0 p
  for p in "$@" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

declare -A url=(
  [direct]="ws://127.0.0.1:17101/connect/{user}?userId={user}"
  [wscluster]="ws://127.0.0.1:17000/connect/{user}?userId={user}"
  [wscluster-shared-rt]="ws://127.0.0.1:17010/connect/{user}?userId={user}"
  [nginx]="ws://127.0.0.1:17080/connect/{user}?userId={user}"
  [haproxy]="ws://127.0.0.1:17090/connect/{user}?userId={user}"
  [axum-generic]="ws://127.0.0.1:17020/connect/{user}?userId={user}"
  [axum-fast]="ws://127.0.0.1:17030/connect/{user}?userId={user}"
  [wscluster-before]="ws://127.0.0.1:17040/connect/{user}?userId={user}"
  [wscluster-tls]="wss://127.0.0.1:17443/connect/{user}?userId={user}"
  [nginx-tls]="wss://127.0.0.1:17483/connect/{user}?userId={user}"
  [haproxy-tls]="wss://127.0.0.1:17493/connect/{user}?userId={user}"
)
order=(direct wscluster wscluster-shared-rt axum-generic axum-fast nginx haproxy)
[ -n "$before_pid" ] && order+=(wscluster-before)
# TARGETS="wscluster wscluster-before" runs only those (and skips the others' idle step).
if [ -n "${TARGETS:-}" ]; then read -r -a order <<<"$TARGETS"; fi
declare -A proxy_pid=([direct]="" [wscluster]=$gateway [wscluster-shared-rt]=$gateway_shared
  [axum-generic]=$axum_generic [axum-fast]=$axum_fast [nginx]=$nginx_master [haproxy]=$haproxy_pid
  [wscluster-before]=$before_pid [wscluster-tls]=$gateway_tls [nginx-tls]=$nginx_master
  [haproxy-tls]=$haproxy_pid)
# Whether a target (or, for a TLS one, its plaintext twin) is among those to run.
selected() { [[ " ${order[*]} " == *" ${1%-tls} "* ]]; }
stat_ticks() { # $1: an awk sum of /proc/<pid>/stat fields, over process $2 and its children
  local fields=$1 total=0 p
  shift
  for p in "$@" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk "{print $fields}" "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
cpu_ticks() { stat_ticks '$14 + $15' "$@"; } # user + system clock ticks
sys_ticks() { stat_ticks '$15' "$@"; } # the kernel's alone: what no user-space change removes
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(nginx -v 2>&1); $(haproxy -v | head -1)"
echo "load: $conns connections x $msgs echo round trips of $size bytes, $rounds interleaved rounds"
for round in $(seq "$rounds"); do
  # The order rotates each round, so no target always runs first (or right after another).
  shift_by=$(( (round - 1) % ${#order[@]} ))
  rotated=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
  for target in "${rotated[@]}"; do
    pid=${proxy_pid[$target]}
    before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    sys_before=$([ -n "$pid" ] && sys_ticks "$pid" || echo 0)
    "$bin/wsload" --url "${url[$target]}" --connections "$conns" --messages "$msgs" --size "$size" \
      --time-limit 120 --label "$target" | tee -a "$tmp/results.txt"
    # The proxy's CPU time per echo round trip (two relayed messages), in microseconds.
    after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    sys_after=$([ -n "$pid" ] && sys_ticks "$pid" || echo 0)
    echo "$target $(( after - before )) $(getconf CLK_TCK) $(( conns * msgs ))" >>"$tmp/cpu.txt"
    echo "$target $(( sys_after - sys_before )) $(getconf CLK_TCK) $(( conns * msgs ))" >>"$tmp/cpu.txt.sys"
  done
done

# Idle memory: RSS before and while holding $idle idle connections, per proxy.
# The RSS is read 2 s after every handshake is over (wsload says `holding`), 10 s into the hold.
hold_idle() { # $1: target, $2: connections, $3: the file of "<target> rss_per_conn <bytes>" lines
  local target=$1 count=$2 pid before during loader
  pid=${proxy_pid[$target]}
  before=$(rss_kb "$pid")
  "$bin/wsload" --url "${url[$target]}" --ca "$tmp/ca.pem" --connections "$count" --hold 12 \
    --time-limit 180 --label "$target-idle" >"$tmp/idle-$target.txt" & loader=$!
  wait_for_hold "$tmp/idle-$target.txt" "$loader" 1500
  during=$(rss_kb "$pid")
  wait "$loader" || true
  echo "$target idle: $(tail -1 "$tmp/idle-$target.txt"); RSS ${before} KiB -> ${during} KiB" | tee -a "$tmp/idle.txt"
  echo "$target rss_per_conn $(( (during - before) * 1024 / count ))" >>"$3"
}
idle_targets=(wscluster axum-generic axum-fast nginx haproxy)
[ -n "$before_pid" ] && idle_targets+=(wscluster-before)
for target in "${idle_targets[@]}"; do
  [ "$idle" -gt 0 ] || break
  selected "$target" || continue
  hold_idle "$target" "$idle" "$tmp/rss.txt"
done

# Interleaved rounds over direct and the two peers beside wscluster: wsload with the given
# arguments, its output appended to $1, and "<target> <proxy CPU ticks> <ticks/s> $3" to $2
# (and the same with the kernel's ticks alone to $2.sys).
peer_targets=(direct wscluster nginx haproxy)
# With BASELINE, the older build runs in these steps too: before/after for every workload.
[ -n "$before_pid" ] && peer_targets+=(wscluster-before)
peer_rounds() {
  local results=$1 cpu=$2 unit=$3 round shift_by target pid before after sys_before sys_after
  shift 3
  for round in $(seq "$rounds"); do
    shift_by=$(( (round - 1) % ${#peer_targets[@]} ))
    local rotated=("${peer_targets[@]:shift_by}" "${peer_targets[@]:0:shift_by}")
    for target in "${rotated[@]}"; do
      selected "$target" || continue
      pid=${proxy_pid[$target]}
      before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
      sys_before=$([ -n "$pid" ] && sys_ticks "$pid" || echo 0)
      "$bin/wsload" --url "${url[$target]}" --ca "$tmp/ca.pem" "$@" --time-limit 120 --label "$target" \
        | tee -a "$results"
      # A client that leaves exits before the proxy has torn its connections down: give the
      # teardown a second to be counted (an idle proxy adds no CPU time meanwhile).
      sleep 1
      after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
      sys_after=$([ -n "$pid" ] && sys_ticks "$pid" || echo 0)
      echo "$target $(( after - before )) $(getconf CLK_TCK) $unit" >>"$cpu"
      echo "$target $(( sys_after - sys_before )) $(getconf CLK_TCK) $unit" >>"$cpu.sys"
    done
  done
}

# Large messages: bytes per second and the proxy's CPU per MiB relayed.
touch "$tmp/large.txt" "$tmp/large-cpu.txt" "$tmp/cpu.txt.sys"
if [ "$large_conns" -gt 0 ] 2>/dev/null; then
  peer_rounds "$tmp/large.txt" "$tmp/large-cpu.txt" "$(( large_conns * large_msgs )) $large_size" \
    --connections "$large_conns" --messages "$large_msgs" --size "$large_size"
fi

# Handshakes alone: $handshakes WebSockets opened 64 at a time (wsload's default), each with
# one echo; the proxy's CPU per handshake (accept, route, dial, both upgrades, relay setup
# and teardown).
# Then the same with clients that leave without waiting for the server's Close.
for close in wait leave; do
  touch "$tmp/handshakes-$close.txt" "$tmp/handshake-cpu-$close.txt" "$tmp/handshake-cpu-$close.txt.sys"
  [ "$handshakes" -gt 0 ] 2>/dev/null || continue
  peer_rounds "$tmp/handshakes-$close.txt" "$tmp/handshake-cpu-$close.txt" "$handshakes" \
    --connections "$handshakes" --messages 1 --size "$size" --close "$close"
done

# TLS, on the same certificate and backends: echo rounds, TLS handshakes alone with both kinds
# of client, and RSS per idle TLS WebSocket.
touch "$tmp/tls-echo.txt" "$tmp/tls-echo-cpu.txt" "$tmp/tls-echo-cpu.txt.sys" "$tmp/tls-rss.txt"
for close in wait leave; do
  touch "$tmp/tls-handshakes-$close.txt" "$tmp/tls-handshake-cpu-$close.txt" "$tmp/tls-handshake-cpu-$close.txt.sys"
done
if [ "$tls" = 1 ]; then
  plain_targets=("${peer_targets[@]}")
  peer_targets=(wscluster-tls nginx-tls haproxy-tls)
  peer_rounds "$tmp/tls-echo.txt" "$tmp/tls-echo-cpu.txt" "$(( conns * msgs ))" \
    --connections "$conns" --messages "$msgs" --size "$size"
  for close in wait leave; do
    [ "$tls_handshakes" -gt 0 ] 2>/dev/null || continue
    peer_rounds "$tmp/tls-handshakes-$close.txt" "$tmp/tls-handshake-cpu-$close.txt" "$tls_handshakes" \
      --connections "$tls_handshakes" --messages 1 --size "$size" --close "$close"
  done
  for target in "${peer_targets[@]}"; do
    [ "$tls_idle" -gt 0 ] || break
    selected "$target" || continue
    hold_idle "$target" "$tls_idle" "$tmp/tls-rss.txt"
  done
  peer_targets=("${plain_targets[@]}")
fi

# Where each proxy's handshake CPU goes: perf's samples in the kernel and in user space (the
# proxy's code and its libraries), per handshake, from one pass of $handshakes handshakes.
if [ "${PERF:-0}" = 1 ] && [ "$handshakes" -gt 0 ] 2>/dev/null; then
  command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
  { echo; echo "Handshake CPU by perf (1999 samples/s, one pass of $handshakes):"
    echo "| target | kernel µs / handshake | user-space µs / handshake |"
    echo "|---|---|---|"; } >"$tmp/perf.txt"
  for target in wscluster nginx haproxy; do
    [[ " ${order[*]} " == *" $target "* ]] || continue
    pid=${proxy_pid[$target]}
    perf_pids=$(echo "$pid" $(pgrep -P "$pid" || true) | tr ' ' ',')
    perf record -q -F 1999 -p "$perf_pids" -o "$tmp/perf-$target.data" 2>/dev/null & recorder=$!
    sleep 0.5
    "$bin/wsload" --url "${url[$target]}" --connections "$handshakes" --messages 1 --size "$size" \
      --close "${PERF_CLOSE:-wait}" --time-limit 120 --label "$target" >/dev/null
    kill -INT "$recorder"; wait "$recorder" 2>/dev/null || true
    perf report -q -i "$tmp/perf-$target.data" --sort dso -F sample,dso --stdio 2>/dev/null |
      awk -v t="$target" -v n="$handshakes" '
        $2 == "[kernel.kallsyms]" { k += $1; next } NF >= 2 { u += $1 }
        END { printf "| %s | %.0f | %.0f |\n", t, k / 1999 * 1e6 / n, u / 1999 * 1e6 / n }' \
      >>"$tmp/perf.txt"
  done
fi

touch "$tmp/rss.txt"
python3 - "$tmp" <<'PY'
import os, re, statistics, sys
tmp = sys.argv[1]
def path(name):
    return os.path.join(tmp, name)
def lines(name):
    return open(path(name)) if os.path.exists(path(name)) else []
med_of = statistics.median
def echo_rows(name):
    rows = {}
    for line in lines(name):
        m = re.match(r"(\S+): \d+ conns, (\d+) handshakes/s, (\d+) msgs/s, rtt p50 ([\d.]+) ms p99 ([\d.]+) ms p99.9 ([\d.]+) ms, (\d+) errors", line)
        if m:
            rows.setdefault(m[1], []).append([float(x) for x in m.groups()[1:]])
    return {t: [med_of(c) for c in zip(*v)] for t, v in rows.items()}
def per_unit(name):
    """Median-ready lists of µs per unit from "<target> <ticks> <hz> <units>" lines."""
    out = {}
    for l in lines(name):
        t, ticks, hz, units = l.split()[:4]
        out.setdefault(t, []).append(int(ticks) / int(hz) * 1e6 / int(units))
    return out
def rss_of(name):
    return {l.split()[0]: int(l.split()[2]) for l in lines(name) if l.strip()}
med = echo_rows("results.txt")
rss = rss_of("rss.txt")
cpu = per_unit("cpu.txt")
cpu_sys = per_unit("cpu.txt.sys")
print()
print("| target | handshakes/s | msgs/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU µs / round trip (kernel's) | RSS/idle conn |")
print("|---|---|---|---|---|---|---|---|---|")
for t in [t for t in ["direct", "wscluster", "wscluster-before", "wscluster-shared-rt", "axum-fast", "axum-generic", "nginx", "haproxy"] if t in med]:
    h, m, p50, p99, p999, e = med[t]
    r = f"{rss[t]:,} B" if t in rss else "-"
    c = f"{med_of(cpu[t]):.1f} ({med_of(cpu_sys[t]):.1f})" if t != "direct" and t in cpu_sys else "-"
    print(f"| {t} | {h:.0f} | {m:.0f} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {e:.0f} | {c} | {r} |")
print()
def ratio(label, x, y, med=med, cpu=cpu, rss=rss):
    if x not in med or y not in med:
        return
    a, b = med[x], med[y]
    mem = f", RSS/idle conn {rss[x]/rss[y]:.2f}x" if x in rss and y in rss and rss[y] > 0 else ""
    c = ""
    if x in cpu and y in cpu and x != "direct" and med_of(cpu[y]) > 0:
        c = f", CPU/round trip {med_of(cpu[x])/med_of(cpu[y]):.2f}x"
    print(f"{label}: msgs/s {a[1]/b[1]:.2f}x, p99 {a[3]/b[3]:.2f}x, handshakes/s {a[0]/b[0]:.2f}x{c}{mem}")
ratio("wscluster / nginx", "wscluster", "nginx")
ratio("wscluster / haproxy", "wscluster", "haproxy")
ratio("wscluster-shared-rt / nginx", "wscluster-shared-rt", "nginx")
ratio("generic path / fast path (axum example app)", "axum-generic", "axum-fast")
ratio("wscluster after / before", "wscluster", "wscluster-before")
# Large messages: MiB/s each way (echo round trips x size), proxy CPU ms per MiB relayed
# (each round trip relays the message both ways).
large = {}
for line in lines("large.txt"):
    m = re.match(r"(\S+): \d+ conns, \d+ handshakes/s, (\d+) msgs/s, rtt p50 ([\d.]+) ms p99 ([\d.]+) ms", line)
    if m:
        large.setdefault(m[1], []).append([float(x) for x in m.groups()[1:]])
large_cpu = {}
size = 0
for l in lines("large-cpu.txt"):
    t, ticks, hz, round_trips, size = l.split()
    size = int(size)
    mib = int(round_trips) * size * 2 / 2**20
    large_cpu.setdefault(t, []).append(int(ticks) / int(hz) * 1e3 / mib)
if large:
    print()
    print(f"Large messages ({size:,} bytes):")
    print("| target | MiB/s each way | p50 ms | p99 ms | proxy CPU ms / MiB |")
    print("|---|---|---|---|---|")
    lmed = {t: [med_of(c) for c in zip(*v)] for t, v in large.items()}
    for t in [t for t in ["direct", "wscluster", "wscluster-before", "nginx", "haproxy"] if t in lmed]:
        m, p50, p99 = lmed[t]
        c = f"{med_of(large_cpu[t]):.2f}" if t != "direct" else "-"
        print(f"| {t} | {m * size / 2**20:.0f} | {p50:.1f} | {p99:.1f} | {c} |")
    for peer in ["nginx", "haproxy"]:
        if "wscluster" in lmed and peer in lmed:
            a, b = lmed["wscluster"], lmed[peer]
            c = med_of(large_cpu["wscluster"]) / max(med_of(large_cpu[peer]), 1e-9)
            print(f"large, wscluster / {peer}: bytes/s {a[0]/b[0]:.2f}x, p99 {a[2]/b[2]:.2f}x, CPU/MiB {c:.2f}x")
def handshake_table(title, prefix, ours, peers, order):
    """Handshakes alone, with both kinds of client: handshakes/s, the proxy's CPU per
    handshake and its kernel/user split, and ours over each peer's."""
    printed = False
    for close, who in (("wait", "clients that wait for the server's Close"),
                       ("leave", "clients that leave without waiting")):
        hs = {}
        for line in lines(f"{prefix}handshakes-{close}.txt"):
            m = re.match(r"(\S+): \d+ conns, (\d+) handshakes/s", line)
            if m:
                hs.setdefault(m[1], []).append(float(m[2]))
        if not hs:
            continue
        hs_cpu = per_unit(f"{prefix}handshake-cpu-{close}.txt")
        hs_sys = per_unit(f"{prefix}handshake-cpu-{close}.txt.sys")
        print()
        print(f"{title}, {who}:")
        print("| target | handshakes/s | proxy CPU µs / handshake | kernel | user |")
        print("|---|---|---|---|---|")
        for t in [t for t in order if t in hs]:
            if t == "direct" or t not in hs_cpu:
                print(f"| {t} | {med_of(hs[t]):.0f} | - | - | - |")
                continue
            c, k = med_of(hs_cpu[t]), med_of(hs_sys[t])
            print(f"| {t} | {med_of(hs[t]):.0f} | {c:.0f} | {k:.0f} | {c - k:.0f} |")
        for peer in peers:
            if ours in hs and peer in hs:
                r = med_of(hs[ours]) / med_of(hs[peer])
                c = med_of(hs_cpu[ours]) / max(med_of(hs_cpu[peer]), 1e-9)
                peer_user = med_of(hs_cpu[peer]) - med_of(hs_sys[peer])
                u = (med_of(hs_cpu[ours]) - med_of(hs_sys[ours])) / peer_user if peer_user > 0 else float("nan")
                print(f"{title.lower()} ({close}), {ours} / {peer}: handshakes/s {r:.2f}x, CPU/handshake {c:.2f}x, user CPU/handshake {u:.2f}x")
        if not peers or ours not in hs_sys:
            continue
        for peer in peers:
            if peer in hs_cpu:
                f = med_of(hs_sys[ours]) / max(med_of(hs_cpu[peer]), 1e-9)
                print(f"{title.lower()} ({close}), {ours}'s kernel CPU alone / {peer}'s whole CPU: {f:.2f}x")
handshake_table("Handshakes alone (one echo each)", "", "wscluster",
                ["wscluster-before", "nginx", "haproxy"],
                ["direct", "wscluster", "wscluster-before", "nginx", "haproxy"])
for peer in ["nginx", "haproxy"]:
    if "wscluster" in cpu_sys and peer in cpu:
        f = med_of(cpu_sys["wscluster"]) / max(med_of(cpu[peer]), 1e-9)
        print(f"echo round trips, wscluster's kernel CPU alone / {peer}'s whole CPU: {f:.2f}x")
# TLS: echo, handshakes, idle memory, on the same certificate and backends.
tls_med = echo_rows("tls-echo.txt")
tls_cpu = per_unit("tls-echo-cpu.txt")
tls_cpu_sys = per_unit("tls-echo-cpu.txt.sys")
tls_rss = rss_of("tls-rss.txt")
if tls_med or tls_rss:
    print()
    print("Over TLS (ECDSA P-256, full handshakes), echo and idle memory:")
    print("| target | handshakes/s | msgs/s | p50 ms | p99 ms | errors | proxy CPU µs / round trip (kernel's) | RSS / idle TLS conn |")
    print("|---|---|---|---|---|---|---|---|")
    for t in ["wscluster-tls", "nginx-tls", "haproxy-tls"]:
        if t not in tls_med and t not in tls_rss:
            continue
        h, m, p50, p99, _, e = tls_med.get(t, [float("nan")] * 6)
        c = f"{med_of(tls_cpu[t]):.1f} ({med_of(tls_cpu_sys[t]):.1f})" if t in tls_cpu else "-"
        r = f"{tls_rss[t]:,} B" if t in tls_rss else "-"
        print(f"| {t} | {h:.0f} | {m:.0f} | {p50:.2f} | {p99:.2f} | {e:.0f} | {c} | {r} |")
    for peer in ["nginx-tls", "haproxy-tls"]:
        ratio(f"over TLS, wscluster / {peer.removesuffix('-tls')}", "wscluster-tls", peer,
              med=tls_med, cpu=tls_cpu, rss=tls_rss)
handshake_table("TLS handshakes alone (one echo each)", "tls-", "wscluster-tls",
                ["nginx-tls", "haproxy-tls"], ["wscluster-tls", "nginx-tls", "haproxy-tls"])
PY
# Without PERF=1 there is no perf table: not a failure of the run.
if [ -s "$tmp/perf.txt" ]; then cat "$tmp/perf.txt"; fi
