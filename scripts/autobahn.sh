#!/usr/bin/env bash
# Autobahn|Testsuite conformance of every client mode.
#
#   bash scripts/autobahn.sh [--deflate full|quick|none] [blocking] [nonblocking] [threaded]
#
# Modes default to all three. The permessage-deflate cases (12.* and 13.*, 216 of them) run
# 1000 messages each through the suite's Python server and take ~8 minutes per mode in full:
#   full   every case (default; the recorded proof in conformance/autobahn-results.md)
#   quick  12.* and 13.* at 16 B to 32 KiB plus the fragmented 8 and 16 KiB cases: every
#          negotiation variant and data set in ~70 s per mode (what .ci/run uses)
#   none   no compression cases
#
# Installs the suite (Python 2.7 only) into target/autobahn-venv once, builds the testee
# (examples/autobahn_client.rs), runs `wstest -m fuzzingserver` on 127.0.0.1 and the testee once
# per mode, prints and writes the summary (conformance/autobahn-results.md, when every mode ran),
# and fails if any case FAILED or a mode does worse than conformance/autobahn-expected.json.
#
# Environment: AUTOBAHN_PYTHON2 (a Python 2.7 interpreter; default: pyenv's 2.7.18),
# AUTOBAHN_TIMEOUT (seconds per mode; default 1500 full, 480 quick, 300 none). Work files and HTML reports: target/autobahn/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SUITE_VERSION=25.10.1
VENV=$ROOT/target/autobahn-venv
WORK=$ROOT/target/autobahn
EXPECTED=$ROOT/conformance/autobahn-expected.json
RESULTS=$ROOT/conformance/autobahn-results.md
TESTEE=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/autobahn_client
ALL_MODES=(blocking nonblocking threaded)
START=$(date +%s)

die() {
    echo "autobahn: $*" >&2
    exit 2
}

MODES=()
DEFLATE=full
USAGE="usage: scripts/autobahn.sh [--deflate full|quick|none] [blocking] [nonblocking] [threaded]"
while [[ $# -gt 0 ]]; do
    case $1 in
        blocking | nonblocking | threaded) MODES+=("$1") ;;
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
[[ ${#MODES[@]} -gt 0 ]] || MODES=("${ALL_MODES[@]}")

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

cargo build --quiet --release --example autobahn_client
BUILT=$(date +%s)

# ----- fuzzing server ------------------------------------------------------------------------

SERVER_PID=
TESTEE_PID=
cleanup() {
    local pid
    for pid in $TESTEE_PID $SERVER_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=ws://127.0.0.1:$PORT
REPORTS=$WORK/reports/clients
rm -rf "$WORK/reports" # never read a previous run's verdicts
cat >"$WORK/fuzzingserver.json" <<EOF
{
  "url": "$URL",
  "outdir": "$REPORTS",
  "options": {"failByDrop": false},
  "cases": ["*"],
  "exclude-cases": $EXCLUDE,
  "exclude-agent-cases": {}
}
EOF
# wstest listens on every interface; bind it to 127.0.0.1 only. No web UI (-u 0).
(cd "$WORK" && exec "$VENV/bin/python" -c '
import functools, sys
import autobahntestsuite.fuzzing as fuzzing
fuzzing.listenWS = functools.partial(fuzzing.listenWS, interface="127.0.0.1")
from autobahntestsuite.wstest import run
sys.argv[0] = "wstest"
sys.exit(run())
' -m fuzzingserver -s "$WORK/fuzzingserver.json" -u 0 >"$WORK/server.log" 2>&1) &
SERVER_PID=$!

for _ in $(seq 300); do # up to 30 s
    kill -0 "$SERVER_PID" 2>/dev/null || die "fuzzing server exited; see $WORK/server.log"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || die "fuzzing server not listening on $PORT after 30 s"
echo "autobahn: fuzzing server on $URL (pid $SERVER_PID)"

# ----- testee, once per mode -----------------------------------------------------------------

STATUS=()
TIMES=()
for mode in "${MODES[@]}"; do
    t0=$(date +%s)
    status=0
    # In the background so that a signal to this script interrupts the wait and cleans up.
    timeout "$MODE_TIMEOUT" "$TESTEE" --mode "$mode" --url "$URL" --agent "syncws-$mode" \
        2>"$WORK/$mode.log" &
    TESTEE_PID=$!
    wait "$TESTEE_PID" || status=$?
    TESTEE_PID=
    TIMES+=("$(($(date +%s) - t0))")
    STATUS+=("$status")
    echo "autobahn: $mode: testee exit status $status after ${TIMES[-1]} s (log: $WORK/$mode.log)"
done
cleanup
SERVER_PID=

# ----- summary and comparison ----------------------------------------------------------------

WRITE_RESULTS=
[[ ${#MODES[@]} -eq ${#ALL_MODES[@]} && $DEFLATE == full ]] && WRITE_RESULTS=$RESULTS
set +e
python3 - "$REPORTS/index.json" "$EXPECTED" "$WRITE_RESULTS" "$SUITE_VERSION" "$DEFLATE" \
    "${MODES[*]}" "${STATUS[*]}" "${TIMES[*]}" <<'PY'
import json, os, sys

index_path, expected_path, results_path, version, profile = sys.argv[1:6]
modes, statuses, times = (a.split() for a in sys.argv[6:9])
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
problems, notes, rows, details = [], [], [], []
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
        problems.append("%s: testee exited with status %s%s" % (
            mode, status, " (timed out)" if status == "124" else ""))
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
          "Generated by `scripts/autobahn.sh` (do not edit): autobahntestsuite %s fuzzing server, "
          "every case, including 12.* and 13.* (permessage-deflate); "
          "testee `examples/autobahn_client.rs`. Expectations and reasons: "
          "`conformance/autobahn-expected.json`." % version, "",
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
[[ -n $WRITE_RESULTS ]] || echo "(not a full run of every mode: conformance/autobahn-results.md left unchanged)"
echo "HTML reports: $REPORTS/index.html"
END=$(date +%s)
echo "wall time: $((END - START)) s (install $((INSTALLED - START)) s, build $((BUILT - INSTALLED)) s, suite $((END - BUILT)) s)"
exit $verdict
