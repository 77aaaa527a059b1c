#!/usr/bin/env bash
# Runs the Python example against a running cluster: a venv with grpcio and
# grpcio-tools (PyPI), stubs generated from ../../proto, then the example.
# Usage: examples/python/run.sh [BROKER_HOST:PORT]
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements.txt googleapis-common-protos
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$VENV/bin/python" -m grpc_tools.protoc -I ../../proto --python_out="$OUT" --grpc_python_out="$OUT" \
  ../../proto/ferrolog/v1/ferrolog.proto
touch "$OUT/ferrolog/__init__.py" "$OUT/ferrolog/v1/__init__.py"
PYTHONPATH="$OUT" "$VENV/bin/python" ferrolog_example.py "${1:-127.0.0.1:9092}"
