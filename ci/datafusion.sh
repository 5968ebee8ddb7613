#!/usr/bin/env bash
# The DataFusion integration (integrations/datafusion, issue 16): its README's test command,
# clippy on it, and its example, from the package's own target directory. A fresh build
# compiles DataFusion (about 270 crates, debug): the bulk of this step's time.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/../integrations/datafusion"
cargo fmt --check
cargo clippy --locked --all-targets
cargo test --locked
# The README runs it with --release; debug here, so CI compiles DataFusion once.
cargo run --locked --example query
