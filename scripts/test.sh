#!/usr/bin/env bash
# The whole test suite on the real parts: sets up what is missing (scripts/setup.sh), then
# runs every test. Each test starts its own nats-server; the Docker tests use the project's
# dockerd and the registry on 127.0.0.1:5000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .run/env
cargo test --workspace --locked "$@"
