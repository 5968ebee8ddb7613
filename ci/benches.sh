#!/usr/bin/env bash
# Benches are compiled, never timed, in CI (timings on shared machines prove nothing). The
# instruction-count harness runs briefly: deterministic counts, no gates.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo bench --no-run
bash "$(dirname "$0")/icount.sh" 200
