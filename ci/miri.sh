#!/usr/bin/env bash
# miri over the unit, property and integration tests. Property tests shrink their case
# count under miri.
#
# Two configurations:
# * our own code alone (counter, refcount, model, property tests): strict provenance and
#   Stacked Borrows, the strictest checks miri has;
# * everything that goes through crossbeam-epoch (groups, owner cells, the allocator test):
#   permissive provenance, because crossbeam-epoch 0.9 keeps tags in pointer bits with
#   integer-to-pointer casts, and Tree Borrows, because its intrusive participant list
#   violates Stacked Borrows (both are inside crossbeam, not in this crate). Use-after-free,
#   data races, leaks and our own aliasing are still checked.
set -euo pipefail
source "$(dirname "$0")/common.sh"
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1
MIRIFLAGS="-Zmiri-strict-provenance" cargo +nightly miri test --lib --test counter
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance" \
  cargo +nightly miri test --test group --test alloc_safety --test engine --test objgroup
