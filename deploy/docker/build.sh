#!/usr/bin/env bash
# Builds a statically linked `ferrolog` (glibc with crt-static) and the image
# `ferrolog:${FERROLOG_IMAGE_TAG:-dev}` FROM scratch, in one command.
#
#   deploy/docker/build.sh            # binary + image
#   FERROLOG_IMAGE_TAG=0.1.0 deploy/docker/build.sh
#
# It is the same build as the tests' (one profile, the static target of
# .cargo/config.toml: RocksDB is not compiled again), except for one thing:
# only the `ferrolog` (CLI) package is selected, so the test-only fault hooks
# (cargo feature `failpoints`, which the tests package turns on) are left out
# of the image; ferrolog-broker and the CLI are compiled once more
# without them.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG="${FERROLOG_IMAGE_TAG:-dev}"

cargo build --locked -p ferrolog --bin ferrolog
BIN="$(scripts/target-dir.sh)/ferrolog"
if readelf -d "$BIN" | grep -q NEEDED; then
  echo "error: $BIN needs shared libraries; the image needs a static binary" >&2
  exit 1
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/etc" "$STAGE/var/lib/ferrolog"
cp "$BIN" "$STAGE/ferrolog"
# Symbols stay (panics and profilers name functions); line tables go.
strip --strip-debug "$STAGE/ferrolog"
# Put back the workspace's `ferrolog` (with fault hooks) that the tests and
# the chaos harness spawn: both builds are cached, this only links.
cargo build --locked --workspace --bin ferrolog
echo "ferrolog:x:65532:65532:ferrolog:/var/lib/ferrolog:/sbin/nologin" > "$STAGE/etc/passwd"
echo "ferrolog:x:65532:" > "$STAGE/etc/group"
docker build --quiet -t "ferrolog:$TAG" -f deploy/docker/Dockerfile "$STAGE" >/dev/null
size=$(docker image inspect "ferrolog:$TAG" --format '{{.Size}}')
echo "built ferrolog:$TAG ($((size / 1024 / 1024)) MiB) from $BIN"
