#!/usr/bin/env bash
# The chat page (chat/web) in a real browser: headless Debian Chromium driven by playwright-core,
# against the real chat-server binary and the library's terminal client.
#
#   bash scripts/browser-tests.sh [TEST-NAME-FILTER...]
#
# Always builds chat-server and the chat_client example (release) from this tree and tests
# those: CHAT_SERVER / CHAT_CLIENT in the environment are ignored here, so a stale binary can
# never stand in for the code under test. (To try other binaries by hand, run
# `CHAT_SERVER=... CHAT_CLIENT=... node chat/browser-tests/chat.test.mjs` directly; CI does not.)
# CHAT_WEB_DIR=chat/web serves the page files from the disk instead of the copies compiled into
# the server. A NAME-FILTER that matches no test fails. Screenshots land in target/browser-tests/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TESTS=$ROOT/chat/browser-tests

step() { printf '\n==> %s\n' "$*"; }

if [[ ! -x /usr/bin/chromium ]]; then
    step "installing Debian's chromium"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
    fi
fi

# playwright-core needs Node.js 20 or later (Debian 12's own nodejs is 18; NodeSource has 20).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "browser-tests: node (20 or later) and npm are needed" >&2
    exit 2
fi
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
if (( NODE_MAJOR < 20 )); then
    echo "browser-tests: playwright-core needs Node.js 20 or later; this is $(node --version)" >&2
    exit 2
fi

# npm ci when node_modules is missing or older than the lock file. No browser download: the
# tests use /usr/bin/chromium.
if [[ ! -f $TESTS/node_modules/.package-lock.json || $TESTS/package-lock.json -nt $TESTS/node_modules/.package-lock.json ]]; then
    step "npm ci (playwright-core, no browser download)"
    (cd "$TESTS" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

step "cargo build --release -p syncws-chat --bins --examples"
cargo build --release -p syncws-chat --bins --examples
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CHAT_SERVER=$TARGET/release/chat-server
export CHAT_CLIENT=$TARGET/release/examples/chat_client

step "the chat page in headless Chromium"
node "$TESTS/chat.test.mjs" "$@"
