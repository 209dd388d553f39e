# Sourced by scripts/release.sh and scripts/image.sh: what building for a Rust target takes,
# installed when missing the way setup does. Needs `say`.
#
#   cross_cc TARGET        the target's C compiler (ring has C code) and the Debian packages
#                          that have it; nothing for the host's own target
#   toolchain TARGET...    installs those packages and the rustup targets that are missing

cross_cc() {
  case "$1" in
    x86_64-unknown-linux-gnu) echo "" ;;
    x86_64-unknown-linux-musl) echo "musl-gcc musl-tools" ;;
    aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl)
      echo "aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
    armv7-unknown-linux-gnueabihf) echo "arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

toolchain() {
  local target cc packages missing=() more
  for target in "$@"; do
    read -r cc packages <<<"$(cross_cc "$target")"
    if [ -n "${cc:-}" ] && ! command -v "$cc" >/dev/null; then
      read -r -a more <<<"$packages"
      missing+=("${more[@]}")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  for target in "$@"; do
    # The download of a target's standard library sometimes fails midway: try again.
    for try in 1 2 3; do
      rustup target list --installed | grep -qx "$target" && break
      say "adding the rustup target $target (try $try)"
      rustup target add "$target" >/dev/null || sleep 2
    done
    rustup target list --installed | grep -qx "$target" || { say "could not add the rustup target $target"; exit 1; }
  done
}
