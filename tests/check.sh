#!/usr/bin/env bash
# Every check, against whatever the given Python has installed: lint (ruff, mypy
# --strict, clang-format), the C++ unit tests under ASan+UBSan, then pytest
# (arguments go to pytest). Every check runs even after one fails; the summary at the
# end names the failures and the exit status is 1 if there were any.
# tests/run.sh runs it on the locked packages, tools/check-latest.sh on the newest.
# CHORUS_CHECK_CPP=0 leaves out the C++ unit tests and the fuzzers (no Python package
# touches them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The interpreter's scripts (clang-format, chorus, jupyter) come first on PATH, venv
# activated or not.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

failed=()
check() {
  local name=$1
  shift
  printf '\n==> %s\n' "$name"
  if ! "$@"; then failed+=("$name"); fi
}
clang_format_all() {
  find backends_cpp tests/cpp \( -name '*.h' -o -name '*.cc' \) -print0 |
    xargs -0 clang-format --dry-run --Werror
}
cpp_tests() {
  cmake --preset asan -S backends_cpp > /dev/null && cmake --build build/asan &&
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build/asan/chorus_cpp_tests
}
# What a peer or a stranger sends, as arbitrary bytes, for a short while each
# (tests/fuzz/README.md); a new corpus every run, so each run explores afresh.
run_fuzzer() {
  local name=$1 max_len=$2 corpus=$3
  mkdir -p "$corpus/$name"
  if build/fuzz/"$name" -max_total_time=20 -max_len="$max_len" -malloc_limit_mb=64 -timeout=10 \
    -print_final_stats=1 "$corpus/$name" > "$corpus/$name.log" 2>&1; then
    echo "$name: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$corpus/$name.log")"
  else
    tail -60 "$corpus/$name.log"
    return 1
  fi
}
fuzz() {
  local corpus status=0
  corpus=$(mktemp -d)
  # The build's output only when it fails (a missing sanitizer runtime shows there).
  if cmake --preset fuzz -S backends_cpp > "$corpus/build.log" 2>&1 &&
    cmake --build build/fuzz --target frame_fuzz handshake_fuzz >> "$corpus/build.log" 2>&1; then
    run_fuzzer frame_fuzz 4096 "$corpus" && run_fuzzer handshake_fuzz 256 "$corpus" || status=1
  else
    tail -30 "$corpus/build.log"
    status=1
  fi
  rm -rf "$corpus"
  return $status
}

check "lint: ruff check" "$PYTHON" -m ruff check .
check "lint: ruff format" "$PYTHON" -m ruff format --check .
check "lint: mypy --strict" env PYTHON="$PYTHON" bash tools/typecheck.sh
check "lint: clang-format" clang_format_all
if [ "${CHORUS_CHECK_CPP:-1}" != 0 ]; then
  check "C++ unit tests under AddressSanitizer + UndefinedBehaviorSanitizer" cpp_tests
  check "fuzz: TCP frame reader and handshake (libFuzzer, 20 s each)" fuzz
fi
check "pytest" "$PYTHON" -m pytest "$@"

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nFAILED:\n'
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
printf '\nall checks passed\n'
