#!/usr/bin/env bash
# Against a running `make dev` cluster (brokers 127.0.0.1:9092-9094, metrics
# on 10092-10094): makes every kind of series appear (records produced, a
# consumer group behind, a refused request), scrapes all brokers, and checks
# that every metric the Grafana dashboard and the alert rules name exists.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FERROLOG_BIN:-.ferrolog-dev/bin/ferrolog}
B=127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094
python3 -c "import yaml" 2>/dev/null || pip install -q pyyaml
"$BIN" topic create --brokers "$B" observability --partitions 2 --replication-factor 3 >/dev/null 2>&1 || true
seq 1 50 | "$BIN" produce --brokers "$B" observability >/dev/null
"$BIN" consume --brokers "$B" observability --from-beginning --max-messages 10 --timeout-ms 5000 >/dev/null
# A group that consumed nothing: 50 records behind.
"$BIN" group reset-offsets --brokers "$B" observability-lag --topic observability --to-earliest >/dev/null
# A refused request (a fetch of an unknown topic, sent straight to a broker)
# for the error series.
"$BIN" bench fetch --brokers 127.0.0.1:9092 --topic no-such-topic-here >/dev/null 2>&1 || true
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for _ in $(seq 1 60); do
  for p in 10092 10093 10094; do curl -sf "http://127.0.0.1:$p/metrics" >"$dir/$p.txt" || true; done
  grep -qh '^ferrolog_consumer_group_lag_seconds{group="observability-lag"' "$dir"/*.txt && break
  sleep 1
done
grep -h '^ferrolog_consumer_group_lag_records{group="observability-lag"' "$dir"/*.txt
python3 deploy/check_observability.py "$dir"/*.txt
