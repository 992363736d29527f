#!/usr/bin/env bash
# Installs what the tests run for real, then exits: redis-server and
# Chromium (Debian's packages, when missing and apt-get can be used), and the
# npm packages pinned in package.json (the provider CLIs, playwright-core,
# xterm.js), into ./node_modules. Safe to run again: it skips what is
# already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test-deps: %s\n' "$*" >&2; }

if ! command -v go >/dev/null; then
  say "Go is not installed (https://go.dev/dl/, 1.26 or newer)"; exit 1
fi

if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing redis-server (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    say "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"
    exit 1
  fi
fi

# deploy/'s tests run compose's nginx.conf in a real nginx (on 127.0.0.1,
# stopped by its PID). Without it they skip (and fail in CI).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing nginx (apt-get; its service is not started)"
    # Debian starts a package's service on install, and nginx's stock site
    # would listen on port 80 of every address: policy-rc.d says no while
    # the package installs (the tests start nginx themselves).
    had_policy=""
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ -n "$had_policy" ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
    [ -n "$had_policy" ] || rm -f /usr/sbin/policy-rc.d
  else
    say "nginx is missing: the nginx.conf test will be skipped (Debian/Ubuntu: sudo apt-get install nginx)"
  fi
fi

# The browser tests drive Debian's Chromium with playwright-core; no browser
# build is ever downloaded. Without it they skip (and fail in CI).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing chromium (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  else
    say "chromium is missing: the browser tests will be skipped (Debian/Ubuntu: sudo apt-get install chromium)"
  fi
fi

if ! command -v npm >/dev/null; then
  say "npm is missing: install Node.js 20 or newer (https://nodejs.org, or Debian 13: apt-get install nodejs npm)"; exit 1
fi
# The pinned Gemini CLI needs Node.js 20; Debian 12's own nodejs is 18.
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  say "Node.js $(node --version) is too old for the pinned Gemini CLI: install Node.js 20 or newer (https://nodejs.org)"; exit 1
fi

# version prints the installed version of one CLI in node_modules/.bin.
version() {
  case "$1" in
    claude) node_modules/.bin/claude --version 2>/dev/null | cut -d' ' -f1 ;;
    codex) node_modules/.bin/codex --version 2>/dev/null | cut -d' ' -f2 ;;
    gemini) node_modules/.bin/gemini --version 2>/dev/null ;;
  esac
}
pinned() { node -p "require('./package.json').devDependencies['$1']"; }

stale=""
for pair in claude:@anthropic-ai/claude-code codex:@openai/codex gemini:@google/gemini-cli; do
  bin=${pair%%:*} pkg=${pair#*:}
  if [ "$(version "$bin" || true)" != "$(pinned "$pkg")" ]; then stale="$stale $pkg@$(pinned "$pkg")"; fi
done
# Plain JavaScript packages: the browser tests' driver and the terminal the
# web client vendors (scripts/vendor-xterm.sh).
for pkg in playwright-core @xterm/xterm @xterm/addon-fit; do
  have=$(node -p "require('./node_modules/$pkg/package.json').version" 2>/dev/null || true)
  if [ "$have" != "$(pinned "$pkg")" ]; then stale="$stale $pkg@$(pinned "$pkg")"; fi
done
if [ -n "$stale" ]; then
  say "installing$stale into ./node_modules"
  # Scripts are skipped and the one postinstall we need is run by name: it
  # puts Claude's native binary in place of npm's placeholder. Codex ships
  # its native binary in a platform package that npm installs as an
  # optional dependency, and Gemini is plain JavaScript: neither needs one.
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  node node_modules/@anthropic-ai/claude-code/install.cjs
  for bin in claude codex gemini; do
    if [ -z "$(version "$bin" || true)" ]; then say "node_modules/.bin/$bin does not run"; exit 1; fi
  done
fi
say "ready: $(redis-server --version | cut -d' ' -f3), claude $(version claude), codex $(version codex), gemini $(version gemini), playwright-core $(pinned playwright-core)"
