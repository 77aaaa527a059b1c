# Shared by the bench scripts: a local 3-broker cluster on free loopback
# ports in a temp dir, stopped when the calling script exits.
# After `start_cluster`: $BIN, $DIR, $BROKERS and the PIDS array are set.
# $SERVER_ARGS, if set, is added to every broker's command line;
# $FERROLOG_SERVER_BIN, if set, runs the brokers from another build (to
# compare builds side by side; clients stay $BIN).

BIN=${FERROLOG_BIN:-$(scripts/target-dir.sh)/ferrolog}
[[ -x $BIN ]] || cargo build -q --workspace --all-targets

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_cluster() {
  DIR=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
  local ports=("$(port)" "$(port)" "$(port)")
  local peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
  PIDS=()
  for i in 1 2 3; do
    RUST_LOG=warn "${FERROLOG_SERVER_BIN:-$BIN}" server --node-id "$i" --listen "127.0.0.1:${ports[$((i - 1))]}" --peers "$peers" \
      --data-dir "$DIR/n$i" ${SERVER_ARGS:-} >>"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
  done
  BROKERS="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
}
