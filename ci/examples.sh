#!/usr/bin/env bash
# Every example runs; the demo is the README's first command.
set -euo pipefail
source "$(dirname "$0")/common.sh"
# The README's demo, shortened (CI's stdout is not a terminal: plain periodic lines), then
# with the example configuration file.
cargo run --release --example demo -- --seconds 2
cargo run --release --example demo -- --seconds 2 --config examples/demo.conf
# Its --help prints the configuration format, and its unit tests check that the help's example
# parses and that the help names every key the parser takes.
cargo run --release --example demo -- --help > /dev/null
cargo test --release --example demo
cargo run --release --example allocator
cargo run --release --example hypervisor
cargo run --release --example firmware
# The same firmware bare metal: no_std, no_main, no allocator (the target comes from setup.sh).
cargo build --example firmware --target thumbv7em-none-eabihf --no-default-features
cargo run --release --example soak -- --seconds 2
