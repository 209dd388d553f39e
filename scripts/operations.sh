#!/usr/bin/env bash
# Runs every command of OPERATIONS.md, in order, against a cluster of its own: the file's `sh`
# blocks, one after another in one shell that stops at the first command that fails. It starts
# the cluster with scripts/cluster.sh (on the images scripts/image.sh pushed last, unless
# BUILD=1), installs an edge node into a scratch root, and takes the cluster down at the end.
#
#   scripts/operations.sh
#
# Environment: as scripts/cluster.sh (CLUSTER_NAME is edge-orchestrator-operations here).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .run/env

say() { printf '\033[1;36m[operations]\033[0m %s\n' "$*" >&2; }
export CLUSTER_NAME=${CLUSTER_NAME:-edge-orchestrator-operations}
export CLUSTER_DIR=${CLUSTER_DIR:-$root/.run/operations}
export BUILD=${BUILD:-0} PROFILE=${PROFILE:-cross}
scratch=$(mktemp -d)
finish() {
  bash scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap finish EXIT

bash scripts/cluster.sh
# The tools the commands name, as scripts/test.sh builds them; an edge node's root and its
# new binary, here a scratch directory and this build; the backups in the scratch directory.
export PATH="$root/target/debug:$PATH" EDGE_ROOT=$scratch/board NEW_EDGE_NODE=$root/target/debug/edge-node
export BACKUP=$scratch/backup
commands=$scratch/operations.sh
# Each block announced as it starts (not traced: the commands hold tokens).
awk '/^```sh$/ { inside = 1; printf "printf \"\\n\\033[1;36m[operations]\\033[0m block %d, line %d of OPERATIONS.md\\n\" >&2\n", ++n, NR; next }
  /^```$/ { inside = 0 } inside' OPERATIONS.md >"$commands"
blocks=$(grep -c '^```sh$' OPERATIONS.md)
say "running the $blocks blocks of OPERATIONS.md ($(wc -l <"$commands") lines)"
bash -euo pipefail "$commands"
say "every command of OPERATIONS.md ran"
