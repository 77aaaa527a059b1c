#!/usr/bin/env bash
# Costs that must not grow with a partition's length, on a local 3-broker
# cluster (RF=3):
#  - fetch latency at the head and at the tail, and ListOffsets by
#    timestamp latency, for one partition of each given size;
#  - reading the largest partition front to back: MB/s per fifth (flat,
#    not decaying);
#  - the RSS of a follower that was down while the largest partition was
#    written and retention trimmed it, while it catches up by snapshot;
#  - one offset commit's latency with 1 consumer group present vs 1,000.
# Usage: bench/sizes.sh [MB ...]            (default: 10 1000 5000)
# Disk: about 3 x (sum of sizes) in all, plus RocksDB's compaction room.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(10 1000 5000)
largest=0
for mb in "${SIZES[@]}"; do ((mb > largest)) && largest=$mb; done
SERVER_ARGS="--retention-check-ms 1000"
source bench/lib.sh
start_cluster
B1=${BROKERS%%,*}

describe() { "$BIN" topic describe --brokers "$BROKERS" "$1" --output json; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); p=d['partitions'][0]; print($1)"; }
rss_mb() { awk '/^VmRSS/{print int($2/1024)}' "/proc/$1/status"; }

for mb in "${SIZES[@]}"; do
  topic="sizes-$mb"
  records=$((mb * 1000000 / 4096))
  if ((mb == largest)); then
    # Retention keeps 80 %, so the leader trims and purges its log; broker
    # 3 is down meanwhile and can only catch up by snapshot.
    "$BIN" topic create --brokers "$BROKERS" "$topic" --partitions 1 --replication-factor 3 \
      --config "retention.bytes=$((mb * 800000))" >/dev/null
    kill "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true
  fi
  echo "== $topic: $mb MB in 64 KiB batches (16 records of 4 KiB), acks=1"
  "$BIN" bench produce --brokers "$BROKERS" --topic "$topic" --partitions 1 --records "$records" \
    --record-size 4096 --batch-records 16 --producers 4 --acks 1 | tail -1
  if ((mb != largest)); then
    for _ in $(seq 900); do
      [[ $(describe "$topic" | field 'max(p["lag"])') == 0 ]] && break
      sleep 1
    done
  else
    # Retention trims to 80 %: wait until the log start stops moving.
    prev=-1
    for _ in $(seq 120); do
      ls=$(describe "$topic" | field 'p["log_start_offset"]')
      ((ls > 0 && ls == prev)) && break
      prev=$ls
      sleep 2
    done
  fi
  "$BIN" bench fetch --brokers "$B1" --topic "$topic" --samples 300 --seed 42
done

topic="sizes-$largest"
echo "== $topic front to back"
"$BIN" bench fetch --brokers "$B1" --topic "$topic" --sweep

echo "== broker 3 catches up on $topic"
ports=(${BROKERS//,/ })
RUST_LOG=info "$BIN" server --node-id 3 --listen "${ports[2]}" \
  --peers "1=${ports[0]},2=${ports[1]},3=${ports[2]}" --data-dir "$DIR/n3" $SERVER_ARGS >>"$DIR/n3.log" 2>&1 &
PIDS[2]=$!
base=0 peak=0 t0=$(date +%s.%N)
for _ in $(seq 6000); do
  r=$(rss_mb "${PIDS[2]}" 2>/dev/null || echo 0)
  ((base == 0 && r > 0)) && base=$r
  ((r > peak)) && peak=$r
  lag=$(describe "$topic" | field 'dict(zip(p["replicas"], p["lag"]))[3]' 2>/dev/null || echo x)
  [[ $lag == 0 ]] && break
  sleep 0.1
done
t1=$(date +%s.%N)
hw=$(describe "$topic" | field 'p["high_watermark"] - p["log_start_offset"]')
how="replication"
grep -q "installed snapshot" "$DIR/n3.log" && how="snapshot"
printf 'broker 3 caught up on %s (%s records retained) by %s in %.1f s; RSS %s MiB at start, %s MiB peak\n' \
  "$topic" "$hw" "$how" "$(echo "$t1 - $t0" | bc)" "$base" "$peak"

echo "== offset commits: 1 group present vs 1000 (100 offsets each)"
"$BIN" bench commit --brokers "$BROKERS" --groups 1,1000 --partitions 100 --commits 1000
