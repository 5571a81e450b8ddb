#!/usr/bin/env bash
# The chat hub's cost per message: runs one chat-load scenario against the server it starts,
# and reads, until that server ends, the CPU time of its hub thread ("chat-hub",
# /proc/PID/task/TID/stat) and its /metrics counters (messages, deliveries, commits). Prints
# the hub's CPU per request (message) and per delivery, and the server's CPU.
#
#   bash scripts/hub-cost.sh node-pairs --clients 1000 --duration 20
#   PERF=8 bash scripts/hub-cost.sh node-pairs --clients 3000   # + a profile of the hub thread
#   CHAT_LOAD=/tmp/before/chat-load bash scripts/hub-cost.sh node-pairs   # another build
#
# PERF=SECONDS records the hub thread with `perf record -e cpu-clock -g` for that long,
# PERF_DELAY (10) seconds in, into OUT/perf.data (OUT: $OUT or target/hub-cost). Linux only.
# The hub's CPU counts everything it does (connects, joins, matches); in the message
# scenarios messages are nearly all of it. Run it on a quiet machine: other processes
# slow the hub's caches too.
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD=${CHAT_LOAD:-target/release/chat-load}
OUT=${OUT:-target/hub-cost}
if [ -z "${CHAT_LOAD:-}" ]; then
    cargo build --release -q -p syncws-chat-load
fi
mkdir -p "$OUT"
"$LOAD" "$@" --json --out "$OUT" >"$OUT/result.json" 2>"$OUT/stderr" &
load=$!
server=""
for _ in $(seq 300); do
    server=$(pgrep -P "$load" | head -1 || true)
    [ -n "$server" ] && break
    sleep 0.1
done
hub=""
for _ in $(seq 100); do
    for task in /proc/"$server"/task/*; do
        [ "$(cat "$task/comm" 2>/dev/null)" = chat-hub ] && hub=$(basename "$task")
    done
    [ -n "$hub" ] && break
    sleep 0.1
done
ports=$(ss -ltnp 2>/dev/null | grep "pid=$server," | awk '{print $4}' | sed 's/.*://' | tr '\n' ' ')
if [ -z "$server" ] || [ -z "$hub" ] || [ -z "$ports" ]; then
    echo "hub-cost: no server, hub thread or port found (server '$server', hub '$hub')" >&2
    wait "$load" || true
    exit 1
fi
if [ -n "${PERF:-}" ]; then
    (sleep "${PERF_DELAY:-10}"; perf record -q -e cpu-clock -F 2000 -g -t "$hub" \
        -o "$OUT/perf.data" -- sleep "$PERF" >/dev/null 2>&1) &
fi
cpu() { sed 's/.*) //' "$1" | awk '{print ($12 + $13) / 100}'; }
hub_cpu=0; server_cpu=0; counters=""
while [ -e "/proc/$server/task/$hub/stat" ]; do
    h=$(cpu "/proc/$server/task/$hub/stat" 2>/dev/null || true); [ -n "$h" ] && hub_cpu=$h
    s=$(cpu "/proc/$server/stat" 2>/dev/null || true); [ -n "$s" ] && server_cpu=$s
    for port in $ports; do
        m=$(curl -s --max-time 1 "http://127.0.0.1:$port/metrics" 2>/dev/null \
            | grep -E '^chat_(messages|deliveries|commits)_total ' || true)
        [ -n "$m" ] && counters=$m
    done
    sleep 0.5
done
status=0
wait "$load" || status=$?
value() { echo "$counters" | awk -v n="chat_$1_total" '$1 == n {print $2}'; }
messages=$(value messages); deliveries=$(value deliveries); commits=$(value commits)
echo "hub CPU ${hub_cpu} s, server CPU ${server_cpu} s; ${messages} messages, ${deliveries} deliveries, ${commits} commits" | tee "$OUT/hub-cost.txt"
awk -v h="$hub_cpu" -v m="$messages" -v d="$deliveries" -v c="$commits" 'BEGIN {
    if (m > 0 && d > 0) printf "hub: %.2f us per message, %.2f us per delivery, %.1f messages per commit\n", h * 1e6 / m, h * 1e6 / d, m / c
}' | tee -a "$OUT/hub-cost.txt"
exit "$status"
