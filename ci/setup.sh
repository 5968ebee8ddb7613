#!/usr/bin/env bash
# Installs every toolchain, component and target the CI steps use. Idempotent.
set -euo pipefail
source "$(dirname "$0")/common.sh"

rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt --no-self-update
rustup default "$STABLE" >/dev/null
rustup target add --toolchain "$STABLE" $NO_STD_TARGETS thumbv6m-none-eabi
rustup toolchain install nightly --profile minimal --component miri,rust-src --no-self-update
rustup toolchain install "$MSRV" --profile minimal --no-self-update
cargo +nightly miri setup >/dev/null
