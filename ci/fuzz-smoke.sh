#!/usr/bin/env bash
# Fuzz smoke test: every cargo-fuzz target of fuzz/ for about a minute each (FUZZ_SECS,
# default 60), starting from the committed corpus and regressions; fails if any target
# crashes, times out or leaks. New corpus entries go to a scratch directory, never into
# fuzz/corpus/ (minimise by hand with `cargo fuzz cmin` before committing any); crash inputs
# land in fuzz/artifacts/<target>/ (ignored by git): turn each into a regression, see
# fuzz/regressions/README.md.
#
# Needs the nightly toolchain (ci/setup.sh installs it) and cargo-fuzz, installed here if
# missing (`cargo install cargo-fuzz --locked`: about 45 s on the CI machine). The targets
# build with ASan; the first build takes about a minute and a half.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECS:-30}"
TARGETS=(counter api protection)

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal --no-self-update
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  start=$(date +%s)
  cargo install cargo-fuzz --locked
  echo "installed cargo-fuzz in $(( $(date +%s) - start ))s"
fi

# cargo-fuzz appends its instrumentation flags to RUSTFLAGS; common.sh's `-D warnings` then
# applies to this crate and the fuzz package (dependencies get --cap-lints from cargo).
(cd fuzz && cargo +nightly fuzz build)

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${TARGETS[@]}"; do
  echo
  echo "=== fuzz target $t (${SECS}s)"
  mkdir -p "$scratch/$t" "fuzz/regressions/$t"
  flags=(-max_total_time="$SECS" -timeout=10 -print_final_stats=1)
  # api: crossbeam-epoch's per-thread collector cache makes each input's mallocs and frees
  # unequal, after which libFuzzer runs a full LeakSanitizer scan per input (~100x slower).
  # The target checks itself that every group, ObjGroup and the tree's bookkeeping is freed.
  if [ "$t" = api ]; then flags+=(-detect_leaks=0); fi
  start=$(date +%s)
  if (cd fuzz && cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" "regressions/$t" -- "${flags[@]}") \
      > "$scratch/$t.log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    # The crash report, without libFuzzer's per-input progress lines.
    grep -v -E '^#[0-9]+' "$scratch/$t.log" | tail -60
  fi
  stats=$(grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" \
    | tr '\n' ' ' || true)
  echo "$t: $status in $(( $(date +%s) - start ))s: $stats"
done

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
  exit 1
fi
echo "every fuzz target ran ${SECS}s without a crash"
