#!/usr/bin/env sh
# Writes the secrets the compose file reads, once: the Redis password (in a
# Redis config file, and in the URL of agentgate.env) and the JWT secret (in
# gateway.env, for the gateways only: a worker checks no token, and the
# users' processes run beside it).
# Provider keys go in providers.env (ANTHROPIC_API_KEY=…), made empty here.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
if [ ! -f secrets/redis-auth.conf ]; then
  pass=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  printf 'requirepass %s\n' "$pass" > secrets/redis-auth.conf
  printf 'AGENTGATE_REDIS_URL=redis://:%s@redis:6379/0\n' "$pass" > agentgate.env
fi
if [ ! -f gateway.env ]; then
  if grep -q '^AGENTGATE_JWT_SECRET=' agentgate.env; then
    # Written here by an earlier version: moved, so that tokens stay valid.
    grep '^AGENTGATE_JWT_SECRET=' agentgate.env > gateway.env
    sed -i '/^AGENTGATE_JWT_SECRET=/d' agentgate.env
  else
    printf 'AGENTGATE_JWT_SECRET=%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > gateway.env
  fi
fi
[ -f providers.env ] || : > providers.env
# Redis reads the file as the redis user of its image, so the file is 0644;
# the folder (0700) keeps other accounts of this host out.
chmod 0644 secrets/redis-auth.conf
echo "secrets ready in $(pwd)"
