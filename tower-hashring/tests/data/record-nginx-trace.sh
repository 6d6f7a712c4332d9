#!/usr/bin/env bash
# Records which upstream a real nginx `hash $arg_key consistent;` picks for
# 5000 deterministic keys, so the Rust ring can be checked against it.
# Run as root (or any user allowed to bind 127.0.0.1:19100-19108); loopback only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/nginx-chash-trace.txt"
ports=(19101 19102 19103 19104 19105 19106 19107 19108)
weights=(1 1 1 2 1 3 1 1)

tmp=$(mktemp -d)
# nginx workers drop to an unprivileged user when started as root; let them traverse.
chmod 755 "$tmp"
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

upstream=""; backends=""
for i in "${!ports[@]}"; do
  upstream+="    server 127.0.0.1:${ports[$i]} weight=${weights[$i]};"$'\n'
  backends+="  server { listen 127.0.0.1:${ports[$i]}; return 200 \"\$server_addr:\$server_port\\n\"; }"$'\n'
done

# Everything (pid, logs, temp paths) lives in $tmp so no /var/lib/nginx access is needed.
cat > "$tmp/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/error.log warn;
events { worker_connections 64; }
http {
  access_log $tmp/access.log;
  client_body_temp_path $tmp/client_body;
  proxy_temp_path $tmp/proxy;
  fastcgi_temp_path $tmp/fastcgi;
  uwsgi_temp_path $tmp/uwsgi;
  scgi_temp_path $tmp/scgi;
  keepalive_requests 100000;
  upstream ring {
    hash \$arg_key consistent;
$upstream  }
$backends
  # No retries: a failed backend must show up as an error, not as a silently different pick.
  server { listen 127.0.0.1:19100; location / { proxy_next_upstream off; proxy_pass http://ring; } }
}
CONF

nginx -t -q -c "$tmp/nginx.conf" -p "$tmp"
nginx -c "$tmp/nginx.conf" -p "$tmp" &
pid=$!

version=$(nginx -v 2>&1)
pkg=$(dpkg-query -W -f='${Package} ${Version}' nginx 2>/dev/null || echo "unknown package")

TMP="$tmp" OUT="$out" VERSION="$version" PKG="$pkg" \
PORTS="${ports[*]}" WEIGHTS="${weights[*]}" python3 - <<'PY'
import http.client, os, random, string, time

ports, weights = os.environ["PORTS"].split(), os.environ["WEIGHTS"].split()
servers = [f"127.0.0.1:{p}" for p in ports]

# Wait (bounded) for the front server to answer.
deadline = time.time() + 10
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", 19100, timeout=2)
        c.request("GET", "/?key=probe"); c.getresponse().read(); c.close(); break
    except OSError:
        if time.time() > deadline: raise SystemExit("nginx did not come up")
        time.sleep(0.1)

# URL-safe alphabet so $arg_key (raw, not percent-decoded) equals the key exactly.
alphabet = string.ascii_letters + string.digits + "_-"
rng = random.Random(42)
keys = [f"user-{i}" for i in range(3000)]
keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(2000)]

conn = http.client.HTTPConnection("127.0.0.1", 19100, timeout=5)
lines = []
for k in keys:
    conn.request("GET", "/?key=" + k)
    r = conn.getresponse()
    body = r.read().decode().strip()
    if r.status != 200 or body not in servers:
        raise SystemExit(f"unexpected answer for {k!r}: {r.status} {body!r}")
    lines.append(f"key {k} {body}")

tmp_out = os.environ["OUT"] + ".tmp"
with open(tmp_out, "w") as f:
    f.write(f"# recorded from a real nginx ({os.environ['VERSION']}, Debian {os.environ['PKG']}) "
            f"with `hash $arg_key consistent;` by running: tower-hashring/tests/data/record-nginx-trace.sh\n")
    for s, w in zip(servers, weights):
        f.write(f"server {s} {w}\n")
    f.write("\n".join(lines) + "\n")
errlog = open(os.path.join(os.environ["TMP"], "error.log")).read().strip()
if errlog:
    raise SystemExit("nginx logged warnings/errors, trace not trusted:\n" + errlog)
os.replace(tmp_out, os.environ["OUT"])
print(f"wrote {len(lines)} keys to {os.environ['OUT']}")
PY
