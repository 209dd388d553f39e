#!/usr/bin/env bash
# The edge node's release binaries for the boards fleets run: x86_64, aarch64 (Raspberry Pi 4/5,
# Jetson, most gateways) and armv7 (older Pis and gateways), each built with the edge profile
# (small: the release profile's fat LTO, one codegen unit and stripped symbols; a panic aborts)
# and written with its SHA-256 under
# target/release-artifacts/. x86_64 and aarch64 are static (musl): they run on any Linux of
# their architecture. armv7 links glibc (2.36 or later on the board): the standard library of
# Rust's armv7 musl target cannot be had here. It installs what is missing the way setup does:
# Debian's C compilers (ring has C code to build; Rust's musl targets bring their own libc, so
# the glibc cross compiler links aarch64's) and the rustup targets.
#
#   scripts/release.sh                 # every target
#   TARGETS="aarch64-unknown-linux-musl" scripts/release.sh
#   PROFILE=cross OUT=target/cross scripts/release.sh   # quick builds, for the tests under qemu
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { printf '\033[1;34m[release]\033[0m %s\n' "$*"; }

targets="${TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf}"
profile="${PROFILE:-edge}"
out="$root/${OUT:-target/release-artifacts}"
mkdir -p "$out"

# shellcheck source=scripts/toolchain.sh
source scripts/toolchain.sh
# shellcheck disable=SC2086
toolchain $targets

for target in $targets; do
  read -r cc _ <<<"$(cross_cc "$target")"
  env_target=$(tr 'a-z-' 'A-Z_' <<<"$target")
  if [ -n "${cc:-}" ]; then
    export "CC_${target//-/_}=$cc"
    # musl-gcc would link against its own dynamic loader: rustc links x86_64's musl static
    # with the host's cc, as it does by default.
    [ "$cc" = musl-gcc ] || export "CARGO_TARGET_${env_target}_LINKER=$cc"
  fi
  say "building the edge node for $target"
  cargo build --profile "$profile" --locked -p edge-node --target "$target"
  arch=${target%%-*}
  cp "target/$target/$profile/edge-node" "$out/edge-node-$arch"
done

cd "$out"
sha256sum edge-node-* >SHA256SUMS
say "written to ${OUT:-target/release-artifacts}/:"
while read -r sum file; do
  printf '  %-24s %8s bytes  sha256 %s\n' "$file" "$(stat -c %s "$file")" "$sum"
done <SHA256SUMS
