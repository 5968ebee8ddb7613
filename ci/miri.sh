#!/usr/bin/env bash
# miri over the unit, property and integration tests. Property tests and the heaviest loops
# shrink under miri.
#
# Two configurations, run at the same time (miri is single-threaded; CI has two cores):
# * our own code alone (counter, refcount, model, property tests): strict provenance and
#   Stacked Borrows, the strictest checks miri has;
# * everything that goes through crossbeam-epoch (groups, owner cells, the engine, the
#   object layer, the allocator test, the fuzz corpus replay): permissive provenance, because
#   crossbeam-epoch 0.9 keeps tags in pointer bits with integer-to-pointer casts, and Tree
#   Borrows, because its intrusive participant list violates Stacked Borrows (both are inside
#   crossbeam, not in this crate). Use-after-free, data races, leaks and our own aliasing are
#   still checked. The replay reads the corpus files, hence `-Zmiri-disable-isolation`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1
mkdir -p target
MIRIFLAGS="-Zmiri-strict-provenance" CARGO_TARGET_DIR=target/miri-strict \
  cargo +nightly miri test --lib --test counter -- -Zunstable-options --report-time > target/miri-strict.log 2>&1 &
strict=$!
tb=0
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance -Zmiri-disable-isolation" \
  cargo +nightly miri test --test group --test alloc_safety --test engine --test objgroup --test fuzz_replay -- -Zunstable-options --report-time \
  || tb=1
rc=0
wait "$strict" || rc=1
echo "-- strict-provenance / Stacked Borrows run:"
cat target/miri-strict.log
exit $(( tb || rc ))
