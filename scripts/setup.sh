#!/usr/bin/env bash
# Installs what building and testing Ferrolog needs on a fresh Debian machine
# with a Rust toolchain: libclang for RocksDB's bindgen, a C++ compiler.
# protoc is not needed (the build uses protoc-bin-vendored). Idempotent.
set -euo pipefail

need=()
command -v c++ >/dev/null 2>&1 || need+=(g++)
# bindgen loads libclang at build time.
# (libclang.so / libclang-N.so only: libclang-cpp.so is a different library
# that bindgen cannot use, and some images ship it alone.)
if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && ! compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null \
  && ! compgen -G "/usr/lib/*-linux-gnu/libclang-[0-9]*.so*" >/dev/null && ! compgen -G "/usr/lib/*-linux-gnu/libclang.so*" >/dev/null; then
  need+=(libclang-dev)
fi
command -v make >/dev/null 2>&1 || need+=(make)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$c"
  fi
done
echo "setup: ok"
