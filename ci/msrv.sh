#!/usr/bin/env bash
# rust-version in Cargo.toml is a promise: check the library builds with exactly that compiler.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo "+$MSRV" check --lib --all-features
