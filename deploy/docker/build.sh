#!/usr/bin/env bash
# Builds a statically linked `ferrolog` (glibc with crt-static) and the image
# `ferrolog:${FERROLOG_IMAGE_TAG:-dev}` FROM scratch, in one command.
#
#   deploy/docker/build.sh            # binary + image
#   FERROLOG_IMAGE_TAG=0.1.0 deploy/docker/build.sh
#
# The image ships the binary the tests ran: the same build (one profile, the
# static target of .cargo/config.toml, the workspace's features), so nothing
# is compiled again after `make test`. Selecting `-p ferrolog` alone would
# resolve other features for a dozen dependencies (tokio among them) and
# recompile half the tree (~10 minutes on a fresh 2-core machine). The
# workspace's features include the test fault hooks (cargo feature
# `failpoints`); they are inert unless FERROLOG_FAILPOINTS is set, and a
# broker that finds it set says so at WARN (crates/broker/src/failpoints.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG="${FERROLOG_IMAGE_TAG:-dev}"

cargo build --locked --workspace --all-targets
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
echo "ferrolog:x:65532:65532:ferrolog:/var/lib/ferrolog:/sbin/nologin" > "$STAGE/etc/passwd"
echo "ferrolog:x:65532:" > "$STAGE/etc/group"
docker build --quiet -t "ferrolog:$TAG" -f deploy/docker/Dockerfile "$STAGE" >/dev/null
size=$(docker image inspect "ferrolog:$TAG" --format '{{.Size}}')
echo "built ferrolog:$TAG ($((size / 1024 / 1024)) MiB) from $BIN"
