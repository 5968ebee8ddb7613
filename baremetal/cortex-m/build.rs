//! Picks the emulated board's memory layout for the target being built and hands
//! cortex-m-rt's `link.x` to the linker. The linker arguments are given here, not as
//! `rustflags` in `.cargo/config.toml`, because a `RUSTFLAGS` in the environment (CI sets
//! `-D warnings`) replaces those entirely.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let memory = match target.as_str() {
        "thumbv7em-none-eabihf" => "memory/mps2-an386.x",
        "thumbv6m-none-eabi" => "memory/microbit.x",
        other => {
            panic!("no emulated board for {other}: build for thumbv7em-none-eabihf or thumbv6m-none-eabi")
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy(memory, out.join("memory.x")).expect("copy the memory layout");
    println!("cargo:rustc-link-search={}", out.display());
    // cortex-m-rt's linker script, which INCLUDEs memory.x. `--nmagic` turns off page
    // alignment of sections, so that none is padded out to a 64 KiB boundary.
    println!("cargo:rustc-link-arg=--nmagic");
    println!("cargo:rustc-link-arg=-Tlink.x");
    println!("cargo:rerun-if-changed={memory}");
    println!("cargo:rerun-if-changed=build.rs");
}
