#!/usr/bin/env bash
# Instructions per operation of each hot path, counted by callgrind: each case of
# examples/icount.rs runs with N and 2N iterations and the difference is divided by N, so
# setup cancels out. Deterministic for a given binary, whatever else the machine does.
#
# Usage: ci/icount.sh [--gate] [N] [case ...]    (default N = 20000, all cases)
#
# --gate compares the measured cases with the limits in ci/icount-thresholds.txt (another
# file with ICOUNT_THRESHOLDS=path) and exits 1, naming the case, the measured value and
# the limit, if any listed case or ratio is more than 10 % above its limit. Cases the file
# does not list are measured and printed, never gated. Use an N that is a multiple of 64
# (the round-robin cases cycle over 64 groups); ci/benches.sh uses 256.
set -euo pipefail
source "$(dirname "$0")/common.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
gate=0
if [ "${1:-}" = --gate ]; then
  gate=1
  shift
fi
N="${1:-20000}"
shift || true
thresholds="${ICOUNT_THRESHOLDS:-$root/ci/icount-thresholds.txt}"
# A limit is exceeded when measured > limit × (1 + TOLERANCE).
TOLERANCE=0.10
command -v valgrind >/dev/null || { echo "valgrind is required" >&2; exit 1; }
cargo build --release --example icount
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/icount"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || mapfile -t cases < <("$bin" --list)

# The thresholds file: `case max_instr`, or `ratio case_a case_b max_ratio` (instructions of
# a over those of b); `#` starts a comment.
declare -A limit=()
ratios=()
if [ "$gate" = 1 ]; then
  [ -f "$thresholds" ] || { echo "icount: no thresholds file $thresholds" >&2; exit 1; }
  while read -r a b c d; do
    if [ "$a" = ratio ]; then
      [ -n "$d" ] || { echo "icount: bad ratio line in $thresholds: ratio $b $c" >&2; exit 1; }
      ratios+=("$b $c $d")
    else
      [ -n "$b" ] && [ -z "$c" ] || { echo "icount: bad line in $thresholds: $a $b $c $d" >&2; exit 1; }
      limit[$a]=$b
    fi
  done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$thresholds")
fi

ir() {
  local out
  out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1) \
    || { echo "icount: case $1 failed under valgrind:" >&2; echo "$out" >&2; return 1; }
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out"
}

# over VALUE LIMIT: prints the ratio and succeeds if VALUE exceeds LIMIT by more than the
# tolerance.
over() {
  awk -v v="$1" -v l="$2" -v t="$TOLERANCE" 'BEGIN { printf "%.3f", v / l; exit !(v > l * (1 + t)) }'
}

declare -A measured=()
failures=()
if [ "$gate" = 1 ]; then
  printf '%-26s %12s %12s %8s  %s\n' case "instr/op" threshold ratio status
else
  printf '%-26s %12s\n' case "instr/op"
fi
for c in "${cases[@]}"; do
  a=$(ir "$c" "$N")
  b=$(ir "$c" $((2 * N)))
  m=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')
  measured[$c]=$m
  if [ "$gate" = 0 ]; then
    printf '%-26s %12s\n' "$c" "$m"
  elif [ -n "${limit[$c]:-}" ]; then
    if r=$(over "$m" "${limit[$c]}"); then
      status=FAIL
      failures+=("$c: $m instructions per op, threshold ${limit[$c]} (ratio $r, more than 10 % above)")
    else
      status=ok
    fi
    printf '%-26s %12s %12s %8s  %s\n' "$c" "$m" "${limit[$c]}" "$r" "$status"
  else
    printf '%-26s %12s %12s %8s  %s\n' "$c" "$m" - - "not gated"
  fi
done

if [ "$gate" = 1 ]; then
  for line in ${ratios[@]+"${ratios[@]}"}; do
    read -r x y max <<<"$line"
    [ -n "${measured[$x]:-}" ] && [ -n "${measured[$y]:-}" ] || continue
    q=$(awk -v x="${measured[$x]}" -v y="${measured[$y]}" 'BEGIN { printf "%.3f", x / y }')
    if r=$(over "$q" "$max"); then
      status=FAIL
      failures+=("$x / $y: ratio $q, threshold $max (ratio $r, more than 10 % above)")
    else
      status=ok
    fi
    printf '%-26s %12s %12s %8s  %s\n' "$x/$y" "$q" "$max" "$r" "$status"
  done
  # Listed cases that were not measured (a typo, or a case removed from the example) are
  # reported, so a gate cannot silently disappear; with explicit cases, only those count.
  if [ $# -eq 0 ]; then
    for c in "${!limit[@]}"; do
      [ -n "${measured[$c]:-}" ] || failures+=("$c: listed in $thresholds but not a case of examples/icount.rs")
    done
  fi
  if [ ${#failures[@]} -gt 0 ]; then
    echo
    for f in "${failures[@]}"; do echo "icount gate FAILED: $f" >&2; done
    echo "(if the rise is intended, update the line in $thresholds; see its header)" >&2
    exit 1
  fi
  echo "icount gate: every listed case within 10 % of its threshold"
fi
