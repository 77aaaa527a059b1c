#!/usr/bin/env bash
# Disk write amplification of produce: bytes the brokers' processes wrote to
# disk (/proc/PID/io write_bytes) per byte of record payload acknowledged,
# on a local 3-broker cluster (RF=3, acks=all, 1 KiB records).
# Usage: bench/write-amp.sh [records]
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-100000}
BIN=${FERROLOG_BIN:-target/debug/ferrolog}
[[ -x $BIN ]] || cargo build -q -p ferrolog
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port)
PEERS="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
PIDS=()
for i in 1 2 3; do
  p=$(eval echo "\$P$i")
  RUST_LOG=warn "$BIN" server --node-id $i --listen "127.0.0.1:$p" --peers "$PEERS" --data-dir "$DIR/n$i" >>"$DIR/n$i.log" 2>&1 &
  PIDS+=($!)
done
BROKERS="127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3"
"$BIN" bench produce --brokers "$BROKERS" --topic wa --partitions 4 --records 16 >/dev/null
written() { local s=0; for pid in "${PIDS[@]}"; do s=$((s + $(awk '/^write_bytes/{print $2}' "/proc/$pid/io"))); done; echo $s; }
before=$(written)
"$BIN" bench produce --brokers "$BROKERS" --topic wa --partitions 4 --producers 4 --records "$RECORDS" --record-size 1024 --acks all
# Let memtable flushes of what was written finish.
sleep 5
after=$(written)
payload=$((RECORDS * 1024))
awk -v b=$((after - before)) -v p=$payload 'BEGIN { printf "disk bytes written by 3 brokers: %.1f MB for %.1f MB of payload: %.2fx in all, %.2fx per replica\n", b/1e6, p/1e6, b/p, b/p/3 }'
