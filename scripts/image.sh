#!/usr/bin/env bash
# The images of a production cluster, each a static binary on an empty base, run as a user
# that is not root, pushed to the local registry:
#   127.0.0.1:5000/edge-orchestrator/engine:<version>       the engine (musl), with a health
#                                                            check (`engine health`);
#   127.0.0.1:5000/edge-orchestrator/nats-server:<version>  the nats-server setup.sh installs.
# `deploy/compose.yaml` runs them. It uses the Docker engine and registry scripts/setup.sh
# starts, and installs what the build needs (musl-tools, the rustup target).
#
#   scripts/image.sh                  # builds with the release profile, pushes, prints both
#   PROFILE=cross scripts/image.sh    # the quick profile the tests use
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .run/env
docker() { command docker -H "$DOCKER_HOST" "$@"; }

say() { printf '\033[1;34m[image]\033[0m %s\n' "$*" >&2; }
profile=${PROFILE:-release}

target=x86_64-unknown-linux-musl
# shellcheck source=scripts/toolchain.sh
source scripts/toolchain.sh
toolchain "$target"

say "building the engine for $target (static, profile $profile)"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --profile "$profile" --locked -p engine --target "$target"
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "engine"))')

# build NAME VERSION: builds target/image/NAME (its Dockerfile beside what it copies) as
# 127.0.0.1:5000/edge-orchestrator/NAME:VERSION, pushes it and prints the reference.
build() {
  local image="127.0.0.1:5000/edge-orchestrator/$1:$2"
  say "building $image"
  local said old
  old=$(docker images -q "$image")
  # (Run in a command substitution, where errexit does not hold: each step says if it failed.)
  said=$(docker build -q -t "$image" "$root/target/image/$1" 2>&1) || { echo "$said" >&2; return 1; }
  docker push -q "$image" >/dev/null || return 1
  # The build it replaced, left without a name, goes (unless a container still runs it).
  if [ -n "$old" ] && [ "$old" != "$(docker images -q "$image")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "$image"
}
# context NAME: a fresh build context, with the data directories (each owned, in the image,
# by the user the image runs as: a volume mounted there takes that owner).
context() {
  rm -rf "$root/target/image/$1"
  mkdir -p "$root/target/image/$1/data" "$root/target/image/$1/trust"
  echo "$root/target/image/$1"
}

dir=$(context engine)
cp "target/$target/$profile/engine" "$dir/engine"
cat >"$dir/Dockerfile" <<'EOF'
FROM scratch
COPY engine /engine
COPY --chown=65534:65534 data /data
COPY --chown=65534:65534 trust /trust
# nobody: the engine needs no privilege; its data and trust directories are volumes.
USER 65534:65534
ENV ENGINE_CA=/trust/ca.pem
WORKDIR /data
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["/engine", "health"]
ENTRYPOINT ["/engine"]
CMD ["serve", "--trust", "/trust", "--data-dir", "/data/engine", "--listen", "0.0.0.0:8080", "--dashboard", "0.0.0.0:8081"]
EOF
engine_image=$(build engine "$version")
say "($(stat -c %s "$dir/engine") bytes of engine)"

dir=$(context nats-server)
cp "$NATS_SERVER_BIN" "$dir/nats-server"
cat >"$dir/Dockerfile" <<'EOF'
FROM scratch
COPY nats-server /nats-server
COPY --chown=65534:65534 data /data
# nobody, as the engine: it reads the trust directory the engine's `trust init` wrote.
USER 65534:65534
WORKDIR /data
# Clients, routes, monitoring (/healthz).
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
CMD ["--config", "/etc/nats/nats.conf"]
EOF
nats_image=$(build nats-server "$("$NATS_SERVER_BIN" --version | awk '{print $NF}' | sed 's/^v//')")

# What was built last, for `BUILD=0 scripts/cluster.sh`.
cat >.run/images <<EOF
export ENGINE_IMAGE=$engine_image
export NATS_IMAGE=$nats_image
EOF
echo "$engine_image"
echo "$nats_image"
