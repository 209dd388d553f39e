#!/usr/bin/env bash
# The main job: sets up what is missing, starts nats-server, the engine and one edge node on
# loopback, then takes the sample application through its lifecycle with status shown as it
# flows. Each run starts from a fresh event store; the previous run's processes and
# containers are stopped first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .run/env

say() { printf '\n\033[1;32m==> %s\033[0m\n' "$*"; }
demo="$root/.run/demo"
nats_port=14222
api_port=18080
node=edge-1
export ENGINE_API="http://127.0.0.1:$api_port"
export NATS_URL="tls://127.0.0.1:$nats_port"

stop_all() {
  for name in edge-node engine nats-server; do
    if [ -f "$demo/$name.pid" ]; then
      kill "$(cat "$demo/$name.pid")" 2>/dev/null || true
      rm -f "$demo/$name.pid"
    fi
  done
}
wait_for() { # what, command...
  local what=$1
  shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what; logs are in $demo" >&2
  exit 1
}

say "building"
cargo build --workspace --bins --locked -q
bin="$root/target/debug"

say "cleaning up the previous run"
stop_all
old=$(docker -H "$DOCKER_HOST" ps -aq --filter "label=io.edge-orchestrator.node=$node")
[ -n "$old" ] && docker -H "$DOCKER_HOST" rm -f $old >/dev/null
old=$(docker -H "$DOCKER_HOST" network ls -q --filter "label=io.edge-orchestrator.node=$node")
[ -n "$old" ] && docker -H "$DOCKER_HOST" network rm $old >/dev/null
# Forget the local copies so that the launch really pulls from the registry.
docker -H "$DOCKER_HOST" rmi -f 127.0.0.1:5000/sample/app:1.0.0 127.0.0.1:5000/sample/app:1.1.0 >/dev/null 2>&1 || true
rm -rf "$demo"
mkdir -p "$demo"
trap stop_all EXIT

say "trust: an operator, its account and keys, a local CA and the server's certificate"
"$bin/engine" trust init --dir "$demo/trust"
export NATS_CA="$demo/trust/ca.pem"

say "starting nats-server on 127.0.0.1:$nats_port (operator mode, TLS only), the engine on 127.0.0.1:$api_port"
"$NATS_SERVER_BIN" -c "$demo/trust/nats.conf" -js -a 127.0.0.1 -p "$nats_port" -sd "$demo/jetstream" \
  >"$demo/nats-server.log" 2>&1 &
echo $! >"$demo/nats-server.pid"
"$bin/engine" serve --nats "$NATS_URL" --trust "$demo/trust" --listen "127.0.0.1:$api_port" \
  --data-dir "$demo/engine" >"$demo/engine.log" 2>&1 &
echo $! >"$demo/engine.pid"
wait_for "the engine" curl -sf "$ENGINE_API/healthz"
echo "an anonymous connection is refused:"
"$bin/replay" --nats "$NATS_URL" audit 2>&1 | sed 's/^/  /' || true

say "edge node $node makes its own key pair; only its public key is enrolled"
mkdir -p "$demo/$node"
key=$("$bin/edge-node" keygen --out "$demo/$node/node.nk")
"$bin/engine" node enroll "$node" --public-key "$key" --label site=lab --out "$demo/$node/node.creds"
"$bin/edge-node" run --nats "$NATS_URL" --creds "$demo/$node/node.creds" --key "$demo/$node/node.nk" \
  --node "$node" --label site=lab --label arch=amd64 \
  --reconcile 1 --data-dir "$demo/$node" >"$demo/edge-node.log" 2>&1 &
echo $! >"$demo/edge-node.pid"
wait_for "the node to register" sh -c "curl -sf '$ENGINE_API/v1/nodes/$node' | grep -q online"
curl -s "$ENGINE_API/v1/nodes/$node"; echo

say "vendor: register the application and add two versions"
"$bin/engine" --actor vendor app register sample --name "Sample app"
"$bin/engine" --actor vendor app add-version sample 1.0.0 --image 127.0.0.1:5000/sample/app:1.0.0 >/dev/null
"$bin/engine" --actor vendor app add-version sample v1.1.0 --image 127.0.0.1:5000/sample/app:1.1.0 >/dev/null

say "vendor: publish 1.0.0 (1.1.0 stays a draft)"
"$bin/engine" --actor vendor app publish sample 1.0.0

say "operator: launch sample 1.0.0 on $node, watching its status"
"$bin/engine" launch --app sample --version 1.0.0 --node "$node" --watch

id=$("$bin/engine" list --limit 1 | awk 'NR==2 {print $1}')

say "operator: stop the deployment, then start it again (the container is kept)"
"$bin/engine" stop "$id" --watch
"$bin/engine" start "$id" --watch

say "operator: launch a second copy staged: downloaded now, started on apply"
staged_out=$("$bin/engine" launch --app sample --version 1.0.0 --node "$node" --staged --instantly-apply false)
echo "$staged_out"
staged_id=$(echo "$staged_out" | awk '{print $3}')
for _ in $(seq 1 100); do
  "$bin/engine" list --staged true --status staged | grep -q "$staged_id" && break
  sleep 0.1
done
"$bin/engine" list --staged true

say "operator: apply it"
"$bin/engine" apply "$staged_id" --watch

say "operator: launching the draft 1.1.0 is refused"
"$bin/engine" launch --app sample --version 1.1.0 --node "$node" || true

say "vendor: publish 1.1.0: the deployment shows an update notification"
"$bin/engine" --actor vendor app publish sample 1.1.0 >/dev/null
for _ in $(seq 1 50); do
  "$bin/engine" notifications | grep -q 1.1.0 && break
  sleep 0.1
done
"$bin/engine" notifications

say "operator: update the first to 1.1.0 (downloaded while 1.0.0 runs, switched after)"
"$bin/engine" update "$id" --version 1.1.0 --watch

say "operator: update the second staged, applied at once (everything downloaded first, then switched)"
"$bin/engine" update "$staged_id" --version 1.1.0 --staged --watch

say "no notification left"
"$bin/engine" notifications

say "vendor: a compose application of two services (examples/shop.compose.yaml)"
"$bin/engine" --actor vendor app register shop --name "Shop"
"$bin/engine" --actor vendor app add-version shop 1.0.0 --compose examples/shop.compose.yaml >/dev/null
"$bin/engine" --actor vendor app publish shop 1.0.0 >/dev/null
"$bin/engine" app show shop | grep -A3 '"parameters"'

say "operator: launch it with GREETING=hi: one container per service, each reported"
shop_out=$("$bin/engine" launch --app shop --version 1.0.0 --node "$node" --set GREETING=hi)
echo "$shop_out"
shop_id=$(echo "$shop_out" | awk '{print $3}')
"$bin/engine" watch "$shop_id"
echo "web answers on its published loopback port: $(curl -s http://127.0.0.1:18090/)"
for _ in $(seq 1 50); do
  "$bin/engine" logs "$shop_id" | grep -q "sample app" && break
  sleep 0.1
done
echo "probe's log, fetched through the engine (it reached web by name):"
"$bin/engine" logs "$shop_id" | grep "probe\] sample app"

say "drift: a container stopped behind the node's back is put back, and the engine records it"
victim=$(docker -H "$DOCKER_HOST" ps -q --filter "label=io.edge-orchestrator.deployment=$id")
docker -H "$DOCKER_HOST" stop -t 1 "$victim" >/dev/null
for _ in $(seq 1 100); do
  "$bin/engine" get "$id" | grep -q '"last_drift"' && break
  sleep 0.1
done
"$bin/engine" watch "$id" --timeout 30s | tail -n 4

say "on the edge machine itself, with or without a link: edge-node workloads list"
"$bin/edge-node" workloads list --data-dir "$demo/$node"

say "the deployments"
"$bin/engine" list

say "auditor: a read-only credential; every event's signature and hash chain checked"
"$bin/engine" credential auditor --name demo --out "$demo/auditor.creds" >/dev/null
"$bin/replay" --nats "$NATS_URL" --creds "$demo/auditor.creds" verify \
  --engine-key "$(grep -o '"engine": "[A-Z0-9]*"' "$demo/trust/trust.json" | cut -d'"' -f4)" | tail -n 1

say "what dockerd runs (docker -H $DOCKER_HOST ps)"
docker -H "$DOCKER_HOST" ps --filter "label=io.edge-orchestrator.node=$node" \
  --format 'table {{.ID}}\t{{.Image}}\t{{.Status}}\t{{.Names}}'

say "operator: revoke $node's credential: the server cuts it off, its deployments say so"
"$bin/engine" node revoke "$node"
for _ in $(seq 1 100); do
  kill -0 "$(cat "$demo/edge-node.pid")" 2>/dev/null || break
  sleep 0.1
done
tail -n 1 "$demo/edge-node.log" | sed 's/^/  edge-node: /'
for _ in $(seq 1 100); do
  "$bin/engine" get "$id" | grep -q '"revoked": true' && break
  sleep 0.1
done
"$bin/engine" get "$id" | grep -E '"(status|revoked|reason)"' | head -n 4

say "done"
echo "logs: $demo/*.log"
if [ -t 0 ]; then
  echo "The engine (API $ENGINE_API, NATS $NATS_URL) and $node keep running; press Enter to stop them."
  read -r _
fi
