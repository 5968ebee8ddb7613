#!/usr/bin/env bash
# Every example runs; the demo is the README's first command.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo run --release --example demo
