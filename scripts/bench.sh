#!/usr/bin/env bash
# The benchmarks: sets up what is missing (scripts/setup.sh), runs every bench of `benches/`
# RUNS times (3 by default), then writes the median, min and max of each figure, with the
# machine and the date, to benches/results.json, and prints them as the table of BENCHMARKS.md.
# Every server it starts listens on 127.0.0.1; images come from the registry on 127.0.0.1:5000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .run/env
runs="${RUNS:-3}"
figures="$root/target/bench-figures.jsonl"
mkdir -p target
rm -f "$figures"
# The edge-node binary on its own, as it ships (static, the edge profile): built with the
# benches, it would take on the features they need.
TARGETS=x86_64-unknown-linux-musl bash scripts/release.sh
cargo build --release --locked -p benches --benches --bins
for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs"
  BENCH_FIGURES="$figures" cargo bench --locked -p benches
done
cargo run --release --locked -q -p benches --bin results -- "$figures" benches/results.json
