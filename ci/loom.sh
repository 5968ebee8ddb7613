#!/usr/bin/env bash
# The loom models (src/tests/loom_*.rs): release, debug assertions on, preemption bound 2
# (loom's README: 2-3 finds most bugs; 3 multiplies the time several times).
set -euo pipefail
source "$(dirname "$0")/common.sh"
# crossbeam-epoch runs on loom too (its own cfg), so grace periods are part of the models.
export RUSTFLAGS="$RUSTFLAGS --cfg loom --cfg crossbeam_loom -C debug-assertions=on"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR=target/loom
cargo test --release --lib loom
