#!/usr/bin/env bash
# miri over the unit and property tests (the in-crate `src/tests/` and `#[cfg(test)]`
# modules) and the integration tests. Property tests shrink their case count under miri.
set -euo pipefail
source "$(dirname "$0")/common.sh"
export MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-strict-provenance"
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1
cargo +nightly miri test --lib --tests
