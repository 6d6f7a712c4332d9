#!/usr/bin/env bash
# Builds the image `wscluster-backend` from our own static wsbackend (no base image to pull).
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -q \
  --target x86_64-unknown-linux-gnu -p gateway-bin --bin wsbackend
# A context with the binary alone, not the whole target directory.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp target/x86_64-unknown-linux-gnu/release/wsbackend "$context/"
docker build -q -f docker/backend.Dockerfile -t wscluster-backend "$context" >/dev/null
echo "image wscluster-backend built"
