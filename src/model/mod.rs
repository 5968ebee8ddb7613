//! Plain sequential reference models of the crate's public types: no atomics, no stocks
//! racing drains, no cleverness; each rule of the crate's docs written the obvious way, once.
//! Property tests (`src/tests/properties.rs`, `tests/engine_model.rs`,
//! `tests/objgroup_model.rs`) and the fuzz targets (`fuzz/src/`) run random operations on the
//! real types and on these models and compare every observable after each step. Behind the
//! `model` feature; not covered by semver.
//!
//! * [`Model`] (`counter.rs`): a tree of [`Counter`](crate::counter::Counter)s: usage, limits,
//!   peaks, fail counts, the underflow clamp, protected-usage sums, effective protection.
//! * [`TreeModel`] (`tree.rs`, with `alloc`): a [`Tree`](crate::group::Tree) of groups as the
//!   caller sees it: topology, lifecycle (creation, offline and their refusals), the units the
//!   caller's objects hold through the charge engine, forced charges, which `ObjGroup` a
//!   lookup hands out, limit writes, the bounds of reference counts.
//! * [`ObjModel`] (`obj.rs`, with `alloc`): the object layer: each
//!   [`ObjGroup`](crate::objgroup::ObjGroup)'s units, parked and live bytes, its owner through
//!   reparenting, what each group keeps (O3), and the per-CPU object stock byte by byte.
//!
//! The models depend on nothing in the crate but the error types and constants of the types
//! they model (`crate::counter`'s `COUNTER_MAX` and `LimitError`, `crate::group`'s
//! `GroupError`), so that they stay a second, independent statement of the rules.

mod counter;
#[cfg(feature = "alloc")]
mod obj;
#[cfg(feature = "alloc")]
mod tree;

pub use counter::{Model, ModelChargeError, ModelNode, setting};
#[cfg(feature = "alloc")]
pub use obj::{ObjGroupModel, ObjModel};
#[cfg(feature = "alloc")]
pub use tree::TreeModel;
