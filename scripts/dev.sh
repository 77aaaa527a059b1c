#!/usr/bin/env bash
# `make dev` / `make dev-stop`: a local 3-broker cluster in the background.
#   start: installs what is missing, builds (the same build `make test` uses),
#          starts `ferrolog dev` (brokers on 127.0.0.1:9092-9094, data in
#          .ferrolog-dev/data), waits until every broker serves, and links the
#          binary to .ferrolog-dev/bin/ferrolog.
#   stop:  stops it (SIGTERM: brokers hand off leadership and flush).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.ferrolog-dev
case "${1:-start}" in
  start)
    if [[ -f $DEV/pid ]] && kill -0 "$(cat $DEV/pid)" 2>/dev/null; then
      echo "dev cluster already running (pid $(cat $DEV/pid)); make dev-stop stops it"
      exit 0
    fi
    scripts/setup.sh >/dev/null
    cargo build --workspace --all-targets
    BIN="$(realpath "$(scripts/target-dir.sh)/ferrolog")"
    mkdir -p $DEV/bin
    ln -sfn "$BIN" $DEV/bin/ferrolog
    nohup "$BIN" dev --data-dir "$PWD/$DEV/data" >$DEV/dev.log 2>&1 &
    echo $! >$DEV/pid
    for _ in $(seq 1 600); do
      if grep -q "stop: Ctrl-C" $DEV/dev.log; then
        grep "^broker" $DEV/dev.log
        echo "ferrolog: $PWD/$DEV/bin/ferrolog   (export PATH=\$PWD/$DEV/bin:\$PATH)"
        exit 0
      fi
      if ! kill -0 "$(cat $DEV/pid)" 2>/dev/null; then
        cat $DEV/dev.log
        echo "dev cluster failed to start; broker logs: $DEV/data/node-*/broker.log" >&2
        exit 1
      fi
      sleep 0.1
    done
    echo "dev cluster not ready after 60 s; see $DEV/dev.log" >&2
    exit 1
    ;;
  stop)
    if [[ -f $DEV/pid ]] && kill -0 "$(cat $DEV/pid)" 2>/dev/null; then
      pid=$(cat $DEV/pid)
      kill -TERM "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      echo "dev cluster stopped"
    fi
    rm -f $DEV/pid
    ;;
  *)
    echo "usage: scripts/dev.sh start|stop" >&2
    exit 2
    ;;
esac
