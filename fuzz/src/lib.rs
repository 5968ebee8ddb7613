//! Operation interpreters behind the fuzz targets (smallvec's opcode-interpreter style: one
//! byte picks an operation, the following bytes are its arguments, and invariants are checked
//! after every step). They never panic on any input except on a real invariant violation.
//!
//! `tests/fuzz_replay.rs` in the main crate includes these same files by path, so `cargo
//! test` replays the committed corpus and every regression on stable without libFuzzer.
//! So that the same files compile in both crates, the interpreters name their helpers
//! `crate::input` and the reference models `crate::model` (chargetree's own, behind its
//! `model` feature, in both crates: re-exported here, imported under that name by the
//! replay test).

pub mod api_ops;
pub mod counter_ops;
pub mod input;
pub mod protection;

/// The sequential reference models the interpreters compare with.
pub use chargetree::model;
