#!/usr/bin/env bash
# The published crate stands on its own: `cargo package` (which also builds the library from
# the packaged sources), then the packaged crate's own `cargo test` (library, integration
# tests, examples built, doctests) and its benches compiled, from the `.crate` file unpacked
# outside the repository, with nothing but what is in it.
#
# The repository's target directory is reused (CARGO_TARGET_DIR, made absolute), so the
# dependencies the other steps built are not built again; only the packaged crate is. It is
# unpacked outside that directory, not tested in place in target/package/: trybuild
# (tests/compile_fail.rs) cannot normalise the paths in compiler messages when a crate's
# sources sit inside its target directory. The place depends only on the target directory,
# so each run replaces the previous run's build of the packaged crate instead of adding one.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
export CARGO_TARGET_DIR="$(cd "$target" && pwd)"

work="${TMPDIR:-/tmp}/chargetree-package-$(printf %s "$CARGO_TARGET_DIR" | cksum | cut -d' ' -f1)"
mkdir -p "$work"
exec 9>"$work/.lock"
flock 9 # one run at a time per target directory

# --allow-dirty: the check is about what the package holds, also for a local run on a working
# tree with edits (CI's checkout is clean either way).
cargo package --allow-dirty
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
crate="$CARGO_TARGET_DIR/package/chargetree-$version.crate"

rm -rf "${work:?}/chargetree-$version"
# -m: the files get the current time rather than the archive's fixed date, so cargo sees them
# as changed and never takes the previous run's build for this one.
tar -xzmf "$crate" -C "$work"
cd "$work/chargetree-$version"
echo "-- the packaged crate, unpacked in $PWD ($(find . -type f | wc -l) files)"
# --locked: the lock file `cargo package` put in the crate, as is.
# `model` on: the property tests compare with the reference models (the self dev-dependency
# that turns it on for the repository's own runs is not in the package).
cargo test --locked --features model
cargo test --locked --benches --no-run
