#!/usr/bin/env bash
# clippy on the default build, on the bare no_std build, and on the loom build (cfg'd code is
# only linted when its cfg is on: hashbrown's "TESTING NOTE").
set -euo pipefail
source "$(dirname "$0")/common.sh"
cargo clippy --all-targets -- -D warnings
cargo clippy --lib --no-default-features -- -D warnings
cargo clippy --lib --no-default-features --features alloc -- -D warnings
RUSTFLAGS="$RUSTFLAGS --cfg loom --cfg crossbeam_loom -C debug-assertions=on" CARGO_TARGET_DIR=target/loom cargo clippy --lib --profile test -- -D warnings
# Broken intra-doc links and other rustdoc warnings fail too (RUSTDOCFLAGS has -D warnings).
cargo doc --no-deps
