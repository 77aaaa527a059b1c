#!/usr/bin/env bash
# Prints the directory holding the binaries of the one build (the `dev`
# profile on the static target of .cargo/config.toml), e.g.
#   "$(scripts/target-dir.sh)/ferrolog" server ...
# `--triple` prints the target triple alone.
set -euo pipefail
triple="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
if [[ "${1:-}" == "--triple" ]]; then
  echo "$triple"
  exit 0
fi
root="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
echo "$root/$triple/debug"
