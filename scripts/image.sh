#!/usr/bin/env bash
# The engine as a container image: a static binary (musl) on an empty base, run as a user
# that is not root, with a health check (`engine health`), pushed to the local registry as
# 127.0.0.1:5000/edge-orchestrator/engine:<version>. It uses the Docker engine and registry
# scripts/setup.sh starts, and installs what the build needs (musl-tools, the rustup target).
#
#   scripts/image.sh          # builds, pushes, and prints the image's reference
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .run/env

say() { printf '\033[1;34m[image]\033[0m %s\n' "$*"; }

target=x86_64-unknown-linux-musl
if ! command -v musl-gcc >/dev/null; then
  say "installing musl-tools"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi
if ! rustup target list --installed | grep -qx "$target"; then
  say "adding the rustup target $target"
  rustup target add "$target" >/dev/null
fi

say "building the engine for $target (static)"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked -p engine --target "$target"
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "engine"))')
context="$root/target/image"
rm -rf "$context"
mkdir -p "$context"
cp "target/$target/release/engine" "$context/engine"
# Its data directory, owned by the user it runs as (a volume mounted there takes its owner).
mkdir -p "$context/data"
cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY engine /engine
COPY --chown=65534:65534 data /data
# nobody: the engine needs no privilege; its data and trust directories are volumes.
USER 65534:65534
ENV ENGINE_CA=/trust/ca.pem
WORKDIR /data
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["/engine", "health"]
ENTRYPOINT ["/engine"]
CMD ["serve", "--trust", "/trust", "--data-dir", "/data/engine", "--listen", "0.0.0.0:8080", "--dashboard", "0.0.0.0:8081"]
EOF
image="127.0.0.1:5000/edge-orchestrator/engine:$version"
say "building $image"
docker build -q -t "$image" "$context" >/dev/null
docker push -q "$image" >/dev/null
say "pushed $image ($(stat -c %s "$context/engine") bytes of engine)"
echo "$image"
