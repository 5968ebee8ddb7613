# Shared settings of the CI scripts (sourced, not run).
# Keep MSRV in sync with Cargo.toml's rust-version and the README.
STABLE=1.95.0
MSRV=1.85.0
# no_std targets that have pointer-width CAS: everything but the std-only providers builds.
NO_STD_TARGETS="x86_64-unknown-none riscv32imac-unknown-none-elf thumbv7em-none-eabihf"
export CARGO_TERM_COLOR=never
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
export RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings"
