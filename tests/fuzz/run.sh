#!/usr/bin/env bash
# Builds wick and the libFuzzer targets in tests/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) into a scratch directory, then runs each target
# for N seconds, after replaying the saved crash inputs (tests/fuzz/crashes/<target>-*):
# `make test` (and so CI) runs it 15 s a target; a crash, hang or sanitizer report fails.
#
#   tests/fuzz/run.sh                  # every target, 60 s each
#   tests/fuzz/run.sh 30 json gguf     # 30 s each, only those targets
#   FUZZ_DIR=/tmp/wf tests/fuzz/run.sh  # scratch directory (default /tmp/wick-fuzz)
#
# Seeds: tests/fuzz/seeds/<target>.txt lists committed fixtures (linked, not copied, into
# the scratch corpus). New corpus entries stay in $FUZZ_DIR/corpus/<target>; crashes
# land in $FUZZ_DIR/artifacts/<target>/ (reduce them with -minimize_crash=1 and save
# them under tests/fuzz/crashes/<target>-<short>.bin). Replay one input:
#   $FUZZ_DIR/fuzz_gguf tests/fuzz/crashes/gguf-xyz.bin
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(json config gguf safetensors tokenizer)
FUZZ_DIR=${FUZZ_DIR:-/tmp/wick-fuzz}
CC=${CC:-clang}
JOBS=${JOBS:-$(nproc)}

if ! command -v "$CC" >/dev/null 2>&1; then
  echo "run.sh: $CC not found (apt-get install -y clang libclang-rt-14-dev)" >&2; exit 1
fi
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
mkdir -p "$FUZZ_DIR"

# 1. the library, instrumented for coverage (fuzzer-no-link) and sanitizers
cmake -S "$ROOT" -B "$FUZZ_DIR/build" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=Debug \
  -DWICK_WERROR=OFF -DWICK_TEST_ALL_ISAS=OFF \
  "-DCMAKE_C_FLAGS=-O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" >/dev/null
cmake --build "$FUZZ_DIR/build" --target wick -j "$JOBS" >/dev/null

# 2. the targets
for t in "${TARGETS[@]}"; do
  "$CC" -std=gnu11 -O1 -g -fsanitize=fuzzer $SAN -Wall -Wextra \
    -DWK_FIXTURE_DIR="\"$ROOT/tests/fixtures\"" -I"$ROOT/include" -I"$ROOT/src" \
    "$ROOT/tests/fuzz/fuzz_$t.c" "$FUZZ_DIR/build/libwick.a" -lm -lpthread -o "$FUZZ_DIR/fuzz_$t"
done

# 3. seed corpora (symlinks to the fixtures; the tokenizer's inputs carry a mode byte)
seed() {
  local t=$1 dir=$FUZZ_DIR/corpus/$1
  mkdir -p "$dir"
  if [ -f "$ROOT/tests/fuzz/seeds/$t.txt" ]; then
    while read -r p; do
      [ -z "$p" ] && continue
      if [ "$t" = tokenizer ]; then   # mode byte 0: the rest is a tokenizer.json
        { printf '\0'; cat "$ROOT/$p"; } > "$dir/seed-$(basename "$p")"
      else
        ln -sf "$ROOT/$p" "$dir/seed-$(basename "$p")"
      fi
    done < "$ROOT/tests/fuzz/seeds/$t.txt"
  fi
  if [ "$t" = tokenizer ]; then       # text seeds: mode bytes 64.. pick a fixture tokenizer
    printf '\x40Hello world! <|endoftext|> 12345 caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd\n\n  x' > "$dir/seed-text-llama3"
    printf '\x41The quick brown fox 2024 \xf0\x9f\x98\x80  tabs\there' > "$dir/seed-text-smollm2"
    printf '\x42<mask> hello [[tool]] <|im_start|>user' > "$dir/seed-text-gpt2"
    printf '\x43byte fallback \xe2\x82\xac \xff\xfe' > "$dir/seed-text-bytefallback"
    printf '\x44Hello, WORLD! na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 [CLS]' > "$dir/seed-text-wordpiece"
  fi
}

status=0
for t in "${TARGETS[@]}"; do
  # inputs that once crashed a reader must now be handled: each runs once
  for c in "$ROOT"/tests/fuzz/crashes/"$t"-*; do
    [ -e "$c" ] || continue
    if ! "$FUZZ_DIR/fuzz_$t" "$c" >"$FUZZ_DIR/replay_$t.log" 2>&1; then
      echo "=== fuzz_$t: saved crash $(basename "$c") fails again:"; tail -20 "$FUZZ_DIR/replay_$t.log"; status=1
    fi
  done
  seed "$t"
  mkdir -p "$FUZZ_DIR/artifacts/$t"
  echo "=== fuzz_$t: ${SECS}s"
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$FUZZ_DIR/fuzz_$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
    -print_final_stats=1 -artifact_prefix="$FUZZ_DIR/artifacts/$t/" "$FUZZ_DIR/corpus/$t" \
    2>&1 | tee "$FUZZ_DIR/fuzz_$t.log" | grep -E "^(#[0-9]+.*(DONE|pulse))|ERROR|SUMMARY|stat::number_of_executed_units|stat::average_exec_per_sec|Test unit written" || true
  if grep -q "Test unit written" "$FUZZ_DIR/fuzz_$t.log"; then status=1; fi
done
exit $status
