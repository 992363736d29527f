#!/usr/bin/env sh
# Writes the secrets the compose file reads, once: the Redis password (in a
# Redis config file, and in the URL of agentgate.env) and the JWT secret.
# Provider keys go in providers.env (ANTHROPIC_API_KEY=…), made empty here.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
if [ ! -f secrets/redis-auth.conf ]; then
  pass=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  printf 'requirepass %s\n' "$pass" > secrets/redis-auth.conf
  printf 'AGENTGATE_REDIS_URL=redis://:%s@redis:6379/0\nAGENTGATE_JWT_SECRET=%s\n' \
    "$pass" "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > agentgate.env
fi
[ -f providers.env ] || : > providers.env
# Redis reads the file as the redis user of its image, so the file is 0644;
# the folder (0700) keeps other accounts of this host out.
chmod 0644 secrets/redis-auth.conf
echo "secrets ready in $(pwd)"
