#!/usr/bin/env bash
# Starts deploy/compose.yaml on loopback, three nats-servers and two engines, and checks that
# every part is healthy: each server answers /healthz with JetStream on and the cluster has a
# leader, each engine answers its API and Docker counts its health check passed. Then it
# copies out what a client needs (the CA, the first admin token) and prints how to use them.
#
#   scripts/cluster.sh            # builds and pushes the images (scripts/image.sh), starts it
#   scripts/cluster.sh down       # stops it and deletes its volumes: every event is lost
#
# Environment: CLUSTER_NAME, the compose project (edge-orchestrator); CLUSTER_DIR, where the
# CA and the token are copied (.run/cluster); BUILD=0 to take the images already pushed (with
# ENGINE_IMAGE and NATS_IMAGE, or those scripts/image.sh built last); PROFILE, for
# scripts/image.sh; the ports compose.yaml reads.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .run/env
export DOCKER_HOST

say() { printf '\033[1;35m[cluster]\033[0m %s\n' "$*" >&2; }
if ! command -v docker-compose >/dev/null; then
  say "installing docker-compose"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
export CLUSTER_NAME=${CLUSTER_NAME:-edge-orchestrator}
out=${CLUSTER_DIR:-$root/.run/cluster}
compose() { docker-compose --ansi never -f "$root/deploy/compose.yaml" -p "$CLUSTER_NAME" "$@"; }

if [ "${1:-up}" = down ]; then
  say "stopping $CLUSTER_NAME and deleting its volumes"
  compose down --volumes --remove-orphans
  rm -rf "$out"
  exit 0
fi

if [ "${BUILD:-1}" != 0 ]; then
  images=$(bash scripts/image.sh)
  ENGINE_IMAGE=$(grep /engine: <<<"$images")
  NATS_IMAGE=$(grep /nats-server: <<<"$images")
fi
if [ -z "${ENGINE_IMAGE:-}" ] && [ -f .run/images ]; then
  # shellcheck disable=SC1091
  source .run/images
fi
export ENGINE_IMAGE=${ENGINE_IMAGE:?the engine image: BUILD=0 needs ENGINE_IMAGE, or scripts/image.sh first}
export NATS_IMAGE=${NATS_IMAGE:?the nats-server image: BUILD=0 needs NATS_IMAGE}
export NATS_PORT_1=${NATS_PORT_1:-4222} NATS_PORT_2=${NATS_PORT_2:-4223} NATS_PORT_3=${NATS_PORT_3:-4224}
export NATS_MONITOR_PORT_1=${NATS_MONITOR_PORT_1:-8222} NATS_MONITOR_PORT_2=${NATS_MONITOR_PORT_2:-8223}
export NATS_MONITOR_PORT_3=${NATS_MONITOR_PORT_3:-8224}
export ENGINE_PORT_1=${ENGINE_PORT_1:-8080} ENGINE_PORT_2=${ENGINE_PORT_2:-8090}
export DASHBOARD_PORT_1=${DASHBOARD_PORT_1:-8081} DASHBOARD_PORT_2=${DASHBOARD_PORT_2:-8091}

say "starting $CLUSTER_NAME: $NATS_IMAGE three times, $ENGINE_IMAGE twice"
compose up -d --quiet-pull

# wait_for WHAT COMMAND...: polls for two minutes, then shows the logs and fails.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  compose logs --tail 30 >&2 || true
  say "timed out waiting for $what"
  exit 1
}
mkdir -p "$out"
trust=$(compose ps -q trust)
wait_for "the trust directory" docker cp "$trust:/trust/ca.pem" "$out/ca.pem"

for i in 1 2 3; do
  port_var=NATS_MONITOR_PORT_$i
  wait_for "nats-$i with JetStream" curl -sf "http://127.0.0.1:${!port_var}/healthz?js-enabled-only=true"
done
leader() { curl -sf "http://127.0.0.1:$NATS_MONITOR_PORT_1/jsz" | grep -q '"leader": *"nats-'; }
wait_for "the cluster to elect a JetStream leader" leader

healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$1")")" = healthy ]; }
for i in 1 2; do
  port_var=ENGINE_PORT_$i
  wait_for "engine-$i's API" curl -sf --cacert "$out/ca.pem" "https://127.0.0.1:${!port_var}/healthz"
  wait_for "engine-$i's health check" healthy "engine-$i"
done
# The first admin token: one engine issued it, into its own volume.
token() {
  local engine
  for engine in engine-1 engine-2; do
    docker cp "$(compose ps -q "$engine"):/data/engine/admin.token" "$out/admin.token" 2>/dev/null && return 0
  done
  return 1
}
wait_for "the first admin token" token
chmod 600 "$out/admin.token"

# What a client needs, and what compose needs to act on this cluster again (OPERATIONS.md).
cat >"$out/env" <<EOF
export CLUSTER_NAME=$CLUSTER_NAME DOCKER_HOST=$DOCKER_HOST
export ENGINE_IMAGE=$ENGINE_IMAGE NATS_IMAGE=$NATS_IMAGE
export NATS_PORT_1=$NATS_PORT_1 NATS_PORT_2=$NATS_PORT_2 NATS_PORT_3=$NATS_PORT_3
export NATS_MONITOR_PORT_1=$NATS_MONITOR_PORT_1 NATS_MONITOR_PORT_2=$NATS_MONITOR_PORT_2 NATS_MONITOR_PORT_3=$NATS_MONITOR_PORT_3
export ENGINE_PORT_1=$ENGINE_PORT_1 ENGINE_PORT_2=$ENGINE_PORT_2
export DASHBOARD_PORT_1=$DASHBOARD_PORT_1 DASHBOARD_PORT_2=$DASHBOARD_PORT_2
export NATS_MONITOR="http://127.0.0.1:$NATS_MONITOR_PORT_1 http://127.0.0.1:$NATS_MONITOR_PORT_2 http://127.0.0.1:$NATS_MONITOR_PORT_3"
export NATS_URL=tls://127.0.0.1:$NATS_PORT_1,tls://127.0.0.1:$NATS_PORT_2,tls://127.0.0.1:$NATS_PORT_3
export NATS_CA=$out/ca.pem
export ENGINE_API=https://127.0.0.1:$ENGINE_PORT_1
export ENGINE_API_2=https://127.0.0.1:$ENGINE_PORT_2
export ENGINE_CA=$out/ca.pem
export ENGINE_TOKEN=\$(cat $out/admin.token)
EOF
say "healthy: nats-1, nats-2, nats-3 (JetStream, one leader), engine-1, engine-2"
say "to use it: source $out/env; target/debug/engine app list"
