#!/usr/bin/env bash
# The soak binary (examples/soak.rs) under valgrind memcheck, AddressSanitizer and
# ThreadSanitizer (nightly). Any finding fails the script.
#
# Usage: ci/sanitizers.sh [seconds]   (default 2; each tool runs the soak that long)
set -euo pipefail
source "$(dirname "$0")/common.sh"
secs="${1:-2}"
host=$(rustc -vV | sed -n 's/^host: //p')

echo "-- valgrind memcheck"
cargo build --release --example soak
valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
  target/release/examples/soak --seconds "$secs" --threads 2

echo "-- AddressSanitizer (leaks included)"
RUSTFLAGS="$RUSTFLAGS -Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
  cargo +nightly run --release --target "$host" --example soak -- --seconds "$secs"

echo "-- ThreadSanitizer (std rebuilt with it, so its atomics are seen)"
# crossbeam's build scripts detect TSAN themselves; ours is told with a cfg (fences become
# Acquire loads, which TSAN understands).
RUSTFLAGS="$RUSTFLAGS -Zsanitizer=thread --cfg chargetree_sanitize_thread" CARGO_TARGET_DIR=target/tsan \
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  cargo +nightly run -Zbuild-std --release --target "$host" --example soak -- --seconds "$secs"
