#!/usr/bin/env bash
# Cluster mode (chat-server --redis): several nodes on one Redis, each test with a redis-server
# of its own on a free loopback port (chat/tests/cluster.rs). Installs Debian's redis-server if
# it is missing (the tests start it; no Redis service is left running).
#
#   bash scripts/cluster-tests.sh [TEST-NAME-FILTER]
#
# Fails when no test ran (a filter that matches nothing must not pass as "0 failed").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    printf '\n==> installing redis-server (Debian package)\n'
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
    fi
    # The package starts a system service on 6379; the tests use their own instances.
    (systemctl stop redis-server 2>/dev/null || service redis-server stop 2>/dev/null) || true
fi
redis-server --version

OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
cargo test -p syncws-chat --test cluster -- --ignored "$@" 2>&1 | tee "$OUT"
# libtest's summary: "test result: ok. N passed; ...".
PASSED=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed;.*/\1/p' "$OUT" | awk '{ n += $1 } END { print n + 0 }')
if (( PASSED == 0 )); then
    echo "cluster-tests: no test ran${1:+ (filter: $*)}" >&2
    exit 1
fi
