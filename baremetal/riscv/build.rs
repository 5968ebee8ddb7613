//! Hands the memory layout and riscv-rt's `link.x` to the linker. The linker arguments are
//! given here, not as `rustflags` in `.cargo/config.toml`, because a `RUSTFLAGS` in the
//! environment (CI sets `-D warnings`) replaces those entirely.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    assert_eq!(target, "riscv32imac-unknown-none-elf", "this image is for QEMU's 32-bit RISC-V virt machine");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy the memory layout");
    println!("cargo:rustc-link-search={}", out.display());
    // memory.x first: link.x uses the regions and symbols it defines.
    println!("cargo:rustc-link-arg=-Tmemory.x");
    println!("cargo:rustc-link-arg=-Tlink.x");
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
}
