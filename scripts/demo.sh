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
dashboard_port=18081
node=edge-1
export ENGINE_API="https://127.0.0.1:$api_port"
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
# The API presents the servers' certificate: the CLI and curl trust the same authority.
export ENGINE_CA="$demo/trust/ca.pem"

say "starting nats-server on 127.0.0.1:$nats_port (operator mode, TLS only), the engine on 127.0.0.1:$api_port"
"$NATS_SERVER_BIN" -c "$demo/trust/nats.conf" -js -a 127.0.0.1 -p "$nats_port" -sd "$demo/jetstream" \
  >"$demo/nats-server.log" 2>&1 &
echo $! >"$demo/nats-server.pid"
"$bin/engine" serve --nats "$NATS_URL" --trust "$demo/trust" --listen "127.0.0.1:$api_port" \
  --dashboard "127.0.0.1:$dashboard_port" --data-dir "$demo/engine" >"$demo/engine.log" 2>&1 &
echo $! >"$demo/engine.pid"
wait_for "the engine" curl -sf --cacert "$ENGINE_CA" "$ENGINE_API/healthz"
echo "an anonymous connection to NATS is refused:"
"$bin/replay" --nats "$NATS_URL" audit 2>&1 | sed 's/^/  /' || true
echo "an API call without a token is refused:"
curl -s --cacert "$ENGINE_CA" "$ENGINE_API/v1/deployments" | sed 's/^/  /'
echo

say "admin: the engine's first admin token is in $demo/engine/admin.token (mode $(stat -c %a "$demo/engine/admin.token")); it makes a vendor's and an operator's"
admin_token=$(cat "$demo/engine/admin.token")
admin() { ENGINE_TOKEN=$admin_token "$bin/engine" "$@"; }
token_of() { sed -n 's/.*"token": "\(.*\)".*/\1/p'; }
vendor_token=$(admin --tenant default token create --subject vera@vendor --role vendor | token_of)
operator_token=$(admin --tenant default token create --subject otto@operator --role operator | token_of)
vendor() { ENGINE_TOKEN=$vendor_token "$bin/engine" "$@"; }
operator() { ENGINE_TOKEN=$operator_token "$bin/engine" "$@"; }
api() { curl -s --cacert "$ENGINE_CA" -H "Authorization: Bearer $operator_token" "$ENGINE_API$1"; }
echo "tokens made for vera@vendor (vendor) and otto@operator (operator) of tenant default; the log keeps only their hashes"

say "edge node $node makes its own key pair; only its public key is enrolled"
mkdir -p "$demo/$node"
key=$("$bin/edge-node" keygen --out "$demo/$node/node.nk")
admin node enroll "$node" --public-key "$key" --label site=lab --out "$demo/$node/node.creds"
"$bin/edge-node" run --nats "$NATS_URL" --creds "$demo/$node/node.creds" --key "$demo/$node/node.nk" \
  --node "$node" --label site=lab --label arch=amd64 \
  --reconcile 1 --data-dir "$demo/$node" >"$demo/edge-node.log" 2>&1 &
echo $! >"$demo/edge-node.pid"
for _ in $(seq 1 300); do api "/v1/nodes/$node" | grep -q online && break; sleep 0.1; done
api "/v1/nodes/$node"; echo

say "vendor: register the application and add two versions"
vendor app register sample --name "Sample app"
vendor app add-version sample 1.0.0 --image 127.0.0.1:5000/sample/app:1.0.0 >/dev/null
vendor app add-version sample v1.1.0 --image 127.0.0.1:5000/sample/app:1.1.0 >/dev/null

say "vendor: publish 1.0.0 (1.1.0 stays a draft)"
vendor app publish sample 1.0.0

say "an operator may not publish: that is the vendor's role"
operator app publish sample v1.1.0 2>&1 | sed 's/^/  /' || true

say "operator: which nodes a selector reaches now, then launch sample 1.0.0 on $node, watching its status"
operator nodes --selector site=lab
operator launch --app sample --version 1.0.0 --node "$node" --watch

id=$(operator list --limit 1 | awk 'NR==2 {print $1}')

say "operator: stop the deployment, then start it again (the container is kept)"
operator stop "$id" --watch
operator start "$id" --watch

say "operator: launch a second copy staged: downloaded now, started on apply"
staged_out=$(operator stage --app sample --version 1.0.0 --node "$node")
echo "$staged_out"
staged_id=$(echo "$staged_out" | awk '{print $3}')
for _ in $(seq 1 100); do
  operator list --staged true --status staged | grep -q "$staged_id" && break
  sleep 0.1
done
operator list --staged true

say "operator: apply it"
operator apply "$staged_id" --watch

say "operator: launching the draft 1.1.0 is refused"
operator launch --app sample --version 1.1.0 --node "$node" || true

say "vendor: publish 1.1.0: the deployment shows an update notification"
vendor app publish sample 1.1.0 >/dev/null
for _ in $(seq 1 50); do
  operator notifications | grep -q 1.1.0 && break
  sleep 0.1
done
operator notifications

say "operator: update the first to 1.1.0 (downloaded while 1.0.0 runs, switched after)"
operator update "$id" --version 1.1.0 --watch

say "operator: update the second staged, applied at once (everything downloaded first, then switched)"
operator update "$staged_id" --version 1.1.0 --staged --watch

say "no notification left"
operator notifications

say "vendor: a compose application of two services (examples/shop.compose.yaml)"
vendor app register shop --name "Shop"
vendor app add-version shop 1.0.0 --compose examples/shop.compose.yaml >/dev/null
vendor app publish shop 1.0.0 >/dev/null
operator app show shop | grep -A3 '"parameters"'

say "operator: launch it with GREETING=hi and a secret API_KEY: one container per service, each reported"
api_key="demo-key-$RANDOM$RANDOM"
shop_out=$(export API_KEY=$api_key; operator launch --app shop --version 1.0.0 --node "$node" --set GREETING=hi --secret API_KEY)
echo "$shop_out"
shop_id=$(echo "$shop_out" | awk '{print $3}')
operator watch "$shop_id"
echo "web answers on its published loopback port: $(curl -s http://127.0.0.1:18090/)"
for _ in $(seq 1 50); do
  operator logs "$shop_id" | grep -q "sample app" && break
  sleep 0.1
done
echo "probe's log, fetched through the engine (it reached web by name):"
operator logs "$shop_id" | grep "probe\] sample app"

say "the secret: in the containers' environment, sealed in the log, *** in the API"
web=$(docker -H "$DOCKER_HOST" ps -q --filter "label=io.edge-orchestrator.deployment=$shop_id" | head -n 1)
docker -H "$DOCKER_HOST" inspect "$web" --format '{{range .Config.Env}}{{println .}}{{end}}' | grep '^API_KEY=' |
  sed 's/^/  container: /'
operator get "$shop_id" | grep -A2 '"secrets"' | sed 's/^/  API: /'
if grep -rqa "$api_key" "$demo/jetstream" "$demo/engine" "$demo/$node" "$demo"/*.log; then
  echo "  the secret is in clear on disk!" >&2
  exit 1
fi
echo "  not in clear in the stream's files, the engine's or the node's database, or any log"

say "drift: a container stopped behind the node's back is put back, and the engine records it"
victim=$(docker -H "$DOCKER_HOST" ps -q --filter "label=io.edge-orchestrator.deployment=$id")
docker -H "$DOCKER_HOST" stop -t 1 "$victim" >/dev/null
for _ in $(seq 1 100); do
  operator get "$id" | grep -q '"last_drift"' && break
  sleep 0.1
done
operator watch "$id" --timeout 30s | tail -n 4

say "on the edge machine itself, with or without a link: edge-node workloads list"
"$bin/edge-node" workloads list --data-dir "$demo/$node"

say "the deployments"
operator list

say "auditor: a read-only credential; every event's signature and hash chain checked"
admin credential auditor --name demo --out "$demo/auditor.creds" >/dev/null
"$bin/replay" --nats "$NATS_URL" --creds "$demo/auditor.creds" verify \
  --engine-key "$(grep -o '"engine": "[A-Z0-9]*"' "$demo/trust/trust.json" | cut -d'"' -f4)" | tail -n 1

say "what dockerd runs (docker -H $DOCKER_HOST ps)"
docker -H "$DOCKER_HOST" ps --filter "label=io.edge-orchestrator.node=$node" \
  --format 'table {{.ID}}\t{{.Image}}\t{{.Status}}\t{{.Names}}'

say "admin: revoke $node's credential: the server cuts it off, its deployments say so"
admin node revoke "$node"
for _ in $(seq 1 100); do
  kill -0 "$(cat "$demo/edge-node.pid")" 2>/dev/null || break
  sleep 0.1
done
tail -n 1 "$demo/edge-node.log" | sed 's/^/  edge-node: /'
for _ in $(seq 1 100); do
  operator get "$id" | grep -q '"revoked": true' && break
  sleep 0.1
done
operator get "$id" | grep -E '"(status|revoked|reason)"' | head -n 4

say "admin: revoke the operator's token: its next call is refused"
admin token revoke "${operator_token%%.*}"
operator list 2>&1 | sed 's/^/  /' || true

say "the dashboard"
dashboard="https://127.0.0.1:$dashboard_port/"
curl -s --cacert "$ENGINE_CA" -o /dev/null -w "  sign-in page: HTTP %{http_code}\n" "${dashboard}signin"
echo "  $dashboard (its certificate is signed by $ENGINE_CA)"
echo "  sign in with the admin token: $demo/engine/admin.token"

say "done"
echo "logs: $demo/*.log"
if [ -t 0 ]; then
  echo "The engine (API $ENGINE_API, dashboard $dashboard, NATS $NATS_URL) and $node keep running; press Enter to stop them."
  read -r _
fi
