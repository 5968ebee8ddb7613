#!/usr/bin/env bash
# Benches are compiled, never timed, in CI (timings on shared machines prove nothing). The
# instruction-count harness runs briefly and is a gate: its counts are deterministic, and a
# case more than 10 % above its line in ci/icount-thresholds.txt fails the step (see that
# file's header for how to update it). N = 256: a multiple of the 64 groups the round-robin
# cases cycle over, and as exact as larger N (every case gives the same figure at 200, 2000
# and 20000).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo bench --no-run
bash "$(dirname "$0")/icount.sh" --gate 256
