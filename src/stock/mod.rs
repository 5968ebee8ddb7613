//! Per-CPU caches (layer 2, above the counter): the slots every per-CPU cache of the crate
//! is built on, with their owner-versus-drainer protocol (`slots.rs`, protocol S), the two
//! barriers of that protocol (`barrier.rs`), and the unit stock (`units.rs`, Linux's
//! `memcg_stock_pcp`): units pre-charged to a counter chain, cached per CPU so that most
//! charges and uncharges touch no shared cache line.
//!
//! The stock knows counters and an abstract owner of units and references
//! (`StockOwner`); groups implement it one layer up. The object layer
//! builds its own per-CPU byte stock on the same slots.

pub(crate) mod barrier;
pub(crate) mod slots;
pub(crate) mod units;

pub use units::{DEFAULT_BATCH, MAX_BATCH, STOCK_SLOTS};

/// How many references on its `ObjGroup` a CPU's object stock takes at once to hand out with
/// [`ObjGroup::charge_object`](crate::objgroup::ObjGroup::charge_object) (one atomic
/// read-modify-write per batch instead of one per object). Objects' references given back
/// with [`ObjGroup::uncharge_object`](crate::objgroup::ObjGroup::uncharge_object) on a CPU
/// that caches the same `ObjGroup` are kept there, and a batch goes back to the count once
/// more than two batches are cached, so a CPU holds at most `2 × OBJ_REF_BATCH` spare
/// references. Smaller under loom, so the models cross the batch boundaries.
pub const OBJ_REF_BATCH: usize = if cfg!(loom) { 1 } else { 32 };
