#!/usr/bin/env bash
# Builds the fuzz targets on stable Rust and runs each for a bounded time over
# its committed corpus; exits non-zero on any crash, hang or failed check.
#
#   fuzz/run.sh [seconds-per-target] [target...]    (default: 20 s, every target)
#
# New inputs the fuzzer finds go to a temporary directory, never into corpus/;
# crashes go to fuzz/artifacts/<target>/. Extra libFuzzer flags can be passed
# in FUZZ_FLAGS (for example FUZZ_FLAGS="-jobs=2 -workers=2"). See README.md.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-20}
shift || true
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# Stable rustc has the sanitizer-coverage pass but not `-Zsanitizer`, so this
# is what cargo-fuzz passes with `--sanitizer none`: edge counters, the PC
# table and comparison tracing for libFuzzer, and `cfg(fuzzing)`. `--target`
# keeps the flags off build scripts and proc macros, which run inside rustc.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
# CI keeps the instrumented build in a cache outside the clone, so a warm run
# rebuilds only meshlite's own crates.
export CARGO_TARGET_DIR="${MESHLITE_FUZZ_TARGET_DIR:-$PWD/target}"

echo "fuzz: cargo fmt --check"
cargo fmt -- --check

# Clippy lints the fuzz crate inside the one build (as the wrapper of workspace
# members only), so linting costs no second, uninstrumented build of the deps.
echo "fuzz: build (clippy -D warnings on the targets)"
start=$(date +%s)
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)" CLIPPY_ARGS="-Dwarnings" \
  cargo build --release --locked --target "$host" --bins
echo "fuzz: built in $(($(date +%s) - start)) s"

bin="$CARGO_TARGET_DIR/$host/release"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz: no target named $t"; exit 2; }
  mkdir -p "$scratch/$t" "artifacts/$t" "corpus/$t"
  extra=()
  [ -f "dict/$t.dict" ] && extra=("-dict=dict/$t.dict")
  # libFuzzer caps inputs at 4 KiB unless told; detection reads up to one
  # full TLS record (MAX_DETECT_BYTES).
  [ "$t" = detect ] && extra+=("-max_len=16389")
  echo "fuzz: $t for ${secs} s"
  # The scratch directory comes first, so it receives the new inputs; the
  # committed corpus is only read (every file in it is replayed first).
  # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
  if "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${extra[@]}" ${FUZZ_FLAGS:-} \
    "$scratch/$t" "corpus/$t" >"$scratch/$t.log" 2>&1; then
    grep -E '^(Done |#[0-9]+[[:space:]]+DONE )' "$scratch/$t.log" \
      | sed "s/^/  $t: /" || true
  else
    tail -n 40 "$scratch/$t.log"
    grep -E 'Test unit written to|^artifact_prefix' "$scratch/$t.log" \
      | sed "s|^|fuzz: FAILED $t: |" || echo "fuzz: FAILED $t (see the log above)"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
  echo "fuzz: reproduce with $bin/<target> <artifact>"
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${secs} s each without a failure"
