#!/usr/bin/env bash
# DESIGN.md's target table.
set -euo pipefail
source "$(dirname "$0")/common.sh"
for t in $NO_STD_TARGETS; do
  echo "-- $t: no_std + alloc"
  cargo build --lib --no-default-features --features alloc --target "$t"
  echo "-- $t: no allocator at all (counter with &'static parents)"
  cargo build --lib --no-default-features --target "$t"
done
echo "-- thumbv6m-none-eabi (no CAS): counter via portable-atomic + critical-section"
cargo build --lib --no-default-features --features critical-section --target thumbv6m-none-eabi
