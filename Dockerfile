# agentgate images, from one Dockerfile:
#
#   docker build --target gateway -t agentgate-gateway .   # static binary on scratch, non-root
#   docker build --target worker  -t agentgate-worker  .   # + Node.js and the pinned provider CLIs
#
# A plain `docker build .` builds the worker (the last stage).

ARG GO_VERSION=1.26
ARG NODE_VERSION=22

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static, so that the gateway needs no libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/agentgate ./cmd/agentgate \
 && mkdir -p /out/tmp && chmod 1777 /out/tmp

# The gateway: sockets and nothing else. No shell, no package manager; the
# binary probes its own /readyz.
FROM scratch AS gateway
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/tmp /tmp
COPY --from=build /out/agentgate /usr/local/bin/agentgate
ENV AGENTGATE_LISTEN=0.0.0.0:8080 \
    AGENTGATE_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/agentgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/agentgate"]
CMD ["gateway"]

# The worker runs the provider CLIs and terminals. It runs as root so that
# --user-uids can give each user's processes an account of their own (see
# the README's threat model); without --user-uids, run it as any user.
FROM node:${NODE_VERSION}-bookworm-slim AS worker
# less: git's and the CLIs' pager; openssh-client: git over ssh (git@host:…
# remotes), which --no-install-recommends would leave out. About 10 MB.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates git less openssh-client procps ripgrep tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/agentgate
# The CLIs pinned in package.json, from the lock file. Install scripts are
# skipped and the one that matters is run by name: it puts Claude's native
# binary in place (Codex's comes in an optional platform package).
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
 && node node_modules/@anthropic-ai/claude-code/install.cjs \
 && npm cache clean --force \
 && node_modules/.bin/claude --version && node_modules/.bin/codex --version && node_modules/.bin/gemini --version
COPY --from=build /out/agentgate /usr/local/bin/agentgate
# LANG: the users' terminals and CLIs inherit it (the worker passes LANG
# and LC_* on); in the C locale bash's readline mangles non-ASCII input.
# C.UTF-8 needs no locales package: glibc 2.35 and later build it in, and
# Debian's libc-bin ships it (bookworm: glibc 2.36).
ENV PATH=/opt/agentgate/node_modules/.bin:$PATH \
    LANG=C.UTF-8 \
    AGENTGATE_LOG_FORMAT=json \
    AGENTGATE_USER_HOMES=/var/lib/agentgate/home \
    AGENTGATE_METRICS_LISTEN=0.0.0.0:9090 \
    AGENTGATE_LINK_LISTEN=0.0.0.0:7070
# The users' homes folder is 0711: each user reaches their own home (0700)
# without listing the others' names (mkdir would make it 0755). A named
# volume takes this mode from the image; the worker sets it on one it owns.
RUN mkdir -p /workspaces && install -d -m 0711 /var/lib/agentgate/home
VOLUME ["/var/lib/agentgate/home"]
WORKDIR /var/lib/agentgate
# /metrics and /healthz; the link gateways send keystrokes and acks on
# (it advertises its address on the network it shares with Redis).
EXPOSE 9090 7070
# /healthz on AGENTGATE_METRICS_LISTEN, read from the environment as the
# worker reads it: a changed address is followed, and with none there is
# nothing to probe (the check passes) rather than a container unhealthy
# for good.
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/agentgate", "healthcheck", "--metrics"]
# tini reaps what the CLIs leave behind and passes SIGTERM on, so that the
# worker drains its runs.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/agentgate"]
CMD ["worker"]
