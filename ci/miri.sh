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
# The black-box test targets, one topic file each (issue 13): the counter's in the strict
# run, the groups', the engine's and the object layer's in the crossbeam one.
counter_tests="--test counter_charging --test counter_limits --test counter_protection --test counter_invariants"
epoch_tests="--test group_lifecycle --test group_release --test group_references --test group_move_charge"
epoch_tests+=" --test group_events_and_walks --test group_stress"
epoch_tests+=" --test engine_charge_path --test engine_options --test engine_stock"
epoch_tests+=" --test engine_high_and_walk_reclaim --test engine_robustness --test engine_model"
epoch_tests+=" --test objgroup_scenarios --test objgroup_charge_and_drain --test objgroup_release_and_reparenting"
epoch_tests+=" --test objgroup_object_refs --test objgroup_edge_cases --test objgroup_model --test objgroup_threads"
MIRIFLAGS="-Zmiri-strict-provenance" CARGO_TARGET_DIR=target/miri-strict \
  cargo +nightly miri test --lib $counter_tests -- -Zunstable-options --report-time > target/miri-strict.log 2>&1 &
strict=$!
tb=0
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance -Zmiri-disable-isolation" \
  cargo +nightly miri test $epoch_tests --test alloc_safety --test fuzz_replay -- -Zunstable-options --report-time \
  || tb=1
rc=0
wait "$strict" || rc=1
echo "-- strict-provenance / Stacked Borrows run:"
cat target/miri-strict.log
exit $(( tb || rc ))
