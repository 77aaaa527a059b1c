#!/usr/bin/env bash
# A local Ferrolog cluster on Docker, laid out like the Kubernetes
# StatefulSet: containers ferrolog-0..N-1 with those hostnames, reachable
# as ferrolog-I.ferrolog-brokers on the network ferrolog-net (aliases play
# the headless Service's DNS names), one named volume each for its data.
#
#   deploy/docker/cluster.sh up [N]       # start N brokers (default 3)
#   deploy/docker/cluster.sh client ARGS  # run `ferrolog ARGS` in a container on the network
#   deploy/docker/cluster.sh start I      # (re)start broker I on its volume
#   deploy/docker/cluster.sh disconnect I # cut broker I off the network
#   deploy/docker/cluster.sh connect I    # and back, with its DNS alias
#   deploy/docker/cluster.sh down [--volumes]
#
# Plain `docker network` / `docker run` (Debian's docker-compose v1 breaks
# on recreating containers with newer engines). The image comes from
# deploy/docker/build.sh. Environment: FERROLOG_IMAGE_TAG (dev),
# FERROLOG_DOCKER_PREFIX (ferrolog).
set -euo pipefail
IMAGE="ferrolog:${FERROLOG_IMAGE_TAG:-dev}"
PREFIX="${FERROLOG_DOCKER_PREFIX:-ferrolog}"
NET="$PREFIX-net"
DOMAIN="$PREFIX-brokers"
STATE="${TMPDIR:-/tmp}/$PREFIX-docker-brokers"

count() { cat "$STATE" 2>/dev/null || echo 3; }
name() { echo "$PREFIX-$1"; }
alias_of() { echo "$PREFIX-$1.$DOMAIN"; }
brokers() {
  local n out=""
  n=$(count)
  for ((i = 0; i < n; i++)); do out+="${out:+,}$(alias_of "$i"):9092"; done
  echo "$out"
}

start() {
  local i=$1 n
  n=$(count)
  if docker container inspect "$(name "$i")" >/dev/null 2>&1; then
    docker start "$(name "$i")" >/dev/null
    return
  fi
  # The first N brokers bootstrap the cluster; node id = ordinal + 1 and the
  # peers' names come from the pod-style hostname (as in deploy/k8s).
  docker run -d --name "$(name "$i")" --hostname "$(name "$i")" \
    --network "$NET" --network-alias "$(alias_of "$i")" \
    -v "$PREFIX-data-$i:/var/lib/ferrolog" \
    -e FERROLOG_STATEFULSET_INITIAL_BROKERS="$n" -e FERROLOG_PEER_DOMAIN="$DOMAIN" \
    --stop-timeout 30 "$IMAGE" server >/dev/null
}

case "${1:-}" in
  up)
    n="${2:-3}"
    echo "$n" > "$STATE"
    docker network inspect "$NET" >/dev/null 2>&1 || docker network create "$NET" >/dev/null
    for ((i = 0; i < n; i++)); do start "$i"; done
    echo "brokers: $(brokers) (on network $NET; use: $0 client ...)"
    ;;
  start) start "$2" ;;
  client)
    shift
    docker run --rm -i --network "$NET" -e FERROLOG_BROKERS="$(brokers)" -e RUST_LOG=warn "$IMAGE" "$@"
    ;;
  brokers) brokers ;;
  disconnect) docker network disconnect "$NET" "$(name "$2")" ;;
  connect) docker network connect --alias "$(alias_of "$2")" "$NET" "$(name "$2")" ;;
  down)
    n=$(count)
    for ((i = 0; i < n + 2; i++)); do docker rm -f "$(name "$i")" >/dev/null 2>&1 || true; done
    docker network rm "$NET" >/dev/null 2>&1 || true
    if [ "${2:-}" = "--volumes" ]; then
      for ((i = 0; i < n + 2; i++)); do docker volume rm "$PREFIX-data-$i" >/dev/null 2>&1 || true; done
    fi
    rm -f "$STATE"
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
