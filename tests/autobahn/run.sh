#!/usr/bin/env bash
# Autobahn|Testsuite through the gateway and directly; the verdicts must be the same and
# passing. Installs wstest and websockets when missing (install.sh), builds the gateway and
# wsecho, runs harness.py under an overall time limit, writes docs/conformance.md.
#
#   bash tests/autobahn/run.sh
#   AUTOBAHN_ARGS=--tls AUTOBAHN_OUT=target/autobahn-tls AUTOBAHN_DOC=docs/conformance-tls.md \
#     bash tests/autobahn/run.sh     # the clients reach the gateway over wss:// (TLS)
#
# Environment: AUTOBAHN_HOME (the install, default /opt/wscluster-autobahn), AUTOBAHN_OUT
# (reports and logs, default target/autobahn), AUTOBAHN_DOC (default docs/conformance.md),
# AUTOBAHN_ARGS (more harness.py flags, e.g. "--suites core --modes fuzzingclient",
# "--full-deflate", or "--tls": certificates made at run time with openssl, the gateways
# serving wss://, agent gateway-tls), AUTOBAHN_TIMEOUT (seconds for the whole run, default
# 1500), GATEWAY_BIN, WSECHO_BIN (a gateway-bin, a wsecho to use instead of building the
# release ones; wsecho is the echo peer of 1.* to 10.*, websockets that of 12.* and 13.*).
set -euo pipefail
cd "$(dirname "$0")/../.."
export AUTOBAHN_HOME="${AUTOBAHN_HOME:-/opt/wscluster-autobahn}"
export PYTHONDONTWRITEBYTECODE=1
out="${AUTOBAHN_OUT:-target/autobahn}"
doc="${AUTOBAHN_DOC:-docs/conformance.md}"

started=$SECONDS
bash tests/autobahn/install.sh
echo "autobahn: install step $((SECONDS - started)) s"

if [ -z "${GATEWAY_BIN:-}" ] || [ -z "${WSECHO_BIN:-}" ]; then
  started=$SECONDS
  cargo build --release --locked -p gateway-bin --bin gateway-bin -p wscluster-tools --bin wsecho
  GATEWAY_BIN="${GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/gateway-bin}"
  WSECHO_BIN="${WSECHO_BIN:-${CARGO_TARGET_DIR:-target}/release/wsecho}"
  echo "autobahn: build step $((SECONDS - started)) s"
fi

mkdir -p "$out"
# harness.py stops what it starts; this trap covers a harness killed outright.
cleanup() {
  if [ -f "$out/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -- "-$pid" 2>/dev/null || true
    done <"$out/pids"
    : >"$out/pids"
  fi
}
trap cleanup EXIT

started=$SECONDS
status=0
# shellcheck disable=SC2086 # AUTOBAHN_ARGS is a list of flags
timeout -k 15 "${AUTOBAHN_TIMEOUT:-1500}" "$AUTOBAHN_HOME/py3/bin/python" tests/autobahn/harness.py \
  --gateway "$GATEWAY_BIN" --wsecho "$WSECHO_BIN" --wstest "$AUTOBAHN_HOME/py2/bin/wstest" \
  --out "$out" --doc "$doc" ${AUTOBAHN_ARGS:-} || status=$?
[ "$status" = 124 ] && echo "autobahn: the whole run passed its ${AUTOBAHN_TIMEOUT:-1500} s limit"
echo "autobahn: run step $((SECONDS - started)) s"
exit "$status"
