#!/usr/bin/env bash
# What an operator deploys, checked by the tools that will read it:
#   - /metrics through `promtool check metrics` (Debian's prometheus package),
#   - deploy/nginx-chat.conf through `nginx -t`, and a chat through it (nginx-light),
#   - deploy/syncws-chat.service through `systemd-analyze verify` and its offline security
#     review (exposure at most 1.5 of 10).
# Installs what is missing from Debian's packages; starts no system service (nginx runs in the
# foreground as this user, on free loopback ports, and is stopped by the test).
#
#   bash scripts/operator-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CLEAN=()
trap 'rm -rf "${CLEAN[@]}"' EXIT

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v nginx >/dev/null || need+=(nginx-light)
command -v systemd-analyze >/dev/null || need+=(systemd)
if (( ${#need[@]} )); then
    printf '\n==> installing %s (Debian packages)\n' "${need[*]}"
    # policy-rc.d 101: the packages' services are not started.
    POLICY=/usr/sbin/policy-rc.d
    [[ -e $POLICY ]] || { printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; CLEAN+=("$POLICY"); }
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi

OUT=$(mktemp)
UNIT_DIR=$(mktemp -d)
CLEAN+=("$OUT" "$UNIT_DIR")
cargo test -p syncws-chat --test operator -- --include-ignored 2>&1 | tee "$OUT"
PASSED=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed;.*/\1/p' "$OUT" | awk '{ n += $1 } END { print n + 0 }')
if (( PASSED < 4 )); then
    echo "operator-tests: only $PASSED tests ran" >&2
    exit 1
fi

printf '\n==> deploy/syncws-chat.service: systemd-analyze verify and security\n'
cargo build -q --release -p syncws-chat
# The unit names the installed path; here the binary just built stands in for it.
sed "s|/usr/local/bin/chat-server|$PWD/target/release/chat-server|" deploy/syncws-chat.service \
    > "$UNIT_DIR/syncws-chat.service"
systemd-analyze verify "$UNIT_DIR/syncws-chat.service"
# --threshold is in tenths: fail above 1.5 of 10.
systemd-analyze security --offline=true --threshold=15 "$UNIT_DIR/syncws-chat.service" | tail -1
