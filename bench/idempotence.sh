#!/usr/bin/env bash
# The cost of idempotence: acks=all produce with and without idempotent
# producers, side by side on one local 3-broker cluster (RF=3), alternating
# the two modes twice so that drift on a noisy machine hits both alike.
#
# Usage: bench/idempotence.sh [records-per-case] [producers]
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-100000}
PRODUCERS=${2:-4}
source bench/lib.sh
start_cluster

for round in 1 2; do
  for mode in plain idempotent; do
    flag=""
    [[ $mode == idempotent ]] && flag="--idempotence"
    "$BIN" bench produce --brokers "$BROKERS" --topic "bench-$mode-$round" --partitions "$PRODUCERS" \
      --replication-factor 3 --records "$RECORDS" --record-size 1024 --producers "$PRODUCERS" --acks all $flag
  done
done
