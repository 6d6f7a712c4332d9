#!/usr/bin/env bash
# Builds the images `wscluster-backend` and `wscluster-gateway` from our own static binaries
# (no base image to pull: FROM scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -q \
  --target x86_64-unknown-linux-gnu -p reference-backend --bin wsbackend -p gateway-bin --bin gateway-bin
# A context with the binary alone, not the whole target directory.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for image in backend gateway; do
  binary=$([ "$image" = backend ] && echo wsbackend || echo gateway-bin)
  rm -f "$context"/*
  cp "target/x86_64-unknown-linux-gnu/release/$binary" "$context/"
  docker build -q -f "docker/$image.Dockerfile" -t "wscluster-$image" "$context" >/dev/null
  echo "image wscluster-$image built"
done
