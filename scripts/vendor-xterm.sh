#!/usr/bin/env bash
# Copies the xterm.js files the bundled web client loads from the versions
# pinned in package.json (./node_modules, installed by scripts/test-deps.sh)
# into handlers/web/vendor/xterm/, which is committed and embedded in the
# binary: `go run ./cmd/agentgate serve` needs no npm. Run it after changing
# the pins, and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."

out=handlers/web/vendor/xterm
for pkg in @xterm/xterm @xterm/addon-fit; do
  want=$(node -p "require('./package.json').devDependencies['$pkg']")
  have=$(node -p "require('./node_modules/$pkg/package.json').version" 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "vendor-xterm: $pkg $want is not in ./node_modules (found '${have}'): run npm ci --ignore-scripts" >&2
    exit 1
  fi
done

mkdir -p "$out"
# The source-map comments point at files that are not vendored.
sed '/^\/\/# sourceMappingURL=/d' node_modules/@xterm/xterm/lib/xterm.mjs >"$out/xterm.mjs"
sed '/^\/\/# sourceMappingURL=/d' node_modules/@xterm/addon-fit/lib/addon-fit.mjs >"$out/addon-fit.mjs"
cp node_modules/@xterm/xterm/css/xterm.css "$out/xterm.css"
cp node_modules/@xterm/xterm/LICENSE "$out/LICENSE"
{
  echo "@xterm/xterm $(node -p "require('./node_modules/@xterm/xterm/package.json').version")"
  echo "@xterm/addon-fit $(node -p "require('./node_modules/@xterm/addon-fit/package.json').version")"
} >"$out/VERSIONS"
echo "vendor-xterm: $(tr '\n' ' ' <"$out/VERSIONS")-> $out" >&2
