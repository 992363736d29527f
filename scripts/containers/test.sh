#!/usr/bin/env bash
# make container-test: builds the gateway and worker images with podman
# (base images made locally by base-images.sh), then runs TestContainers:
# deploy/compose brought up, a run and a terminal through nginx with the real
# Claude CLI against the mock model API, a gateway killed mid-run, Redis
# restarted, everything torn down. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf 'container-test: %s\n' "$*" >&2; }
missing=""
for bin in podman runc podman-compose debootstrap; do command -v "$bin" >/dev/null || missing="$missing $bin"; done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing$missing (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc podman-compose debootstrap >/dev/null
  else
    say "missing:$missing (Debian: apt-get install podman runc podman-compose debootstrap)"; exit 1
  fi
fi
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers/containers.conf}
./scripts/containers/base-images.sh

node_major=$(node -p 'process.versions.node.split(".")[0]')
CA=/etc/ssl/certs/ca-certificates.crt
# The host's module and build caches make rebuilds take seconds.
caches=(-v "$(go env GOMODCACHE):/go/pkg/mod" -v "$(go env GOCACHE):/root/.cache/go-build")
for target in gateway worker; do
  say "building localhost/agentgate-$target"
  start=$(date +%s)
  podman build --pull=never --format docker -q --build-arg "NODE_VERSION=$node_major" \
    -v "$CA:/usr/local/share/host-ca.crt:ro" "${caches[@]}" --target "$target" -t "localhost/agentgate-$target:latest" . >/dev/null
  say "localhost/agentgate-$target: $(podman image inspect -f '{{.Size}}' "localhost/agentgate-$target:latest" | numfmt --to=si)B in $(( $(date +%s) - start ))s"
done
# The filter shows the test's progress, failures and build errors. Its `|| true` is kept
# inside the braces: after `cmd | grep || true` PIPESTATUS holds true's 0, so a
# failing go test passed the script (and CI) silently. With pipefail the
# pipeline's status is go test's, as grep's block always succeeds.
status=0
go test -tags containers -run TestContainers -count=1 -timeout 20m -v ./e2e/ 2>&1 |
  { grep -E '^(=== RUN|--- |PASS|FAIL|ok |# )|\.go:[0-9]+:|^ {8}' || true; } || status=$?
if [ "$status" != 0 ]; then say "TestContainers failed (exit $status)"; fi
exit "$status"
