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
BIN=${FERROLOG_BIN:-target/debug/ferrolog}
[[ -x $BIN ]] || cargo build -q -p ferrolog
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port)
PEERS="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
start() { # id port
  RUST_LOG=warn "$BIN" server --node-id "$1" --listen "127.0.0.1:$2" --peers "$PEERS" --data-dir "$DIR/n$1" >>"$DIR/n$1.log" 2>&1 &
}
start 1 "$P1"; start 2 "$P2"; start 3 "$P3"
BROKERS="127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3"

for acks in all 1 0; do
  "$BIN" bench produce --brokers "$BROKERS" --topic "bench-acks-$acks" --partitions "$PRODUCERS" \
    --replication-factor 3 --records "$RECORDS" --record-size 1024 --producers "$PRODUCERS" --acks "$acks"
done

