#!/usr/bin/env bash
# Autobahn|Testsuite conformance of every client mode, or of the chat server's /echo endpoint.
#
#   bash scripts/autobahn.sh [--deflate full|quick|none] [blocking] [nonblocking] [threaded]
#   bash scripts/autobahn.sh --server [--deflate full|quick|none]
#
# Client modes (default: all three): builds the testee (examples/autobahn_client.rs), runs
# `wstest -m fuzzingserver` on 127.0.0.1 and the testee once per mode against it. Results:
# conformance/autobahn-results.md (when every mode ran); expectations:
# conformance/autobahn-expected.json.
#
# --server: builds chat-server (chat/), starts it on a free 127.0.0.1 port without TLS and with a
# fresh data directory under target/autobahn/, runs `wstest -m fuzzingclient` against its /echo
# endpoint (agent syncws-chat), then stops it with SIGTERM and expects exit status 0. Results:
# conformance/autobahn-server-results.md; expectations: conformance/autobahn-server-expected.json.
#
# The permessage-deflate cases (12.* and 13.*, 216 of them) send 1000 messages each and take
# ~8 minutes per client mode in full; the server's full run took 19 minutes:
#   full   every case (default; the recorded proof in the results files)
#   quick  12.* and 13.* at 16 B to 32 KiB plus the fragmented 8 and 16 KiB cases: every
#          negotiation variant and data set in ~70 s to 4 minutes per client mode, ~5 minutes
#          for the server (what .ci/run uses)
#   none   no compression cases
#
# Installs the suite (Python 2.7 only) into target/autobahn-venv once, prints and writes the
# summary (the results file only after a full run: every mode, --deflate full), and fails if any
# case FAILED or a mode does worse than its expectations file.
#
# Environment: AUTOBAHN_PYTHON2 (a Python 2.7 interpreter; default: pyenv's 2.7.18),
# AUTOBAHN_TIMEOUT (seconds per mode, or for the server run; default 1500 full, 480 quick,
# 300 none). Work files and HTML reports: target/autobahn/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SUITE_VERSION=25.10.1
VENV=$ROOT/target/autobahn-venv
WORK=$ROOT/target/autobahn
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
ALL_MODES=(blocking nonblocking threaded)
START=$(date +%s)

die() {
    echo "autobahn: $*" >&2
    exit 2
}

SERVER=
MODES=()
DEFLATE=full
USAGE="usage: scripts/autobahn.sh [--deflate full|quick|none] [blocking] [nonblocking] [threaded]
       scripts/autobahn.sh --server [--deflate full|quick|none]"
while [[ $# -gt 0 ]]; do
    case $1 in
        blocking | nonblocking | threaded) MODES+=("$1") ;;
        --server) SERVER=1 ;;
        --deflate)
            [[ $# -ge 2 ]] || die "$USAGE"
            DEFLATE=$2
            shift
            ;;
        --deflate=*) DEFLATE=${1#--deflate=} ;;
        *) die "$USAGE" ;;
    esac
    shift
done
case $DEFLATE in
    full) EXCLUDE='[]' ;;
    none) EXCLUDE='["12.*", "13.*"]' ;;
    # Sizes 9, 10 and 13-18 of each group: 64 and 128 KiB, and the fragmented 32 KiB and up.
    quick) EXCLUDE=$(python3 -c 'import json; print(json.dumps(["%s.%d" % (g, i)
        for g in ["12.%d" % j for j in range(1, 6)] + ["13.%d" % j for j in range(1, 8)]
        for i in (9, 10, 13, 14, 15, 16, 17, 18)]))') ;;
    *) die "$USAGE" ;;
esac
declare -A DEFAULT_TIMEOUT=([full]=1500 [quick]=480 [none]=300)
MODE_TIMEOUT=${AUTOBAHN_TIMEOUT:-${DEFAULT_TIMEOUT[$DEFLATE]}}

# What is tested, where its verdicts go, and what they are checked against. A mode's agent in
# the reports is syncws-<mode>; the server run has the one mode "chat" (agent syncws-chat).
if [[ -n $SERVER ]]; then
    [[ ${#MODES[@]} -eq 0 ]] || die "--server takes no client modes; $USAGE"
    MODES=(chat)
    EXPECTED=$ROOT/conformance/autobahn-server-expected.json
    RESULTS=$ROOT/conformance/autobahn-server-results.md
    REPORTS=$WORK/reports/servers
    FULL_RUN=
    [[ $DEFLATE != full ]] || FULL_RUN=1
    SUITE_ROLE="fuzzing client"
    TESTEE="testee \`chat-server\`'s \`/echo\` endpoint (chat/src/server.rs)"
else
    [[ ${#MODES[@]} -gt 0 ]] || MODES=("${ALL_MODES[@]}")
    EXPECTED=$ROOT/conformance/autobahn-expected.json
    RESULTS=$ROOT/conformance/autobahn-results.md
    REPORTS=$WORK/reports/clients
    FULL_RUN=
    [[ ${#MODES[@]} -ne ${#ALL_MODES[@]} || $DEFLATE != full ]] || FULL_RUN=1
    SUITE_ROLE="fuzzing server"
    TESTEE="testee \`examples/autobahn_client.rs\`"
fi

# ----- install (idempotent) ------------------------------------------------------------------

find_python2() {
    if [[ -n ${AUTOBAHN_PYTHON2:-} ]]; then
        echo "$AUTOBAHN_PYTHON2"
    elif command -v pyenv >/dev/null && [[ -x "$(pyenv root)/versions/2.7.18/bin/python" ]]; then
        echo "$(pyenv root)/versions/2.7.18/bin/python"
    else
        command -v python2.7 || true
    fi
}

install_suite() {
    local marker=$VENV/.installed-autobahntestsuite-$SUITE_VERSION
    [[ -f $marker && -x $VENV/bin/wstest ]] && return
    local py2
    py2=$(find_python2)
    if [[ -z $py2 ]] || ! "$py2" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
        die "Autobahn|Testsuite needs CPython 2.7, which was not found (tried \$AUTOBAHN_PYTHON2," \
            "\$(pyenv root)/versions/2.7.18/bin/python, python2.7). Install it, e.g." \
            "'pyenv install 2.7.18', or set AUTOBAHN_PYTHON2. No tests were run."
    fi
    echo "autobahn: installing autobahntestsuite $SUITE_VERSION into $VENV (Python: $py2)"
    rm -rf "$VENV" "$WORK/virtualenv"
    # virtualenv < 20.22 is the last line that can create Python 2 environments. It goes into a
    # private directory, so nothing outside target/ is touched.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$WORK/virtualenv" \
        'virtualenv<20.22'
    PYTHONPATH=$WORK/virtualenv python3 -m virtualenv --quiet --python "$py2" "$VENV"
    # The suite pins its own Python 2 dependencies (twisted, autobahn 0.10.9, ...).
    PYTHONWARNINGS=ignore "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        --no-python-version-warning "autobahntestsuite==$SUITE_VERSION"
    "$VENV/bin/wstest" --autobahnversion >/dev/null
    touch "$marker"
}

mkdir -p "$WORK"
install_suite
INSTALLED=$(date +%s)

# ----- build ---------------------------------------------------------------------------------

if [[ -n $SERVER ]]; then
    cargo build --quiet --release -p syncws-chat --bin chat-server
else
    cargo build --quiet --release --example autobahn_client
fi
BUILT=$(date +%s)

# ----- processes: started in the background, always stopped ----------------------------------

FUZZER_PID= # wstest -m fuzzingserver
RUN_PID=    # the timed run: the testee, or wstest -m fuzzingclient
CHAT_PID=   # chat-server
CHAT_DATA=  # its data directory
# running PID: whether it still runs (kill -0 would also count a zombie not yet reaped).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # after the command name, which may hold spaces and parentheses
    [[ ${stat:0:1} != [ZX] ]]
}
# stop PID: SIGTERM, up to 15 s to exit, then SIGKILL; sets STOPPED to its exit status. Not in a
# command substitution: only this shell can wait for its children.
STOPPED=
stop() {
    local pid=$1
    STOPPED=
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        echo "autobahn: pid $pid still running 15 s after SIGTERM; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    STOPPED=0
    wait "$pid" 2>/dev/null || STOPPED=$?
}
# shellcheck disable=SC2317 # only the EXIT trap calls it
cleanup() {
    stop "$RUN_PID"
    stop "$FUZZER_PID"
    stop "$CHAT_PID"
    RUN_PID=''
    FUZZER_PID=''
    CHAT_PID=''
    [[ -z $CHAT_DATA ]] || rm -rf "$CHAT_DATA"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_listening PID PORT WHAT LOG: until something accepts on 127.0.0.1:PORT (up to 30 s).
wait_listening() {
    for _ in $(seq 300); do
        running "$1" || die "$3 exited; see $4"
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    die "$3 not listening on port $2 after 30 s; see $4"
}

STATUS=() # per mode: the exit status of the timed run (124: timed out)
TIMES=()  # per mode: its seconds
PROBLEMS=() # found here rather than in the reports (one line each)

# timed_run LABEL LOG COMMAND...: COMMAND in target/autobahn/ under the per-mode timeout, stdout
# and stderr to LOG. In the background so that a signal to this script interrupts the wait and
# cleans up.
timed_run() {
    local label=$1 log=$2 t0 status=0
    shift 2
    t0=$(date +%s)
    (cd "$WORK" && exec timeout "$MODE_TIMEOUT" "$@" >"$log" 2>&1) &
    RUN_PID=$!
    wait "$RUN_PID" || status=$?
    RUN_PID=
    TIMES+=("$(($(date +%s) - t0))")
    STATUS+=("$status")
    echo "autobahn: $label: exit status $status after ${TIMES[-1]} s (log: $log)"
}

# fuzzing_spec FILE SERVERS_JSON_OR_EMPTY: the suite's spec; the fuzzing server's (with "url")
# when no servers are given, else the fuzzing client's.
fuzzing_spec() {
    local target
    if [[ -n $2 ]]; then
        target="\"servers\": $2"
    else
        target="\"url\": \"$URL\""
    fi
    cat >"$1" <<EOF
{
  $target,
  "outdir": "$REPORTS",
  "options": {"failByDrop": false},
  "cases": ["*"],
  "exclude-cases": $EXCLUDE,
  "exclude-agent-cases": {}
}
EOF
}

rm -rf "$REPORTS" # never read a previous run's verdicts

# ----- client modes: the fuzzing server, then the testee once per mode -----------------------

run_clients() {
    local port mode
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    URL=ws://127.0.0.1:$port
    fuzzing_spec "$WORK/fuzzingserver.json" ""
    # wstest listens on every interface; bind it to 127.0.0.1 only. No web UI (-u 0).
    (cd "$WORK" && exec "$VENV/bin/python" -c '
import functools, sys
import autobahntestsuite.fuzzing as fuzzing
fuzzing.listenWS = functools.partial(fuzzing.listenWS, interface="127.0.0.1")
from autobahntestsuite.wstest import run
sys.argv[0] = "wstest"
sys.exit(run())
' -m fuzzingserver -s "$WORK/fuzzingserver.json" -u 0 >"$WORK/server.log" 2>&1) &
    FUZZER_PID=$!
    wait_listening "$FUZZER_PID" "$port" "fuzzing server" "$WORK/server.log"
    echo "autobahn: fuzzing server on $URL (pid $FUZZER_PID)"
    for mode in "${MODES[@]}"; do
        timed_run "$mode: testee" "$WORK/$mode.log" \
            "$RELEASE/examples/autobahn_client" --mode "$mode" --url "$URL" --agent "syncws-$mode"
    done
    stop "$FUZZER_PID"
    FUZZER_PID=
}

# ----- server: chat-server, then the fuzzing client against its /echo ------------------------

run_server() {
    local out=$WORK/chat-server.out log=$WORK/chat-server.log port=
    CHAT_DATA=$(mktemp -d "$WORK/chat-data.XXXXXX")
    # /echo is off unless asked for; Autobahn's cases go up to 16 MiB messages.
    "$RELEASE/chat-server" --listen 127.0.0.1:0 --tls-listen off --data-dir "$CHAT_DATA" \
        --echo --echo-max-message 16777216 \
        >"$out" 2>"$log" &
    CHAT_PID=$!
    # Port 0: the port it got is in its first line.
    for _ in $(seq 300); do # up to 30 s
        port=$(sed -n 's|^chat-server listening on ws://127\.0\.0\.1:\([0-9][0-9]*\)/ .*|\1|p' "$out")
        [[ -z $port ]] || break
        running "$CHAT_PID" || die "chat-server exited; see $log"
        sleep 0.1
    done
    [[ -n $port ]] || die "chat-server printed no ws:// address after 30 s; see $out and $log"
    wait_listening "$CHAT_PID" "$port" "chat-server" "$log"
    URL=ws://127.0.0.1:$port/echo
    echo "autobahn: chat-server on ws://127.0.0.1:$port/ (pid $CHAT_PID), testing $URL"
    fuzzing_spec "$WORK/fuzzingclient.json" "[{\"agent\": \"syncws-chat\", \"url\": \"$URL\"}]"
    timed_run "fuzzing client" "$WORK/client.log" \
        "$VENV/bin/wstest" -m fuzzingclient -s "$WORK/fuzzingclient.json"
    stop "$CHAT_PID"
    CHAT_PID=
    echo "autobahn: chat-server: exit status $STOPPED after SIGTERM (log: $log)"
    [[ $STOPPED == 0 ]] ||
        PROBLEMS+=("chat-server exited with status $STOPPED after SIGTERM, not 0; see $log")
    rm -rf "$CHAT_DATA"
    CHAT_DATA=
}

if [[ -n $SERVER ]]; then
    run_server
else
    run_clients
fi

# ----- summary and comparison ----------------------------------------------------------------

WRITE_RESULTS=
[[ -z $FULL_RUN ]] || WRITE_RESULTS=$RESULTS
set +e
python3 - "$REPORTS/index.json" "$EXPECTED" "$WRITE_RESULTS" "$SUITE_VERSION" "$DEFLATE" \
    "${MODES[*]}" "${STATUS[*]}" "${TIMES[*]}" "$SUITE_ROLE" "$TESTEE" \
    ${PROBLEMS[@]+"${PROBLEMS[@]}"} <<'PY'
import json, os, sys

index_path, expected_path, results_path, version, profile = sys.argv[1:6]
modes, statuses, times = (a.split() for a in sys.argv[6:9])
role, testee, problems = sys.argv[9], sys.argv[10], sys.argv[11:]
RANK = {"OK": 0, "INFORMATIONAL": 1, "NON-STRICT": 2, "UNIMPLEMENTED": 3, "FAILED": 4}
COLUMNS = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]

def case_key(case_id):
    return [int(p) for p in case_id.split(".")]

def verdict(entry):
    """The worse of behavior and behaviorClose; close verdicts such as WRONG CODE, UNCLEAN or
    FAILED BY CLIENT count as FAILED. Returns (status, label as the report shows it)."""
    b, c = entry.get("behavior"), entry.get("behaviorClose")
    status = max((s if s in RANK else "FAILED" for s in (b, c)), key=RANK.get)
    return status, b if c in ("OK", b) else "%s (close: %s)" % (b, c)

index = json.load(open(index_path)) if os.path.exists(index_path) else {}
expected = json.load(open(expected_path))
notes, rows, details = [], [], []
# Problems found outside the reports (the chat server's exit status) come first.
problems = list(problems)
for mode, status, secs in zip(modes, statuses, times):
    cases = index.get("syncws-" + mode, {})
    allowed = expected["modes"].get(mode, {})
    counts = dict.fromkeys(COLUMNS, 0)
    not_ok = []
    for case_id in sorted(cases, key=case_key):
        st, label = verdict(cases[case_id])
        counts[st] += 1
        if st != "OK":
            not_ok.append((case_id, st, label))
            allow = allowed.get(case_id, {}).get("allow", [])
            if st == "FAILED":
                problems.append("%s: case %s FAILED: %s" % (mode, case_id, label))
            elif st not in allow:
                problems.append("%s: case %s is %s, expected %s" % (
                    mode, case_id, label, " or ".join(["OK"] + allow)))
    for case_id in sorted(set(allowed) - {c for c, _, _ in not_ok}, key=case_key):
        if case_id in cases:
            notes.append("%s: case %s came out OK (also allowed: %s)" % (
                mode, case_id, ", ".join(allowed[case_id]["allow"])))
    if status != "0":
        runner = "wstest -m fuzzingclient" if role == "fuzzing client" else "testee"
        problems.append("%s: %s exited with status %s%s" % (
            mode, runner, status, " (timed out)" if status == "124" else ""))
    if len(cases) != expected["case_count"][profile]:
        problems.append("%s: %d case results, expected %d" % (
            mode, len(cases), expected["case_count"][profile]))
    rows.append([mode] + [counts[c] for c in COLUMNS] + [len(cases), secs + " s"])
    details.append((mode, not_ok, allowed))

header = ["mode"] + COLUMNS + ["total", "time"]
widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                          for i, (v, w) in enumerate(zip(r, widths)))
print()
print(fmt(header))
for r in rows:
    print(fmt(r))
for mode, not_ok, _ in details:
    print("%s not OK: %s" % (mode, ", ".join("%s %s" % (c, l) for c, _, l in not_ok) or "none"))
for n in notes:
    print("note: " + n)

if results_path:
    md = ["# Autobahn|Testsuite results", "",
          "Generated by `scripts/autobahn.sh` (do not edit): autobahntestsuite %s %s, "
          "every case, including 12.* and 13.* (permessage-deflate); %s. Expectations and "
          "reasons: `conformance/%s`." % (version, role, testee, os.path.basename(expected_path)),
          "",
          "| " + " | ".join(header[:-1]) + " |", "|" + "---|" * (len(header) - 1)]
    md += ["| " + " | ".join(str(v) for v in r[:-1]) + " |" for r in rows]
    for mode, not_ok, allowed in details:
        md += ["", "## %s: cases not OK" % mode, ""]
        md += ["- %s %s: %s" % (c, l, allowed.get(c, {}).get("why", "NOT EXPECTED"))
               for c, _, l in not_ok] or ["none"]
    with open(results_path, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\nwrote " + os.path.relpath(results_path))

if problems:
    print("\nFAIL")
    for p in problems:
        print("  " + p)
    sys.exit(1)
print("\nPASS: no case FAILED, every mode as expected or better")
PY
verdict=$?
set -e
[[ -n $WRITE_RESULTS ]] || echo "(not a full run: ${RESULTS#"$ROOT"/} left unchanged)"
echo "HTML reports: $REPORTS/index.html"
END=$(date +%s)
echo "wall time: $((END - START)) s (install $((INSTALLED - START)) s, build $((BUILT - INSTALLED)) s, suite $((END - BUILT)) s)"
exit $verdict
