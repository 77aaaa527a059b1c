#!/usr/bin/env bash
# The one command that runs Ferrolog's tests on a fresh machine: installs
# what is missing, then runs every test of the workspace (unit tests,
# openraft's storage conformance suite, the SIGKILL crash test, corruption
# tests). Uses cargo-nextest when it is installed, cargo test otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The cluster tests run the real `ferrolog` binary: build every target with
# the same feature set the test run uses, so nothing is compiled twice.
cargo build --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests: they run here (with the workspace's features, so nothing is compiled again).
  cargo test --doc --workspace
else
  cargo test --workspace --no-fail-fast "$@"
fi
