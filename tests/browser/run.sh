#!/usr/bin/env bash
# Runs the browser end-to-end test of the web client (tests/browser/e2e.mjs).
#
# Installs what a fresh Debian machine lacks first: Debian's Chromium (the test drives
# /usr/bin/chromium; no browser is ever downloaded by npm) and playwright-core from
# package-lock.json. Expects the server binary built already (`cargo build`), or
# CHITCHAT_BIN pointing at one.
set -euo pipefail

cd "$(dirname "$0")/../.."

# apt-get needs root; use sudo when we are not root and it exists.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/bin/chromium ]; then
    echo "run.sh: installing Debian's chromium" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "run.sh: node and npm (Node.js 20 or later) are needed" >&2
    exit 1
fi

if [ ! -d tests/browser/node_modules ]; then
    echo "run.sh: installing playwright-core (npm ci)" >&2
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

# The test's chat clients without a page use Node's own WebSocket: built in from Node 22,
# behind a flag in Node 20.
node_flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
    node_flags=(--experimental-websocket)
fi

exec node "${node_flags[@]}" --test tests/browser/e2e.mjs
