#!/usr/bin/env bash
# A real multi-node Docker Swarm on one machine, for wscluster's multi-node tests: every node
# is a network namespace with a dockerd of its own, and the nodes share a bridge in a switch
# namespace, so the machine's own engine, its swarm, its images and its containers are never
# touched (its images are only read, by `docker save`). The recipe and its traps:
# /work/shared/multinode-swarm.md and tests/multinode/README.md.
#
#   tests/multinode/swarm.sh up [N]     # N nodes (default 3), all managers; HAProxy in front
#   tests/multinode/swarm.sh deploy     # docker/stack-multinode.yaml; waits for every gateway
#   tests/multinode/swarm.sh status     # nodes, tasks per node, every gateway's ring
#   tests/multinode/swarm.sh check      # every ring lists every task; echo across nodes
#   tests/multinode/swarm.sh env [N]    # addresses for tests (shell syntax); node N's DOCKER_HOST
#   tests/multinode/swarm.sh log        # HAProxy's log: sessions' ends, servers up and down
#   tests/multinode/swarm.sh down       # whatever state it is in; safe to repeat
#
# Addresses (fixed: docker/swarm-gateway-multinode.toml names one): the machine is 10.231.0.1,
# node n is 10.231.0.(10+n) with hostname wsnode-n, its gateway on :7000 (public, PROXY
# header required) and :7001 (admin); HAProxy listens on 10.231.0.2:7000 for all gateways
# and 10.231.0.2:(7010+n) for node n's alone; the overlays come from 10.231.64.0/18. State (pids, sockets, data-roots) lives
# under $WSCLUSTER_MULTINODE_DIR (default /run/wscluster-multinode); `up` refuses while it
# exists, so one cluster at a time, and tears down what it built if it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

state=${WSCLUSTER_MULTINODE_DIR:-/run/wscluster-multinode}
stack=wsmn
net=10.231.0
host_ip=$net.1
balancer_ip=$net.2
switch=wsmn-switch
host_veth=wsmn0
# Each node's docker_gwbridge (one per namespace, so the same subnet on every node).
gwbridge_subnet=10.231.1.0/24
gwbridge_ip=10.231.1.1
# Gateways published in host mode on every node; the balancer listens on its own address.
public_port=7000
admin_port=7001
images=(wscluster-backend wscluster-gateway)

say() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

node_name() { echo "wsnode-$1"; }
node_ip() { echo "$net.$((10 + $1))"; }
node_dir() { echo "$state/wsnode-$1"; }
node_socket() { echo "$(node_dir "$1")/docker.sock"; }
# The docker CLI on node n's engine, never the machine's: -H beats any DOCKER_HOST.
dk() {
  local n=$1
  shift
  docker -H "unix://$(node_socket "$n")" "$@"
}
nodes() { cat "$state/nodes" 2>/dev/null || echo 0; }
# The static binary an image is built from on the nodes, if one was given: the Dockerfiles
# copy it by its own name (gateway-bin, wsbackend).
image_binary() {
  case $1 in
    wscluster-gateway) echo "${WSCLUSTER_MULTINODE_GATEWAY_BIN:-}" ;;
    wscluster-backend) echo "${WSCLUSTER_MULTINODE_BACKEND_BIN:-}" ;;
  esac
}

# Polls `cmd` every half second until it succeeds; fails after `seconds`.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${seconds}s: $what"
    sleep 0.5
  done
}

# A process of ours: alive, and its command line names `mark` (a path of ours), so a pid
# reused by an unrelated process after ours ended is never signalled.
ours() {
  local pid=$1 mark=$2
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$mark"
}

# Stops the process in `pidfile` if it is ours: SIGTERM, then SIGKILL after `grace` seconds.
stop_pidfile() {
  local pidfile=$1 mark=$2 grace=$3 pid
  [ -s "$pidfile" ] || return 0
  pid=$(tr -dc 0-9 <"$pidfile")
  ours "$pid" "$mark" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 5))); do
    ours "$pid" "$mark" || return 0
    sleep 0.2
  done
  say "pid $pid ($pidfile) ignored SIGTERM for ${grace}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 25); do
    ours "$pid" "$mark" || return 0
    sleep 0.2
  done
  say "pid $pid still there"
}

# The admin API of the gateway at `ip`: GET `path`, or POST it with a JSON body.
admin() {
  local ip=$1 path=$2 body=${3:-}
  local args=(-fsS -m 5 -H "authorization: Bearer $WSCLUSTER_ADMIN_TOKEN")
  [ -z "$body" ] || args+=(-H 'content-type: application/json' --data "$body")
  curl "${args[@]}" "http://$ip:$admin_port$path"
}

load_secrets() {
  [ -s "$state/secrets.env" ] || die "nothing deployed (no $state/secrets.env): run deploy"
  # shellcheck disable=SC1091
  source "$state/secrets.env"
  export WSCLUSTER_ADMIN_TOKEN WSCLUSTER_MIGRATION_SECRET
}

# ---------------------------------------------------------------------------------------
up() {
  local n=${1:-3}
  [[ "$n" =~ ^[1-9]$ ]] || die "N must be 1..9 (one address each in $net.11-19)"
  [ "$(id -u)" = 0 ] || die "needs root (namespaces, dockerd)"
  for tool in docker dockerd nsenter unshare ip curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool is missing"
  done
  # A previous cluster (or a failed `up` kept with WSCLUSTER_MULTINODE_KEEP) is refused, not
  # reused: its state would mix with the new one's.
  [ ! -e "$state" ] || die "$state exists: a cluster is up (or half torn down); run down first"
  ! ip link show "$host_veth" >/dev/null 2>&1 || die "$host_veth exists: run down first"
  ! ip netns list | grep -qE "^($switch|wsnode-[0-9])( |$)" || die "our namespaces exist: run down first"
  ! ip -br addr | grep -qF " $net." || die "$net.0/24 is in use on this machine"
  # A dockerd without --containerd takes the machine's system containerd if its socket is
  # there, and would share it (and its "moby" namespace) with the machine's engine. Each of
  # ours must start its own, under its exec-root.
  [ ! -S /run/containerd/containerd.sock ] ||
    die "/run/containerd/containerd.sock exists: our dockerds would share the system containerd"
  for image in "${images[@]}"; do
    [ -z "$(image_binary "$image")" ] || continue
    docker image inspect "$image" >/dev/null 2>&1 ||
      die "no $image image on this machine's engine: bash docker/build-images.sh"
  done

  local started=$SECONDS
  mkdir -p "$state"
  chmod 700 "$state"
  echo "$n" >"$state/nodes"
  # From here a failure tears down what was built, unless asked to keep it for a look.
  trap 'rc=$?; if [ $rc -ne 0 ]; then
          if [ -n "${WSCLUSTER_MULTINODE_KEEP:-}" ]; then say "up failed; kept for a look: run down";
          else say "up failed: tearing down"; down || true; fi
        fi' EXIT

  say "network: switch namespace, bridge, $host_veth ($host_ip, $balancer_ip)"
  ip netns add "$switch"
  ip -n "$switch" link set lo up
  ip -n "$switch" link add br0 type bridge
  ip -n "$switch" link set br0 up
  ip link add "$host_veth" type veth peer name sw-host
  ip link set sw-host netns "$switch"
  ip -n "$switch" link set sw-host master br0 up
  ip addr add "$host_ip/24" dev "$host_veth"
  # HAProxy's source: the one peer the gateways read a PROXY header from.
  ip addr add "$balancer_ip/24" dev "$host_veth"
  ip link set "$host_veth" up
  for i in $(seq "$n"); do
    local name dir
    name=$(node_name "$i")
    ip netns add "$name"
    ip -n "$name" link set lo up
    ip link add "wsmn-p$i" type veth peer name "wsmn-e$i"
    ip link set "wsmn-p$i" netns "$switch"
    ip -n "$switch" link set "wsmn-p$i" master br0 up
    ip link set "wsmn-e$i" netns "$name"
    ip -n "$name" link set "wsmn-e$i" name eth0
    ip -n "$name" addr add "$(node_ip "$i")/24" dev eth0
    ip -n "$name" link set eth0 up
  done

  say "engines: one dockerd per node"
  # `{}`: the machine's /etc/docker/daemon.json would conflict with our flags.
  echo '{}' >"$state/daemon.json"
  for i in $(seq "$n"); do
    local name dir
    name=$(node_name "$i")
    dir=$(node_dir "$i")
    mkdir -p "$dir/data" "$dir/exec"
    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then finds no
    # devices cgroup. unshare --uts: a hostname per node (Swarm names nodes by it). Each
    # exec's the next, so $! is dockerd itself; its pidfile is what `down` trusts.
    # --iptables=false --ip-masq=false: no rules in the machine's tables, nor masquerading.
    setsid nsenter --net="/run/netns/$name" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$name" \
      dockerd --config-file "$state/daemon.json" \
      --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
      -H "unix://$(node_socket "$i")" --cgroup-parent "$name" \
      --iptables=false --ip-masq=false --storage-driver overlay2 \
      </dev/null >"$dir/dockerd.log" 2>&1 &
    echo $! >"$dir/launch.pid"
  done
  for i in $(seq "$n"); do
    local deadline=$((SECONDS + 30))
    until dk "$i" version >/dev/null 2>&1; do
      if ! ours "$(cat "$(node_dir "$i")/launch.pid")" "$(node_dir "$i")/"; then
        tail -n 20 "$(node_dir "$i")/dockerd.log" >&2
        die "the dockerd of $(node_name "$i") ended"
      fi
      [ "$SECONDS" -lt "$deadline" ] || die "the dockerd of $(node_name "$i") did not answer in 30s"
      sleep 0.3
    done
  done
  say "engines answer ($((SECONDS - started))s)"

  # Each image from this machine's engine (docker save), or built on every node from a static
  # binary of another tree (WSCLUSTER_MULTINODE_{GATEWAY,BACKEND}_BIN), tagged on our nodes
  # only: the machine's tags belong to its CI.
  local saved=() built=()
  for image in "${images[@]}"; do
    if [ -n "$(image_binary "$image")" ]; then built+=("$image"); else saved+=("$image"); fi
  done
  : >"$state/images.txt"
  if [ "${#saved[@]}" -gt 0 ]; then
    say "images: ${saved[*]} from this machine's engine (docker save), into every node"
    docker save -o "$state/images.tar" "${saved[@]}"
    docker image inspect --format '{{index .RepoTags 0}} {{.Id}} {{.Created}}' "${saved[@]}" \
      >>"$state/images.txt"
    # In parallel, waited for by pid: a bare `wait` would wait for the dockerds too.
    local loads=()
    for i in $(seq "$n"); do
      dk "$i" load -q -i "$state/images.tar" >/dev/null &
      loads+=($!)
    done
    for pid in "${loads[@]}"; do wait "$pid"; done
    rm -f "$state/images.tar"
  fi
  for image in "${built[@]}"; do
    local binary context
    binary=$(image_binary "$image")
    say "images: $image built on every node from $binary"
    context=$(mktemp -d)
    cp "$binary" "$context/"
    for i in $(seq "$n"); do
      DOCKER_BUILDKIT=0 dk "$i" build -q -f "$repo/docker/${image#wscluster-}.Dockerfile" \
        -t "$image" "$context" >/dev/null
    done
    rm -rf "$context"
    echo "$image built from $binary" >>"$state/images.txt"
  done
  say "images loaded ($((SECONDS - started))s)"

  # Host-mode ports without iptables are served by docker-proxy, inside the node's namespace:
  # a gateway sees every public connection come from docker_gwbridge's gateway address, so
  # that is the address it must read PROXY headers from (docker/swarm-gateway-multinode.toml).
  # Made here, before the swarm would make it, to pin that address on every node.
  for i in $(seq "$n"); do
    dk "$i" network create --driver bridge --subnet "$gwbridge_subnet" --gateway "$gwbridge_ip" \
      --opt com.docker.network.bridge.name=docker_gwbridge \
      --opt com.docker.network.bridge.enable_icc=false \
      --opt com.docker.network.bridge.enable_ip_masquerade=false docker_gwbridge >/dev/null
  done

  say "swarm: $(node_name 1) inits, the others join as managers"
  local ip1
  ip1=$(node_ip 1)
  # Addresses of our own for everything: the nodes', and overlays from a pool no one uses.
  dk 1 swarm init --advertise-addr "$ip1" --listen-addr "$ip1:2377" --data-path-addr "$ip1" \
    --default-addr-pool 10.231.64.0/18 --default-addr-pool-mask-length 24 >/dev/null
  local token
  token=$(dk 1 swarm join-token -q manager)
  for i in $(seq 2 "$n"); do
    local ip
    ip=$(node_ip "$i")
    # One at a time: each manager's join is a Raft change the others must agree on.
    timeout 60 docker -H "unix://$(node_socket "$i")" swarm join --token "$token" \
      --advertise-addr "$ip" --listen-addr "$ip:2377" --data-path-addr "$ip" "$ip1:2377" >/dev/null
  done
  ready() {
    [ "$(dk 1 node ls --format '{{.Status}} {{.ManagerStatus}}' | grep -c '^Ready \(Leader\|Reachable\)$')" = "$n" ]
  }
  wait_for 60 "$n nodes Ready" ready
  say "swarm: $n managers Ready ($((SECONDS - started))s)"

  if command -v haproxy >/dev/null; then
    start_haproxy "$n"
  else
    say "no haproxy: clients use each gateway's address"
  fi
  trap - EXIT
  say "up in $((SECONDS - started))s; next: $0 deploy"
}

# HAProxy in TCP mode on the machine: one address for clients (balancer_ip:7000) in front of
# every node's gateway, telling each gateway the client with a PROXY v2 header.
start_haproxy() {
  local n=$1
  {
    echo "# Written by tests/multinode/swarm.sh up."
    echo "global"
    # Within the usual open-files limit (two descriptors a connection).
    echo "  maxconn 4000"
    # Its log (every session's end with its termination state, every server going up or
    # down) in a ring in memory, read by `swarm.sh log` through the admin socket.
    echo "  log ring@events local0"
    echo "  stats socket $state/haproxy.sock mode 600 level admin"
    echo "ring events"
    echo "  format timed"
    echo "  size 8388608"
    echo "defaults"
    echo "  mode tcp"
    echo "  log global"
    echo "  option tcplog"
    # A connect to a gateway that is cut off but not yet marked down gets no answer: give
    # up on it after 1 s (gateways answer within milliseconds), and send the retry to
    # another gateway (redispatch on every retry), instead of 3 s and three more tries at
    # the same one, which kept such a client waiting 12 s.
    echo "  timeout connect 1s"
    echo "  retries 2"
    echo "  option redispatch 1"
    # A check of a cut-off node gets no answer at all: bounded to 1 s (as the connect now
    # is, but said apart: it is what marks a node down in ~2-3 s rather than ~8 s).
    echo "  timeout check 1s"
    # WebSockets live long; the gateways and backends ping, not the balancer.
    echo "  timeout client 1h"
    echo "  timeout server 1h"
    echo "  timeout tunnel 1h"
    echo "frontend clients"
    echo "  bind $balancer_ip:$public_port"
    echo "  default_backend gateways"
    echo "backend gateways"
    echo "  balance roundrobin"
    # Checked on the admin port: the public one waits for a PROXY header. A gateway whose
    # node is cut off sends nothing, not even a reset: without shutdown-sessions its clients'
    # connections would stay open to nowhere until TCP gave up (minutes), so once it is
    # marked down (2 failed checks a second apart) HAProxy closes them and they reconnect.
    # Each gateway is checked once, by its own listener below; its server here follows that
    # check (track), so both go down at the same moment: a client that the one closes never
    # reconnects through the other to the same lost gateway.
    local checked="send-proxy-v2 check port $admin_port inter 1s fall 2 rise 1 on-marked-down shutdown-sessions"
    for i in $(seq "$n"); do
      echo "  server $(node_name "$i") $(node_ip "$i"):$public_port send-proxy-v2 track $(node_name "$i")/$(node_name "$i") on-marked-down shutdown-sessions"
    done
    # One gateway alone, for tests that pick theirs: balancer_ip:7010+n is node n's.
    for i in $(seq "$n"); do
      echo "listen $(node_name "$i")"
      echo "  bind $balancer_ip:$((7010 + i))"
      echo "  server $(node_name "$i") $(node_ip "$i"):$public_port $checked"
    done
  } >"$state/haproxy.cfg"
  haproxy -c -q -f "$state/haproxy.cfg"
  haproxy -D -p "$state/haproxy.pid" -f "$state/haproxy.cfg"
  wait_for 10 "haproxy listening" bash -c "exec 3<>/dev/tcp/$balancer_ip/$public_port"
  say "haproxy: $balancer_ip:$public_port in front of $n gateways (send-proxy-v2)"
}

# ---------------------------------------------------------------------------------------
deploy() {
  local n started=$SECONDS
  n=$(nodes)
  [ "$n" -gt 0 ] || die "no cluster: run up first"
  if [ ! -s "$state/secrets.env" ]; then
    # Kept for status, check and env; 32 and 64 hex digits from the kernel's generator.
    {
      echo "WSCLUSTER_ADMIN_TOKEN=${WSCLUSTER_ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
      echo "WSCLUSTER_MIGRATION_SECRET=${WSCLUSTER_MIGRATION_SECRET:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}"
    } >"$state/secrets.env"
    chmod 600 "$state/secrets.env"
  fi
  load_secrets
  local backends=${WSCLUSTER_BACKENDS:-6}
  say "deploy: stack $stack ($backends backends, one gateway per node) on $(node_name 1)"
  # Each gateway mounts its own node's engine: every node shares this filesystem, so the
  # socket path names the node through Swarm's template (expanded on the node).
  WSCLUSTER_DOCKER_SOCKET="$state/{{.Node.Hostname}}/docker.sock" \
    WSCLUSTER_GATEWAY_CONFIG="$repo/docker/swarm-gateway-multinode.toml" \
    WSCLUSTER_BACKENDS=$backends \
    dk 1 stack deploy --detach=true --resolve-image never \
    -c "$repo/docker/stack-multinode.yaml" "$stack" >/dev/null

  running() {
    [ "$(dk 1 service ps "${stack}_$1" --filter desired-state=running \
      --format '{{.CurrentState}}' | grep -c '^Running')" = "$2" ]
  }
  wait_for 120 "$backends backend tasks running" running backend "$backends"
  wait_for 60 "$n gateway tasks running" running gateway "$n"
  for i in $(seq "$n"); do
    wait_for 60 "the gateway of $(node_name "$i") answering on $(node_ip "$i"):$admin_port" \
      admin "$(node_ip "$i")" /admin/ring
  done
  say "every gateway answers ($((SECONDS - started))s)"
  # Every gateway should list every task; an image whose discovery inspects containers
  # lists only its own node's, which `check` reports (not waited for forever here).
  full() {
    local i
    for i in $(seq "$n"); do
      [ "$(admin "$(node_ip "$i")" /admin/ring | jq '.members | length')" = "$backends" ] || return 1
    done
  }
  if (wait_for 30 "every ring with $backends members" full); then
    say "every gateway's ring has $backends members ($((SECONDS - started))s)"
  else
    say "warning: not every ring has $backends members: see $0 status / check"
  fi
  if [ -s "$state/haproxy.pid" ]; then
    # Its health checks mark the gateways up within a second or two.
    wait_for 15 "a WebSocket through haproxy" \
      python3 "$repo/tests/multinode/ws_echo.py" "$balancer_ip" "$public_port" /connect/probe
  fi
  say "deployed in $((SECONDS - started))s"
}

# HAProxy's log ring: sessions as they end (termination state: `K`, killed by HAProxy, as
# shutdown-sessions does; `S`/`C`, closed by the server or the client), servers up and down.
haproxy_log() {
  [ -S "$state/haproxy.sock" ] || die "no haproxy admin socket ($state/haproxy.sock)"
  python3 - "$state/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show events events\n")
while chunk := s.recv(65536):
    sys.stdout.buffer.write(chunk)
PY
}

# ---------------------------------------------------------------------------------------
status() {
  local n
  n=$(nodes)
  [ "$n" -gt 0 ] || die "no cluster: run up first"
  echo "== images"
  cat "$state/images.txt"
  echo "== nodes ($(node_name 1))"
  dk 1 node ls
  echo "== tasks per node"
  dk 1 stack ps "$stack" --filter desired-state=running \
    --format '{{.Node}} {{.Name}} {{.CurrentState}}' 2>/dev/null | sort | sed 's/ /\t/; s/ /\t/' ||
    echo "(no stack $stack)"
  [ -s "$state/secrets.env" ] || return 0
  load_secrets
  for i in $(seq "$n"); do
    echo "== gateway of $(node_name "$i") ($(node_ip "$i"):$admin_port): /admin/ring members"
    admin "$(node_ip "$i")" /admin/ring |
      jq -r '"digest \(.digest)", (.members[], .others[] | "  \(.id)\t\(.address)\tnode=\(.node // "-")\t\(.state)")' ||
      echo "  (no answer)"
  done
}

# The backend tasks as the manager sees them: `id address node`, one a line, sorted.
expected_members() {
  local names
  names=$(dk 1 node ls --format '{{.ID}} {{.Hostname}}')
  dk 1 service ps -q --filter desired-state=running "${stack}_backend" |
    xargs -r docker -H "unix://$(node_socket 1)" inspect --type task |
    jq -r --arg service "${stack}_backend" --arg names "$names" '
      ($names | split("\n") | map(split(" ") | {(.[0]): .[1]}) | add) as $hostname
      | .[] | select(.Status.State == "running")
      | "\($service).\(.Slot) \(.NetworksAttachments[] | select(.Network.Spec.Name | endswith("_backends")) | .Addresses[0] | split("/")[0]):7100 \($hostname[.NodeID])"' |
    sort
}

# Every gateway's ring lists every backend task at its overlay address (and its node, if the
# image reports it); a WebSocket through each gateway reaches a backend on another node.
check() {
  local n failed=0
  n=$(nodes)
  [ "$n" -gt 0 ] || die "no cluster: run up first"
  load_secrets
  local expected
  expected=$(expected_members)
  echo "== backend tasks (manager's view: id, overlay address, node)"
  echo "$expected"
  for i in $(seq "$n"); do
    local ip listed
    ip=$(node_ip "$i")
    listed=$(admin "$ip" /admin/ring | jq -r '.members[] | "\(.id) \(.address) \(.node // "-")"' | sort)
    if [ "$listed" = "$expected" ]; then
      echo "ok: gateway of $(node_name "$i") lists every task, with its node"
    elif [ "$(cut -d' ' -f1,2 <<<"$listed")" = "$(cut -d' ' -f1,2 <<<"$expected")" ]; then
      echo "ok: gateway of $(node_name "$i") lists every task (no node field: an older image)"
    else
      failed=1
      local own
      own=$(awk -v node="$(node_name "$i")" '$3 == node {print $1 " " $2}' <<<"$expected")
      if [ "$(cut -d' ' -f1,2 <<<"$listed")" = "$own" ]; then
        echo "FAIL: gateway of $(node_name "$i") lists only its own node's tasks (discovery that inspects local containers: an older image)"
      else
        echo "FAIL: gateway of $(node_name "$i") lists:"
        sed 's/^/  /' <<<"$listed"
      fi
    fi
  done
  # Through each gateway, a key owned by a backend on another node: the gateway's ring says
  # who owns it, the manager says where that task runs.
  local keys
  keys=$(seq 0 199 | jq -R . | jq -sc '{keys: map("user-" + .)}')
  for i in $(seq "$n"); do
    local ip owners pick key owner
    ip=$(node_ip "$i")
    owners=$(admin "$ip" /admin/route "$keys" | jq -r '.owners[]')
    pick=$(paste -d' ' <(seq 0 199) <(echo "$owners") | while read -r k o; do
      node=$(awk -v id="$o" '$1 == id {print $3}' <<<"$expected")
      if [ -n "$node" ] && [ "$node" != "$(node_name "$i")" ]; then
        echo "user-$k $o $node"
        break
      fi
    done)
    if [ -z "$pick" ]; then
      echo "FAIL: gateway of $(node_name "$i") routes no key to another node's backend"
      failed=1
      continue
    fi
    read -r key owner node <<<"$pick"
    # Straight to the node (saying who we are in a PROXY header, as every connection to a
    # published port must: see up), and through haproxy's frontend for that gateway alone.
    local via=("--proxy $ip $public_port")
    [ ! -s "$state/haproxy.pid" ] || via+=("$balancer_ip $((7010 + i))")
    for target in "${via[@]}"; do
      # shellcheck disable=SC2086
      if python3 "$repo/tests/multinode/ws_echo.py" $target "/connect/$key" "$owner" >/dev/null; then
        echo "ok: echo through the gateway of $(node_name "$i") ($target) from $owner on $node"
      else
        echo "FAIL: echo through the gateway of $(node_name "$i") ($target) from $owner on $node"
        failed=1
      fi
    done
  done
  if [ -s "$state/haproxy.pid" ]; then
    local servers
    servers=$(for k in $(seq 0 11); do
      python3 "$repo/tests/multinode/ws_echo.py" "$balancer_ip" "$public_port" "/connect/user-$k"
    done | sort -u | tr '\n' ' ')
    if [ -n "$servers" ]; then
      echo "ok: echoes through haproxy ($balancer_ip:$public_port), from $servers"
    else
      echo "FAIL: no echo through haproxy ($balancer_ip:$public_port)"
      failed=1
    fi
  fi
  return "$failed"
}

# ---------------------------------------------------------------------------------------
# For tests: `export NAME=value` lines (`eval "$(tests/multinode/swarm.sh env)"`, or parsed);
# with N, node N's DOCKER_HOST alone (`eval "$(tests/multinode/swarm.sh env 2)"; docker ps`).
env_() {
  local n
  n=$(nodes)
  [ "$n" -gt 0 ] || die "no cluster: run up first"
  if [ $# -gt 0 ]; then
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$n" ] || die "no node $1"
    echo "export DOCKER_HOST=unix://$(node_socket "$1")"
    return
  fi
  local gateways=() admins=()
  echo "export WSCLUSTER_MULTINODE_DIR=$state"
  echo "export WSCLUSTER_MULTINODE_NODES=$n"
  echo "export WSCLUSTER_MULTINODE_STACK=$stack"
  for i in $(seq "$n"); do
    echo "export WSNODE_${i}_DOCKER_HOST=unix://$(node_socket "$i")"
    gateways+=("$(node_ip "$i"):$public_port")
    admins+=("$(node_ip "$i"):$admin_port")
  done
  # Public connections straight to a node must open with a PROXY header (see up).
  echo "export WSCLUSTER_MULTINODE_GATEWAYS=\"${gateways[*]}\""
  echo "export WSCLUSTER_MULTINODE_ADMINS=\"${admins[*]}\""
  if [ -s "$state/haproxy.pid" ]; then
    echo "export WSCLUSTER_MULTINODE_BALANCER=$balancer_ip:$public_port"
    local alone=()
    for i in $(seq "$n"); do alone+=("$balancer_ip:$((7010 + i))"); done
    echo "export WSCLUSTER_MULTINODE_BALANCER_GATEWAYS=\"${alone[*]}\""
  fi
  [ ! -s "$state/secrets.env" ] || sed 's/^/export /' "$state/secrets.env"
}

# ---------------------------------------------------------------------------------------
# Whatever state things are in: nothing here fails the script, and only what our pidfiles and
# names point at is stopped or removed.
down() {
  local started=$SECONDS n
  set +e
  n=$(nodes)
  # Nodes counted by what is there, too: a failed `up` may not have written everything.
  for dir in "$state"/wsnode-*; do
    [ -d "$dir" ] || continue
    local i=${dir##*wsnode-}
    [ "$i" -le "$n" ] 2>/dev/null || n=$i
  done
  stop_pidfile "$state/haproxy.pid" "$state/haproxy.cfg" 5
  # Leaving force-removes each node's task containers at once (no stop grace). Last node
  # first, the first (Raft's leader at the start) last.
  for i in $(seq "$n" -1 1); do
    [ -S "$(node_socket "$i")" ] || continue
    timeout 30 docker -H "unix://$(node_socket "$i")" swarm leave --force >/dev/null 2>&1
  done
  # In parallel, waited for by pid (after a failed `up`, its dockerds are our children too).
  local stops=()
  for i in $(seq "$n"); do
    local dir
    dir=$(node_dir "$i")
    [ -d "$dir" ] || continue
    # dockerd stops its containers and its own containerd as it exits.
    stop_pidfile "$dir/docker.pid" "$dir/" 30 &
    stops+=($!)
  done
  for pid in "${stops[@]}"; do wait "$pid"; done
  for i in $(seq "$n"); do
    local dir
    dir=$(node_dir "$i")
    [ -d "$dir" ] || continue
    # A dockerd that died early (or was killed) leaves its launcher, containerd, shims and
    # containers: each by its own pidfile, and only while its command line names our dirs.
    stop_pidfile "$dir/launch.pid" "$dir/" 10
    # Each container's init by its pidfile, known as ours by its cgroup (the node's parent;
    # its command line is the image's), then its shim: no pidfile of its own here, but the
    # init's parent, and its command line names our exec-root. A shim ignores SIGTERM.
    for init in "$dir"/exec/containerd/daemon/io.containerd.runtime.v2.task/*/*/init.pid; do
      [ -s "$init" ] || continue
      local pid shim
      pid=$(tr -dc 0-9 <"$init")
      [ -n "$pid" ] && grep -q ":/\(.*/\)\?$(node_name "$i")/" "/proc/$pid/cgroup" 2>/dev/null || continue
      shim=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
      kill -KILL "$pid" 2>/dev/null
      if ours "$shim" "$dir/exec/"; then kill -KILL "$shim" 2>/dev/null; fi
    done
    stop_pidfile "$dir/exec/containerd/containerd.pid" "$dir/exec/" 10
  done
  # Mounts left under our dirs (overlay2 layers, shm, network namespaces), deepest first.
  if [ -d "$state" ]; then
    findmnt -rn -o TARGET | grep -F "$state/" | sort -r | while read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target"
    done
  fi
  for i in $(seq "$n"); do
    ip netns del "$(node_name "$i")" 2>/dev/null
  done
  # Namespaces named by an earlier cluster of more nodes than this state says.
  for name in $(ip netns list | grep -oE '^wsnode-[0-9]+'); do ip netns del "$name"; done
  ip netns del "$switch" 2>/dev/null
  ip link del "$host_veth" 2>/dev/null
  # The containers' parent cgroups (--cgroup-parent wsnode-n), once empty.
  for i in $(seq "$n"); do
    # Containers' own cgroups inside first (left behind when their dockerd died).
    find /sys/fs/cgroup -mindepth 1 -maxdepth 6 -type d -name "$(node_name "$i")" 2>/dev/null |
      while read -r group; do find "$group" -depth -type d -exec rmdir {} + 2>/dev/null; done
  done
  if [ -d "$state" ] && findmnt -rn -o TARGET | grep -qF "$state/"; then
    say "mounts remain under $state: left in place"
  else
    rm -rf "$state"
  fi
  set -e
  say "down in $((SECONDS - started))s"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  deploy) deploy ;;
  status) status ;;
  check) check ;;
  env) shift; env_ "$@" ;;
  log) haproxy_log ;;
  down) down ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
