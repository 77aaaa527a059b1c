#!/usr/bin/env bash
# Idle cost of partition replicas: starts 3 brokers, creates one topic with
# N partitions at RF=3 (so every broker holds N replicas, leading ~N/3),
# waits for every partition to have a leader, then samples each broker's CPU
# time and RSS over a quiet window. Prints CPU% (of one core) and RSS MiB.
#
# Usage: bench/idle.sh [partitions] [window-seconds]
# Compare with quiescing off: SERVER_ARGS=--no-quiesce bench/idle.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
WINDOW=${2:-30}
source bench/lib.sh
start_cluster
sample() { # pid -> "cpu_ticks rss_kib"
  awk '{print $14+$15}' "/proc/$1/stat" | tr '\n' ' '; awk '/VmRSS/{print $2}' "/proc/$1/status"
}
# Baseline with no partitions.
sleep 5
report() { # label
  declare -A T0
  for pid in "${PIDS[@]}"; do read -r t _ < <(sample "$pid"); T0[$pid]=$t; done
  sleep "$WINDOW"
  local hz; hz=$(getconf CLK_TCK)
  for pid in "${PIDS[@]}"; do
    read -r t rss < <(sample "$pid")
    awk -v l="$1" -v p="$pid" -v d=$((t - T0[$pid])) -v hz="$hz" -v w="$WINDOW" -v r="$rss" \
      'BEGIN { printf "%s broker pid %d: CPU %.1f%% of a core, RSS %.0f MiB\n", l, p, 100*d/hz/w, r/1024 }'
  done
}
report "0 partitions:"
# One record per create keeps the tool's wait-for-leaders logic: bench with 1 record.
start=$(date +%s)
"$BIN" bench produce --brokers "$BROKERS" --topic idle --partitions "$N" --replication-factor 3 --records 1 --batch-records 1 >/dev/null
echo "created $N partitions (RF=3) and all have leaders after $(( $(date +%s) - start ))s"
sleep 5
report "$N partitions:"
