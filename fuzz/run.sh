#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS (default 20) each on its corpus, one after
# the other, and fails if any finds a crash. Usage: fuzz/run.sh [SECONDS [TARGET...]]
#
# Works on a stable toolchain: without a sanitizer (the default, FUZZ_SANITIZER=none) cargo-fuzz
# needs no unstable flag; FUZZ_SANITIZER=address builds with AddressSanitizer, which needs
# `-Zsanitizer`, allowed on stable by RUSTC_BOOTSTRAP=1 (set here for that case).
#
# New inputs the fuzzer finds go to a scratch directory (FUZZ_NEW, default a temporary one), never
# into fuzz/corpus/: to keep the best of them, fold them in with fuzz/trim_corpus.py. A crashing
# input is saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if [ -n "${FUZZ_NEW:-}" ]; then
  new=$FUZZ_NEW
else
  new=$(mktemp -d)
  trap 'rm -rf "$new"' EXIT  # ~150 MB of new inputs and logs per run
fi

# -a: debug assertions and overflow checks on, so an arithmetic overflow is a crash too.
cargo fuzz build --sanitizer "$sanitizer" -a

failed=()
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
  mkdir -p "$new/$target" "corpus/$target"
  log="$new/$target.log"
  # Every input that takes longer than 10 s, or 2 GB, is a finding too.
  if cargo fuzz run --sanitizer "$sanitizer" -a "$target" "$new/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log")
    echo "fuzz: $target: ${runs:-?} runs in ${seconds} s, no crash"
  else
    echo "fuzz: $target: FAILED (input saved under fuzz/artifacts/$target/); the end of its log:"
    tail -n 40 "$log"
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}"
  exit 1
fi
