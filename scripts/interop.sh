#!/usr/bin/env bash
# permessage-deflate interop with an independent implementation: Python `websockets` (pinned,
# installed into target/interop-venv on first use).
#
#   bash scripts/interop.sh
#
# 1. A websockets echo server (compression on by default) against examples/echo_client with
#    --deflate, in every mode, text and binary; each run must report compressed bytes.
# 2. A websockets client (compression on by default) against examples/echo_server (the library's
#    ServerConnection): JSON chat, a 1.9 MB text, binary, empty.
# Everything on 127.0.0.1; every step has a timeout.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/target/interop-venv
WEBSOCKETS_VERSION=15.0.1
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples

die() {
    echo "interop: $*" >&2
    exit 2
}

marker=$VENV/.installed-websockets-$WEBSOCKETS_VERSION
if [[ ! -f $marker ]]; then
    echo "interop: installing websockets $WEBSOCKETS_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION"
    touch "$marker"
fi

cargo build --quiet --example echo_server --example echo_client

PIDS=()
FOUND=
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Start a server in the background (up to 300 s; killed on exit) and set FOUND to what its
# stdout says once it matches the sed expression (waiting up to 10 s): where it listens.
# Not called in $(...): the PID must reach this shell's cleanup.
start_server() {
    local what=$1 sed_expr=$2 out found=
    shift 2
    out=$(mktemp)
    timeout 300 "$@" >"$out" &
    PIDS+=($!)
    for _ in $(seq 100); do
        found=$(sed -n "$sed_expr" "$out")
        [[ -n $found ]] && break
        sleep 0.1
    done
    rm -f "$out"
    [[ -n $found ]] || die "$what did not start"
    FOUND=$found
}

# 1. syncws clients against the Python server.
start_server "the Python server" 's/^port //p' "$VENV/bin/python" scripts/interop/peer.py server
PORT=$FOUND
for mode in blocking nonblocking threaded; do
    for kind in "--count 2000 --size 3000" "--count 20 --size 300000 --binary"; do
        # shellcheck disable=SC2086
        out=$(timeout 60 "$BIN/echo_client" --mode "$mode" --url "ws://127.0.0.1:$PORT/" --deflate $kind)
        echo "$out"
        [[ $out == ok* && $out == *compressed=* ]] || die "$mode ($kind): expected a compressed echo run"
    done
done

# 2. The Python client against the syncws server.
start_server echo_server 's/.*listening on \(ws:[^ ]*\).*/\1/p' "$BIN/echo_server" --addr 127.0.0.1:0
URL=$FOUND
timeout 60 "$VENV/bin/python" scripts/interop/peer.py client "$URL"
echo "interop: PASS"
