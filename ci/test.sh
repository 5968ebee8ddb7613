#!/usr/bin/env bash
# The README's test command, exactly as a newcomer types it.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo test
