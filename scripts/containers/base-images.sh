#!/usr/bin/env bash
# Makes the base images that the Dockerfile and the compose file name
# (debian, golang, node, redis, nginx) from a debootstrap of Debian bookworm,
# for hosts with podman but no reachable image registry. The golang and node
# stand-ins trust /usr/local/share/host-ca.crt, which test.sh mounts from the
# host for builds (networks that re-sign HTTPS work as on the host). The rootfs tarball
# is cached in $CACHE (debootstrap is the slow step); images that exist are
# kept. Needs root, podman, debootstrap; Go and Node.js on the host, whose
# toolchains are copied into the golang and node stand-ins.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${AGENTGATE_CONTAINER_CACHE:-${XDG_CACHE_HOME:-/var/cache}/agentgate-containers}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/containers.conf}
say() { printf 'base-images: %s\n' "$*" >&2; }
have() { podman image exists "$1"; }
# A build that fails (a mirror that drops a download) is tried once more.
build() { podman build --pull=never -q "$@" >/dev/null || { say "retrying: podman build $*"; podman build --pull=never -q "$@" >/dev/null; }; }

mkdir -p "$CACHE"
tarball=$CACHE/bookworm-minbase.tar
if [ ! -f "$tarball" ]; then
  say "debootstrap bookworm into $CACHE (about 3 minutes, once)"
  rm -rf "$CACHE/rootfs.tmp"
  debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" "$MIRROR" >"$CACHE/debootstrap.log"
  tar --numeric-owner -C "$CACHE/rootfs.tmp" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$CACHE/rootfs.tmp"
fi

if ! have docker.io/library/debian:bookworm-slim; then
  say "debian:bookworm-slim"
  podman import -q --change 'CMD ["/bin/bash"]' "$tarball" docker.io/library/debian:bookworm-slim >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

golang=docker.io/library/golang:$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')-bookworm
if ! have "$golang"; then
  say "${golang#docker.io/library/} (the host's $(go env GOVERSION))"
  mkdir "$ctx/go"
  cp -a "$(go env GOROOT)" "$ctx/go/go"
  cat >"$ctx/go/Containerfile" <<'EOT'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY go /usr/local/go
ENV GOPATH=/go PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOTOOLCHAIN=local \
    SSL_CERT_FILE=/usr/local/share/host-ca.crt
WORKDIR /go
EOT
  build -t "$golang" "$ctx/go"
fi

node=docker.io/library/node:$(node -p 'process.versions.node.split(".")[0]')-bookworm-slim
if ! have "$node"; then
  say "${node#docker.io/library/} (the host's Node.js $(node --version))"
  mkdir -p "$ctx/node/lib"
  cp "$(command -v node)" "$ctx/node/node"
  cp -a "$(npm root -g)/npm" "$ctx/node/lib/npm"
  cat >"$ctx/node/Containerfile" <<'EOT'
FROM docker.io/library/debian:bookworm-slim
COPY node /usr/local/bin/node
COPY lib/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && mkdir -p /usr/local/etc && printf 'cafile=/usr/local/share/host-ca.crt\n' > /usr/local/etc/npmrc
CMD ["node"]
EOT
  build -t "$node" "$ctx/node"
fi

if ! have docker.io/library/redis:7-bookworm; then
  say "redis:7-bookworm (Debian's redis-server)"
  mkdir "$ctx/redis"
  cat >"$ctx/redis/Containerfile" <<'EOT'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
CMD ["redis-server"]
EOT
  build -t docker.io/library/redis:7-bookworm "$ctx/redis"
fi

if ! have docker.io/library/nginx:stable-bookworm; then
  say "nginx:stable-bookworm (Debian's nginx)"
  mkdir "$ctx/nginx"
  cat >"$ctx/nginx/Containerfile" <<'EOT'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
EOT
  build -t docker.io/library/nginx:stable-bookworm "$ctx/nginx"
fi
say "ready: $(podman images --format '{{.Repository}}:{{.Tag}}' | grep -E '^docker.io/library/' | tr '\n' ' ')"
