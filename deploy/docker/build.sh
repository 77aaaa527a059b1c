#!/usr/bin/env bash
# Builds a statically linked `ferrolog` (release, glibc with crt-static) and
# the image `ferrolog:${FERROLOG_IMAGE_TAG:-dev}` FROM scratch, in one command.
#
#   deploy/docker/build.sh            # binary + image
#   FERROLOG_IMAGE_TAG=0.1.0 deploy/docker/build.sh
#
# The explicit --target keeps crt-static away from build scripts and
# proc-macro crates (which must stay dynamic). It is a second, separate
# build from the dev profile the tests use (RocksDB's C++ is compiled again,
# ~10 minutes on 2 cores the first time).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=x86_64-unknown-linux-gnu
TAG="${FERROLOG_IMAGE_TAG:-dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" --bin ferrolog
BIN="$CARGO_TARGET_DIR/$TARGET/release/ferrolog"
if readelf -d "$BIN" | grep -q NEEDED; then
  echo "error: $BIN needs shared libraries; the image needs a static binary" >&2
  exit 1
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/etc" "$STAGE/var/lib/ferrolog"
cp "$BIN" "$STAGE/ferrolog"
echo "ferrolog:x:65532:65532:ferrolog:/var/lib/ferrolog:/sbin/nologin" > "$STAGE/etc/passwd"
echo "ferrolog:x:65532:" > "$STAGE/etc/group"
docker build --quiet -t "ferrolog:$TAG" -f deploy/docker/Dockerfile "$STAGE" >/dev/null
size=$(docker image inspect "ferrolog:$TAG" --format '{{.Size}}')
echo "built ferrolog:$TAG ($((size / 1024 / 1024)) MiB) from $BIN"
