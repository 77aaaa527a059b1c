#!/usr/bin/env bash
# What one offset commit costs with 1 consumer group present vs 1,000 (each
# with an offset committed for every partition of a 100-partition topic),
# on a local 3-broker cluster: `ferrolog bench commit`.
# Usage: bench/commits.sh [GROUP COUNTS]        (default: 1,1000)
# FERROLOG_SERVER_BIN=path runs the brokers from another build, e.g. the
# one before per-key metadata, side by side with this one.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${1:-1,1000}
source bench/lib.sh
start_cluster
"$BIN" bench commit --brokers "$BROKERS" --groups "$COUNTS" --partitions 100 --commits 1000
