#!/usr/bin/env bash
# The whole test suite on the real parts: sets up what is missing (scripts/setup.sh), then
# runs every test. Each test starts its own nats-server; the Docker tests use the project's
# dockerd and the registry on 127.0.0.1:5000. Ends with one line: "tests: N passed, N failed".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .run/env
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The decoders' fuzz tests (events/tests/fuzz.rs) and the API's (tests/it/robustness.rs) run
# this many cases each: under two minutes in all on two cores.
export PROPTEST_CASES=${PROPTEST_CASES:-4000} RUST_BACKTRACE=${RUST_BACKTRACE:-0}
# The fault tests run the binaries themselves (a node killed with SIGKILL, its command line).
cargo build --workspace --bins --locked
# The edge node's release targets (x86_64 and aarch64 static), which tests/it/cross.rs runs
# (the foreign ones under qemu-user).
PROFILE=cross OUT=target/cross TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf" \
  bash scripts/release.sh
# The engine's and nats-server's images, which tests/it/production.rs runs as a cluster
# through deploy/compose.yaml (scripts/cluster.sh).
PROFILE=cross bash scripts/image.sh >/dev/null
set +e
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
