//! Hierarchical resource accounting: Linux memcg's accounting core as a `no_std` library.
//!
//! `chargetree` counts how much of a resource (memory pages, bytes, credits, anything) each
//! group in a tree uses, enforces hard limits at every level, and keeps the bookkeeping that
//! soft limits and reclaim protection need, the way the Linux memory cgroup does
//! (`mm/page_counter.c`). It is meant to sit inside a custom allocator, a hypervisor, a
//! database's memory pool or bare-metal firmware.
//!
//! # Parts
//!
//! * [`counter`]: one node of a hierarchical counter ([`Counter`]): usage, `max`, `high`,
//!   `min`, `low`, peaks, fail count and protected-usage sums. Charges check every level,
//!   add top-down and report the lowest ancestor that refused. Pure atomics: no
//!   allocation, no locks on the charge path, usable as `static`s with `&'static` parents.
//! * [`group`] (with `alloc`): a [`Tree`](group::Tree) of refcounted
//!   [`Group`](group::Group) handles, each embedding a counter; online → offline → released
//!   → freed after an epoch grace period; [`OwnerCell`](group::OwnerCell)s for objects that
//!   record their group, and moving a charge between groups; events.
//! * [`stock`] and the charge engine ([`Group::try_charge`](group::Group::try_charge)): a
//!   per-CPU cache of pre-charged units whose fast path has no atomic read-modify-write,
//!   drained remotely with one `membarrier`; batching, reclaim hook, drain, bounded retries,
//!   typed failure, over-`high` reporting, protection-ordered reclaim walks.
//! * [`objgroup`]: byte-granular charging through [`ObjGroup`](objgroup::ObjGroup)s, with
//!   sub-unit remainders parked per CPU, reparented when their group goes offline.
//! * [`epoch`]: the tree's crossbeam-epoch collector, guards and participants.
//! * [`alloc`]: the accounting global allocator and an `allocator_api2` adapter;
//!   [`Reservation`]: RAII budgets.
//! * [`cpu`]: what "this CPU" means: [`ThreadCpus`](cpu::ThreadCpus) (std),
//!   [`TestCpus`](cpu::TestCpus), or an embedder's `unsafe impl` of
//!   [`CpuProvider`](cpu::CpuProvider).
//!
//! Everything an allocator reaches (charge, uncharge, stock operations, handle clone and
//! drop, byte charges) never allocates, never takes a lock and never runs a deferred
//! destructor (`tests/alloc_safety.rs`, `examples/allocator.rs`).
//!
//! # A tour, from a counter to an allocator
//!
//! **A counter** ([`Counter`]) is one node: usage, limits, peaks. Counters need no heap:
//! firmware declares them as `static`s with `&'static` parents.
//!
//! ```
//! use chargetree::counter::{ChargeError, Counter, parse_amount};
//!
//! // Units are 4 KiB pages; the tenant may use 1 MiB, one of its jobs 256 KiB.
//! static TENANT: Counter<'static> = Counter::new_root();
//! static JOB: Counter<'static> = Counter::new(Some(&TENANT));
//! TENANT.set_max(parse_amount("1M", 4096).unwrap()).unwrap();
//! JOB.set_max(parse_amount("256K", 4096).unwrap()).unwrap();
//!
//! JOB.try_charge(64).unwrap();
//! assert_eq!(TENANT.usage(), 64);
//! assert!(matches!(JOB.try_charge(1), Err(ChargeError::Limit { level: 0, .. })));
//! JOB.uncharge(64);
//! assert_eq!((TENANT.usage(), JOB.peak()), (0, 64));
//! ```
//!
//! **A tree of groups** ([`Tree`](group::Tree), [`Group`](group::Group)) puts counters in
//! refcounted nodes that can come and go while other threads charge them, and charges through
//! a per-CPU stock so that most charges touch no shared cache line.
//!
//! ```
//! use chargetree::group::{GroupSpec, Tree};
//!
//! let tree = Tree::new();
//! let tenant = tree.root().create_child(GroupSpec::new().name("tenant").max(1024)).unwrap();
//! let vm = tenant.create_child(GroupSpec::new().name("vm").high(512)).unwrap();
//! let charged = vm.try_charge(600).unwrap();
//! assert!(charged.over_high.is_some(), "told, not refused");
//! let refused = vm.try_charge(500).unwrap_err();
//! assert_eq!(refused.group_name().map(|n| n.as_str()), Some("tenant"), "the level that refused");
//! vm.uncharge(600);
//! ```
//!
//! **Objects charged in bytes** go through an [`ObjGroup`](objgroup::ObjGroup), which
//! outlives its group (objects charged to a group that goes away are charged to its parent).
//!
//! ```
//! use chargetree::group::{GroupSpec, Tree};
//! use chargetree::objgroup::ObjGroup;
//!
//! let tree = Tree::new();
//! let tenant = tree.root().create_child(GroupSpec::new().max(16)).unwrap();
//! let objects = tenant.obj_group().unwrap();
//! let block = objects.charge_object(100).unwrap().object; // keep it in the object's header
//! tenant.offline().unwrap(); // the ObjGroup now charges the root
//! // SAFETY: `block` came from `charge_object` on an `ObjGroup` of a default tree, once.
//! unsafe { <ObjGroup>::uncharge_object(block, 100) };
//! ```
//!
//! **A reclaimer** ([`Reclaimer`](group::Reclaimer)) is called by the engine when a group is
//! at its limit, to free what it can before the charge fails;
//! [`Group::walk_reclaim`](group::Group::walk_reclaim) visits a subtree in Linux's
//! protection order.
//!
//! ```
//! use chargetree::group::{Group, GroupSpec, Reclaimer, Tree, TreeConfig};
//!
//! struct DropCaches;
//! impl Reclaimer for DropCaches {
//!     fn reclaim(&self, group: &Group, amount: usize) -> usize {
//!         // A real one frees caches charged below `group`; this one frees what the test left.
//!         let freed = group.counter().usage().min(amount);
//!         group.uncharge(freed);
//!         freed
//!     }
//! }
//! let tree = Tree::with_config(TreeConfig::new().reclaimer(DropCaches).batch(0));
//! let g = tree.root().create_child(GroupSpec::new().max(10)).unwrap();
//! let _ = g.try_charge(10).unwrap(); // a cache, say
//! let _ = g.try_charge(4).unwrap(); // fits once the reclaimer freed 4
//! assert_eq!(g.counter().usage(), 10);
//! ```
//!
//! **The accounting allocator** ([`alloc::TenantAlloc`]) charges every allocation of a
//! process to the calling thread's tenant and refuses (null) over the limit, in one line.
//!
//! ```
//! use std::alloc::System;
//! use chargetree::alloc::TenantAlloc;
//! use chargetree::group::{GroupSpec, LazyTree, TreeConfig};
//!
//! #[global_allocator]
//! static ALLOCATOR: TenantAlloc<System> = TenantAlloc::new(System);
//! static TENANTS: LazyTree = LazyTree::new(TreeConfig::new);
//!
//! let tenant = TENANTS.root().create_child(GroupSpec::new().max(256)).unwrap(); // 1 MiB
//! let _inside = chargetree::alloc::enter_group(&tenant).unwrap();
//! assert!(Vec::<u8>::new().try_reserve(2 << 20).is_err(), "the process lives on");
//! ```
//!
//! **A reservation** ([`Reservation`]) holds an amount charged to a group for as long as it
//! lives: per-query and per-operator budgets for a query engine.
//!
//! ```
//! use chargetree::group::{GroupSpec, Tree};
//!
//! let tree = Tree::new();
//! let query = tree.root().create_child(GroupSpec::new().name("q1").max(100)).unwrap();
//! let mut sort = query.reservation();
//! let _ = sort.try_grow(80).unwrap();
//! assert!(sort.try_grow(30).is_err()); // spill instead
//! drop(sort); // gives the 80 back
//! ```
//!
//! # Cargo features
//!
//! * `std` (default): thread-based CPU slots ([`ThreadCpus`](cpu::ThreadCpus)), pinning on
//!   the current thread, `membarrier(2)` for remote stock drains on Linux, the
//!   [`TenantAlloc`](alloc::TenantAlloc) global allocator; implies `alloc`.
//!   Error types implement `core::error::Error` either way.
//! * `alloc`: groups, epoch reclamation, stocks, the engine, `ObjGroup`s (the bare counter
//!   needs no allocator).
//! * `portable-atomic`: take atomics from `portable-atomic`, for targets without native
//!   pointer-width read-modify-write; add `critical-section` (or portable-atomic's
//!   `unsafe-assume-single-core` cfg) on single-core targets such as `thumbv6m-none-eabi`.
//! * `model`: plain sequential reference models of the counter, the tree of groups and the
//!   object layer (`model`), for the fuzz targets and property tests; not semver.
//! * `allocator-api2`: `alloc::GroupAlloc`, an `allocator_api2::alloc::Allocator` that
//!   charges one collection to one group; implies `alloc`.
//!
//! # `no_std`
//!
//! The crate is always `#![no_std]`. The counter needs only `core` and pointer-width atomics
//! (native, or via `portable-atomic`). Hot counters are pointer-width: portable-atomic's
//! 64-bit fallback on 32-bit targets is a lock table, unsuitable for hot or interrupt paths.
//!
//! # Correctness
//!
//! Every cross-thread protocol is written down as a table in its module docs and checked by
//! a loom model (`RUSTFLAGS="--cfg loom --cfg crossbeam_loom"`, see `ci/loom.sh`); random
//! operation sequences are compared with plain sequential models by property tests; unit,
//! property and integration tests also run under miri; a soak binary runs under valgrind,
//! AddressSanitizer and ThreadSanitizer (`ci/sanitizers.sh`).
//!
//! # Minimum supported Rust version
//!
//! 1.85 (edition 2024) for the library: CI checks that it builds, with all features, on 1.85
//! (`cargo +1.85.0 check --lib --all-features`, `ci/msrv.sh`). The tests, benches and
//! examples are built and run only with the stable toolchain CI uses, and may need it.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
// The library itself must not lean on std where core or alloc has the item; tests, benches
// and examples may.
#![warn(clippy::std_instead_of_core, clippy::std_instead_of_alloc, clippy::alloc_instead_of_core)]

#[cfg(any(feature = "alloc", test))]
#[allow(unused_extern_crates)] // used by the heap-backed parts and the model
extern crate alloc as alloc_crate;
#[cfg(any(feature = "std", test))]
extern crate std;

/// Declares a `const fn` that is non-`const` under loom (loom's atomics cannot be built in a
/// const context), after crossbeam's `const_fn!`.
macro_rules! const_fn {
    ($(#[$attr:meta])* $vis:vis const fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn;

// Layers, bottom to top (see the crate docs): a module names only modules of its own layer
// or below (`ci/layers.sh` checks it).
// 0: platform
pub mod cpu;
#[cfg(feature = "alloc")]
pub mod epoch;
#[cfg(feature = "alloc")]
mod fallible;
mod padded;
mod sync;
// 1: counter
pub mod counter;
// 2: per-CPU stock
#[cfg(feature = "alloc")]
pub mod stock;
// 3: groups
#[cfg(feature = "alloc")]
mod groups;
// 4: charge engine
#[cfg(feature = "alloc")]
mod engine;
// 5: object layer
#[cfg(feature = "alloc")]
mod obj;
// 6: tree (composition root)
#[cfg(feature = "alloc")]
mod tree;
// 7: drop-ins
#[cfg(feature = "alloc")]
pub mod alloc;
#[cfg(feature = "alloc")]
mod reservation;
// 8: public paths
#[cfg(feature = "alloc")]
mod api;
#[cfg(feature = "alloc")]
pub use api::{group, objgroup};

#[cfg(any(test, feature = "model"))]
#[doc(hidden)]
pub mod model;

#[cfg(test)]
mod tests;

pub use counter::{COUNTER_MAX, ChargeError, Counter};
#[cfg(feature = "alloc")]
pub use reservation::{Reservation, ShrinkError};

/// Aborts the process: used where continuing would be unsound (a reference count about to
/// wrap). Without `std`, a panic while panicking aborts (the trick of `bytes`' `abort()`).
#[cold]
#[inline(never)]
#[allow(dead_code)] // used by the heap-backed parts
pub(crate) fn abort() -> ! {
    #[cfg(feature = "std")]
    {
        std::process::abort()
    }
    #[cfg(not(feature = "std"))]
    {
        struct Abort;
        impl Drop for Abort {
            fn drop(&mut self) {
                panic!("chargetree: aborting");
            }
        }
        let _a = Abort;
        panic!("chargetree: aborting");
    }
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
