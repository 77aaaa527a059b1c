#!/usr/bin/env bash
# Side by side, on this machine, in one run:
#   1. the disk: fsync'd sequential write bandwidth and the latency of one
#      small O_DSYNC write;
#   2. the roofline (bench/roofline): TCP + group fsync on 3 processes, no
#      consensus: the least a replicated durable append can cost here;
#   3. NATS JetStream: 3 nats-server processes (Debian's), an R3 file stream,
#      driven by bench/jetstream (async-nats), with its default fsync
#      (every 2 minutes) and, where the server allows, fsync on every write;
#   4. Ferrolog: 3 brokers, RF=3 topics, `ferrolog bench produce|consume`.
# Same workloads everywhere: closed loop, each producer keeps one batch of
# 16 records in flight. Results: one JSON line per measurement in
# $OUT/results.jsonl and the tables in $OUT/tables.md (bench/compare_report.py).
#
#   bench/compare.sh                      # DUR=10 s per case
#   DUR=3 bench/compare.sh                # quick
#   FERROLOG_BIN=... ROOFLINE_BIN=... JETSTREAM_BENCH_BIN=... bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
T=${CARGO_TARGET_DIR:-target}/debug
FERROLOG_BIN=${FERROLOG_BIN:-$T/ferrolog}
ROOFLINE_BIN=${ROOFLINE_BIN:-$T/ferrolog-roofline}
JETSTREAM_BENCH_BIN=${JETSTREAM_BENCH_BIN:-$T/ferrolog-jetstream-bench}
OUT=${OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
for b in "$FERROLOG_BIN" "$ROOFLINE_BIN" "$JETSTREAM_BENCH_BIN"; do
  [[ -x $b ]] || { echo "error: $b missing: cargo build --workspace --all-targets" >&2; exit 1; }
done
command -v nats-server >/dev/null || { echo "error: nats-server missing (apt-get install nats-server)" >&2; exit 1; }
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
: > "$RES"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# record SYSTEM VARIANT JSON: appends one result line.
record() { python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["system"]=sys.argv[1]; d["variant"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" "$3" | tee -a "$RES"; }

# Machine.
record machine "" "$(python3 -c 'import json,os,platform; print(json.dumps({"cpus": os.cpu_count(), "kernel": platform.release(), "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].split(":", 1)[1].strip(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE")*os.sysconf("SC_PHYS_PAGES")/2**30)}))')"

# 1. Disk.
bw=$(dd if=/dev/zero of="$WORK/dd" bs=1M count=256 conv=fdatasync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
dsync_us=$(python3 -c '
import subprocess, sys, time
t = time.monotonic()
subprocess.run(["dd", "if=/dev/zero", "of=" + sys.argv[1], "bs=4k", "count=2000", "oflag=dsync"], check=True, capture_output=True)
print(round((time.monotonic() - t) / 2000 * 1e6))' "$WORK/dd4k")
record disk "" "{\"seq_write_fdatasync\": \"$bw\", \"dsync_4k_write_us\": $dsync_us}"
rm -f "$WORK"/dd*

WORKLOADS=("1024 1" "1024 16" "100 1" "100 16")

# 2. Roofline.
for w in "${WORKLOADS[@]}"; do
  read -r size producers <<< "$w"
  record roofline "" "$("$ROOFLINE_BIN" run --producers "$producers" --record-size "$size" --batch-records 16 --duration "$DUR" --dir "$WORK" --json | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(record_size=$size, producers=$producers); print(json.dumps(d))")"
done

# 3. NATS JetStream R3, default fsync and (if accepted) sync_interval: always.
nats_cluster() { # $1 = extra jetstream config; sets NATS_URLS
  local c=() r=() i
  for i in 1 2 3; do c+=("$(port)"); r+=("$(port)"); done
  NATS_URLS=""
  NATS_PIDS=()
  for i in 0 1 2; do
    cat > "$WORK/nats$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${c[$i]}
jetstream { store_dir: "$WORK/nats$i"${1:+, $1} }
cluster { name: bench, listen: 127.0.0.1:${r[$i]}, routes: [nats-route://127.0.0.1:${r[0]}, nats-route://127.0.0.1:${r[1]}, nats-route://127.0.0.1:${r[2]}] }
CONF
    nats-server -c "$WORK/nats$i.conf" > "$WORK/nats$i.log" 2>&1 &
    NATS_PIDS+=($!); PIDS+=($!)
    NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:${c[$i]}"
  done
}
nats_stop() { for p in "${NATS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait "${NATS_PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"/nats*; }
js_run() { # variant size producers
  local out i
  for i in $(seq 1 30); do # the JetStream meta group needs a few seconds
    if out=$("$JETSTREAM_BENCH_BIN" --servers "$NATS_URLS" --replicas 3 --producers "$3" --subjects "$3" \
        --record-size "$2" --batch-records 16 --duration "$DUR" --json 2>"$WORK/js.err"); then
      record jetstream "$1" "$(echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(record_size=$2, producers=$3); print(json.dumps(d))")"
      return
    fi
    sleep 1
  done
  echo "jetstream bench failed: $(cat "$WORK/js.err")" >&2
  return 1
}
nats-server --version
for variant in default always; do
  extra=""
  [ "$variant" = always ] && extra="sync_interval: always"
  if [ -n "$extra" ] && ! nats-server -c <(printf 'jetstream { store_dir: "%s/probe", %s }\n' "$WORK" "$extra") -t >/dev/null 2>&1; then
    record jetstream "$variant" "{\"skipped\": \"nats-server $(nats-server --version | awk '{print $2}') does not accept '$extra'\"}"
    continue
  fi
  nats_cluster "$extra"
  for w in "${WORKLOADS[@]}"; do
    read -r size producers <<< "$w"
    js_run "$variant" "$size" "$producers"
  done
  nats_stop
done

# 4. Ferrolog.
FL_PIDS=()
ports=("$(port)" "$(port)" "$(port)")
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
for i in 1 2 3; do
  RUST_LOG=warn "$FERROLOG_BIN" server --node-id "$i" --listen "127.0.0.1:${ports[$((i - 1))]}" --peers "$peers" \
    --data-dir "$WORK/fl$i" > "$WORK/fl$i.log" 2>&1 &
  PIDS+=($!)
done
BROKERS="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
n=0
fl_produce() { # variant size producers acks partitions [extra args...]
  local variant=$1 size=$2 producers=$3 acks=$4 parts=$5
  shift 5
  n=$((n + 1))
  record ferrolog "$variant" "$("$FERROLOG_BIN" bench produce --brokers "$BROKERS" --topic "t$n" --partitions "$parts" \
    --replication-factor 3 --producers "$producers" --record-size "$size" --batch-records 16 --acks "$acks" \
    --duration "$DUR" --output json "$@")"
}
for w in "${WORKLOADS[@]}"; do
  read -r size producers <<< "$w"
  for acks in all 1 0; do
    fl_produce "acks=$acks" "$size" "$producers" "$acks" 12
  done
done
# One partition instead of 12; keyed records through the batching producer.
fl_produce "acks=all 1 partition" 1024 16 all 1
fl_produce "acks=all keyed linger 5ms" 1024 16 all 12 --keyed --linger-ms 5
fl_produce "acks=all keyed linger 5ms" 100 16 all 12 --keyed --linger-ms 5
# Consume: catch up from the start of a large topic (1 KiB records).
fl_produce "acks=1 (consume source)" 1024 16 1 12
record ferrolog "consume catch-up" "$("$FERROLOG_BIN" bench consume --brokers "$BROKERS" --topic "t$n" --output json)"
# End-to-end latency at a fixed rate: a consumer from the latest offsets
# while a producer sends at RATE records/s (batches of 16, open loop).
RATE=${RATE:-2000}
e2e_records=$((RATE * DUR / 16 * 16))
"$FERROLOG_BIN" bench produce --brokers "$BROKERS" --topic e2e --partitions 12 --replication-factor 3 --records 16 --batch-records 16 >/dev/null
"$FERROLOG_BIN" bench consume --brokers "$BROKERS" --topic e2e --from-latest --records "$e2e_records" --output json > "$WORK/e2e.json" &
cpid=$!
sleep 2
record ferrolog "acks=all rate $RATE/s" "$("$FERROLOG_BIN" bench produce --brokers "$BROKERS" --topic e2e --producers 4 --record-size 1024 --batch-records 16 --acks all --rate "$RATE" --duration "$DUR" --output json)"
wait "$cpid"
record ferrolog "end-to-end at $RATE/s" "$(cat "$WORK/e2e.json")"

python3 bench/compare_report.py "$RES" | tee "$OUT/tables.md"
echo "results: $RES"
