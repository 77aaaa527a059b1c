#!/usr/bin/env bash
# Produce throughput per acks level on a local 3-broker cluster (RF=3), run
# side by side in one go. Prints the results; docs/benchmarks.md records them.
# (Failover time is printed by tests/cluster_failover.rs.)
#
# Usage: bench/produce.sh [records-per-case] [producers]
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-100000}
PRODUCERS=${2:-4}
source bench/lib.sh
start_cluster

for acks in all 1 0; do
  "$BIN" bench produce --brokers "$BROKERS" --topic "bench-acks-$acks" --partitions "$PRODUCERS" \
    --replication-factor 3 --records "$RECORDS" --record-size 1024 --producers "$PRODUCERS" --acks "$acks"
done

