#!/usr/bin/env bash
# Installs what the Autobahn conformance run needs, once, into $AUTOBAHN_HOME
# (default /opt/wscluster-autobahn):
#   py2/  a Python 2.7 virtualenv with wstest (autobahntestsuite is Python 2 code);
#   py3/  a Python 3 venv with websockets (the echo backend and the echo client).
# A second run finds the stamp of the same requirement files and does nothing. Only PyPI is
# used; the interpreters come from pyenv (AUTOBAHN_PY2 / AUTOBAHN_PY3 override them).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${AUTOBAHN_HOME:-/opt/wscluster-autobahn}"

stamp_of() { cat "$here/requirements-bootstrap-py2.txt" "$here/requirements-py2.txt" "$here/requirements-py3.txt" | sha256sum | cut -c1-16; }
stamp="$home/.installed-$(stamp_of)"
if [ -f "$stamp" ] && [ -x "$home/py2/bin/wstest" ] && [ -x "$home/py3/bin/python" ]; then
  echo "autobahn: using the install in $home"
  exit 0
fi

pyenv_root="${PYENV_ROOT:-${HOME:-/root}/.pyenv}"
first_of() { for p in "$@"; do [ -x "$p" ] && { echo "$p"; return 0; }; done; return 1; }
py2="${AUTOBAHN_PY2:-$(first_of "$pyenv_root"/versions/2.7*/bin/python /root/.pyenv/versions/2.7*/bin/python || true)}"
py3="${AUTOBAHN_PY3:-$(first_of "$pyenv_root"/versions/3.11*/bin/python3 /root/.pyenv/versions/3.11*/bin/python3 "$(command -v python3 || true)" || true)}"
[ -n "$py2" ] || { echo "autobahn: no Python 2.7 (looked in $pyenv_root/versions; set AUTOBAHN_PY2)"; exit 1; }
[ -n "$py3" ] || { echo "autobahn: no Python 3 (set AUTOBAHN_PY3)"; exit 1; }

echo "autobahn: installing into $home (python2: $py2, python3: $py3)"
started=$SECONDS
rm -rf "$home/py2" "$home/py3" "$home/bootstrap" "$home"/.installed-*
mkdir -p "$home"
log="$home/install.log"
: >"$log"
run() { "$@" >>"$log" 2>&1 || { echo "autobahn: install failed: $*"; tail -40 "$log"; exit 1; }; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONWARNINGS=ignore

# pyenv's 2.7 has pip but neither venv nor virtualenv: bring virtualenv into a scratch
# folder just to create the venv.
run "$py2" -m pip install --target "$home/bootstrap" -r "$here/requirements-bootstrap-py2.txt"
run env PYTHONPATH="$home/bootstrap" "$py2" -m virtualenv --no-periodic-update "$home/py2"
rm -rf "$home/bootstrap"
run "$home/py2/bin/pip" install -r "$here/requirements-py2.txt"
run "$home/py2/bin/wstest" --autobahnversion

run "$py3" -m venv "$home/py3"
run "$home/py3/bin/pip" install -r "$here/requirements-py3.txt"
run "$home/py3/bin/python" -c "import websockets"

touch "$stamp"
echo "autobahn: installed in $((SECONDS - started)) s ($("$home/py2/bin/wstest" --autobahnversion 2>/dev/null | tr '\n' ' '))"
