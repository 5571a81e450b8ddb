#!/usr/bin/env bash
# Fuzz the parsers of network bytes (the targets in fuzz/, checks in src/fuzzing/): every
# target, or TARGET, for SECONDS each (20 by default: what CI runs), starting from the
# checked-in corpus. New inputs go to fuzz/target/new-corpus/TARGET (the checked-in corpus only
# changes through `cargo fuzz cmin`, see README "Fuzzing"); a crash fails the script and its
# input is kept in fuzz/artifacts/TARGET/. Installs the nightly toolchain and cargo-fuzz when
# they are missing. One libFuzzer process on one core at a time.
#
#   bash scripts/fuzz.sh [TARGET|all] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-all}
seconds=${2:-20}

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ "$target" = all ]; then
  targets=$(cargo +nightly fuzz list)
else
  targets=$target
fi

# One build for every target (release, debug assertions, AddressSanitizer: the defaults).
cargo +nightly fuzz build

failed=()
for t in $targets; do
  new="fuzz/target/new-corpus/$t"
  mkdir -p "$new" "fuzz/artifacts/$t"
  log="fuzz/target/fuzz-$t.log"
  printf '\n==> %s for %ss\n' "$t" "$seconds"
  # Tokens of the protocols the target parses, so that the fuzzer need not guess them.
  dict=()
  case $t in
    http_head | upgrade_request | upgrade_answer | proxy_http) dict=(-dict=fuzz/dicts/http.dict) ;;
    deflate_params) dict=(-dict=fuzz/dicts/deflate_params.dict) ;;
  esac
  # New inputs go to the first corpus directory. -jobs=1 runs the fuzzer in a child whose
  # output goes to ./fuzz-0.log; it is moved next to the build afterwards.
  rm -f fuzz-0.log
  if cargo +nightly fuzz run "$t" "$new" "fuzz/corpus/$t" -- "${dict[@]}" \
        -max_total_time="$seconds" -workers=1 -jobs=1 -print_final_stats=1 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 >/dev/null 2>&1; then
    status=ok
  else
    status=failed
    failed+=("$t")
  fi
  mv -f fuzz-0.log "$log" 2>/dev/null || true
  # The last coverage line, then the totals.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
  if [ "$status" = failed ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 || true
    echo "$t: FAILED (log: $log)"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}"
  exit 1
fi
echo "all fuzz targets ran clean"
