#!/usr/bin/env bash
# Instructions per operation of each hot path, counted by callgrind: each case of
# examples/icount.rs runs with N and 2N iterations and the difference is divided by N, so
# setup cancels out. Deterministic for a given binary, whatever else the machine does.
#
# Usage: ci/icount.sh [N] [case ...]    (default N = 20000, all cases)
set -euo pipefail
source "$(dirname "$0")/common.sh"
N="${1:-20000}"
shift || true
command -v valgrind >/dev/null || { echo "valgrind is required" >&2; exit 1; }
cargo build --release --example icount
bin=target/release/examples/icount
cases=("$@")
[ ${#cases[@]} -gt 0 ] || mapfile -t cases < <("$bin" --list)
ir() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-20s %12s\n' case "instr/op"
for c in "${cases[@]}"; do
  a=$(ir "$c" "$N")
  b=$(ir "$c" $((2 * N)))
  awk -v c="$c" -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%-20s %12.1f\n", c, (b - a) / n }'
done
