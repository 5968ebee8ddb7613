#!/usr/bin/env bash
# Benches are compiled, never timed, in CI (timings on shared machines prove nothing).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo bench --no-run
