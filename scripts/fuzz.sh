#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input (fuzz/, cargo-fuzz + libFuzzer):
#   ws_frame      the RFC 6455 frame decoder (arbitrary bytes, any split, any limit)
#   client_frame  WebSocket text frames (JSON commands)
#   rest_query    REST query strings and room ids in paths
#   create_body   the JSON body of POST /api/rooms
# Each target runs for a bounded time from the committed seeds
# (fuzz/corpus/<target>/, read only) plus what earlier runs found
# (fuzz/target/corpus/<target>/, not committed), with memory bounds: an
# input that makes the process allocate more than 64 MB at once or hold more
# than 1 GB is a crash. The invariants are asserted in src/fuzzing.rs, so an
# input that breaks one is a crash too. A crash leaves its input in
# fuzz/artifacts/<target>/ and the script exits 1 once all targets ran;
# replay one with `RUSTC_BOOTSTRAP=1 cargo fuzz run -O <target> <file>`
# from fuzz/.
#
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target...]
#        scripts/fuzz.sh --build-only
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(ws_frame client_frame rest_query create_body)
BUILD_ONLY=0
if [ "${1:-}" = "--build-only" ]; then
  BUILD_ONLY=1
  shift
fi
SECONDS_PER_TARGET="${1:-60}"
[ $# -gt 0 ] && shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "usage: $0 [seconds per target] [target...] | --build-only" >&2; exit 2 ;;
esac

# cargo-fuzz builds with nightly-only flags (-Z sanitizer=address, ...).
# RUSTC_BOOTSTRAP=1 makes the stable toolchain accept them, so no nightly
# toolchain is needed.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
echo "== building the fuzz targets (release, AddressSanitizer)"
cargo fuzz build -O
[ "$BUILD_ONLY" = 1 ] && exit 0

dict_of() {
  case "$1" in
    client_frame | create_body) echo "-dict=dicts/json.dict" ;;
    rest_query) echo "-dict=dicts/query.dict" ;;
  esac
}

mkdir -p target/logs
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "target/corpus/$t"
  log="target/logs/$t.log"
  echo "== $t for ${SECONDS_PER_TARGET}s (log: fuzz/$log)"
  status=0
  started=$SECONDS
  # shellcheck disable=SC2046
  cargo fuzz run -O "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 \
    -rss_limit_mb=1024 -malloc_limit_mb=64 \
    -print_final_stats=1 $(dict_of "$t") >"$log" 2>&1 || status=$?
  ran=$((SECONDS - started))
  # The last status line: "#<execs> DONE cov: <n> ft: <n> corp: ..." (or
  # the last pulse when the run stopped on a crash).
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | tail -n 1 || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | tail -n 1 || true)
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="CRASH (exit $status; see fuzz/$log and fuzz/artifacts/$t/)"
    failed+=("$t")
    tail -n 40 "$log"
  fi
  summary+=("$t: ${ran}s, ${execs:-?} execs, ${cov:-cov: ?}, ${ft:-ft: ?}, $result")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]}" >&2
  exit 1
fi
