//! Groups and trees: the public face of the group layer, the charge engine and the tree
//! (the types live in the layers `groups`, `engine` and `tree`; see the crate root).
//!
//! Groups: pointer-refcounted handles to the nodes of a [`Tree`], their lifecycle, owner
//! cells and events (Linux's css references, `percpu_ref`, and the memcg lifetime in
//! `mm/memcontrol.c` and `kernel/cgroup/cgroup.c`).
//!
//! # References follow pointers
//!
//! A [`Group`] is a handle: cloning it takes a reference (`css_get`), dropping it puts one
//! (`css_put`). Every *stored* pointer that can outlive its context owns exactly one
//! reference: a handle, a child's pointer to its parent, an [`OwnerCell`], a stock slot.
//! Charges own none: counters move numbers, references keep memory alive.
//!
//! Readers that only *borrow* a pointer (loaded from an owner cell, a remote stock slot)
//! do so under an epoch [`Guard`](crate::epoch::Guard) and get a [`GroupRef`], which can be
//! dereferenced while the guard lives and turned into a handle only with
//! [`GroupRef::tryget`] (fails once the count reached zero) or
//! [`GroupRef::tryget_online`] (fails once the group is offline), in a loop that re-reads
//! the source ([`OwnerCell::get`] does this).
//!
//! # Lifecycle
//!
//! online → offline ([`Group::offline`]: no new children, no `tryget_online`, `min`/`low`
//! zeroed, base reference dropped) → released (last reference gone; queued without
//! allocating) → freed (after an epoch grace period). Who holds the node in each state is
//! tabled in the source, `src/groups/node.rs` (contributors' documentation: the module is
//! private).
//!
//! # Reference counting that scales
//!
//! Each group's count is Linux's `percpu_ref` idea without RCU: while the group is online,
//! `get`/`put` add to one of several cache-line-padded shards chosen by the current CPU, so
//! handles cloned and dropped on different CPUs do not bounce a shared line; offlining
//! harvests the shards into one word (a `fetch_or` per shard marks it dead in the same RMW
//! that reads it), after which zero can be detected. The protocol is tabled in
//! `src/groups/refcount.rs`; its loom model is `src/tests/loom_group.rs`.
//! Measured in `benches/group.rs`.
//!
//! # Allocator safety
//!
//! Clone, drop (including the last drop), `tryget` and counter operations never allocate,
//! never take a lock, and never run deferred destructors: a released group is pushed onto a
//! lock-free intrusive list and freed later by a non-allocator operation (creation, offline,
//! [`Group::obj_group`], [`Tree::reclaim`], [`Tree::pin`], dropping the tree). This holds
//! after the tree handle is dropped too: a release then also lists the tree as an orphan
//! (lock-free), and the next non-allocator operation on *any* tree, or
//! [`reclaim_orphans`], frees it. `tests/alloc_safety.rs` proves it, the dropped-tree state
//! included, under a global allocator that counts re-entries.

pub use crate::engine::{
    ChargeFailure, ChargeOptions, Charged, DEFAULT_RETRIES, OverHigh, ReclaimWalk, Reclaimer,
};
pub use crate::groups::{
    Event, EventCounts, Group, GroupError, GroupId, GroupName, GroupRef, GroupSpec, MoveError, Observer,
    OwnerCell, reclaim_orphans,
};
pub use crate::reservation::{Reservation, ShrinkError};
#[cfg(not(loom))]
pub use crate::tree::LazyTree;
pub use crate::tree::{MAX_REFCOUNT_SHARDS, MAX_RETRIES, OFFLINE_PUMP_BATCH, Tree, TreeConfig, TreeStats};
