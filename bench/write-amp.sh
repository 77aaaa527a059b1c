#!/usr/bin/env bash
# Disk write amplification of produce: bytes the brokers' processes wrote to
# disk (/proc/PID/io write_bytes) per byte of record payload acknowledged,
# on a local 3-broker cluster (RF=3, acks=all, 1 KiB records).
# Usage: bench/write-amp.sh [records]
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-100000}
source bench/lib.sh
start_cluster
"$BIN" bench produce --brokers "$BROKERS" --topic wa --partitions 4 --records 16 >/dev/null
written() { local s=0; for pid in "${PIDS[@]}"; do s=$((s + $(awk '/^write_bytes/{print $2}' "/proc/$pid/io"))); done; echo $s; }
before=$(written)
"$BIN" bench produce --brokers "$BROKERS" --topic wa --partitions 4 --producers 4 --records "$RECORDS" --record-size 1024 --acks all
# Let memtable flushes of what was written finish.
sleep 5
after=$(written)
payload=$((RECORDS * 1024))
awk -v b=$((after - before)) -v p=$payload 'BEGIN { printf "disk bytes written by 3 brokers: %.1f MB for %.1f MB of payload: %.2fx in all, %.2fx per replica\n", b/1e6, p/1e6, b/p, b/p/3 }'
