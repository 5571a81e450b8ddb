#!/usr/bin/env bash
# The load generator against two chat-server nodes sharing one Redis, all started here on free
# loopback ports with temporary directories, and stopped (by PID) when the run ends. The
# figures in chat/README.md's "Running several nodes" came from this script.
#
#   bash scripts/cluster-load.sh [SCENARIO [chat-load options]]   (default: node-pairs --clients 1000 --duration 20)
#
# Needs redis-server (bash scripts/cluster-tests.sh installs it). Runs the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server missing: bash scripts/cluster-tests.sh installs it" >&2; exit 1; }
[ $# -gt 0 ] || set -- node-pairs --clients 1000 --duration 20

cargo build -q --release -p syncws-chat -p syncws-chat-load
dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept: $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly yes --dir "$dir" \
    --logfile "$dir/redis.log" &
pids+=($!)
wait_port "$redis_port"

urls=()
for n in 1 2; do
    port=$(free_port)
    target/release/chat-server --redis "redis://127.0.0.1:$redis_port/" --listen "127.0.0.1:$port" \
        --tls-listen off --data-dir "$dir/node$n" --rate 1000000000 --burst 1000000000 \
        --rate-abuse 4294967295 --max-connections 30000 --max-per-ip 30000 --max-handshakes 30000 \
        >"$dir/node$n.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    urls+=("ws://127.0.0.1:$port/")
done

scenario=$1
shift
target/release/chat-load "$scenario" --nodes "$(IFS=,; echo "${urls[*]}")" "$@"
