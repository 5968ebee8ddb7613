//! Accounting allocators that ship with the crate: per-tenant limits for a whole process in
//! one line, and one collection charged to one group.
//!
//! * [`TenantAlloc`] (with `std`) wraps any [`GlobalAlloc`](core::alloc::GlobalAlloc) (`System`, or an embedder's) and
//!   charges every allocation, in bytes, to the calling thread's current *tenant*, entered
//!   with a scope guard ([`enter`]). An allocation the tenant's limits refuse returns null,
//!   so `Vec::try_reserve` reports an error and the process lives. A thread outside any
//!   tenant is not charged, or is charged to the process's default tenant
//!   ([`set_default_tenant`]). Every block records the `ObjGroup` it was charged to, so its
//!   free uncharges that tenant whatever thread frees it, and `realloc` charges only the
//!   difference.
//! * `GroupAlloc` (with the `allocator-api2` feature) is an `allocator_api2::alloc::Allocator`
//!   that charges one collection to one `ObjGroup`.
//!
//! ```no_run
//! use std::alloc::System;
//!
//! use chargetree::alloc::{self, TenantAlloc};
//! use chargetree::group::{GroupSpec, LazyTree, TreeConfig};
//!
//! #[global_allocator]
//! static ALLOCATOR: TenantAlloc<System> = TenantAlloc::new(System);
//! // The tenants live for the process: a tree in a `static`, built on first use.
//! static TENANTS: LazyTree = LazyTree::new(TreeConfig::new);
//!
//! let tenant = TENANTS.root().create_child(GroupSpec::new().name("tenant").max(256)).unwrap();
//! let _inside = alloc::enter_group(&tenant).unwrap(); // this thread's allocations charge `tenant`
//! let mut v: Vec<u8> = Vec::new();
//! assert!(v.try_reserve(64 << 20).is_err(), "64 MiB is above the tenant's 1 MiB");
//! v.extend_from_slice(b"fits");
//! ```
//!
//! # What happens inside `alloc` and `dealloc`
//!
//! Nothing the accounting does allocates, takes a lock or runs a deferred destructor (the
//! crate's allocator rule): the tenant is a thread-local read, the charge goes through the
//! calling CPU's object stock with the object's reference taken from the stock's spares
//! ([`ObjGroup::charge_object`](crate::objgroup::ObjGroup::charge_object)), and the free gives both back
//! ([`ObjGroup::uncharge_object`](crate::objgroup::ObjGroup::uncharge_object)). A re-entry guard passes any nested call (one made while
//! the accounting itself runs on this thread) straight to the inner allocator, uncharged,
//! and counts it ([`AllocStats::nested`], 0 unless something is wrong). The thread's CPU
//! index is taken when it enters a tenant, outside any allocation.
//!
//! # The block layout
//!
//! Every block the inner allocator hands out starts with a header of
//! `max(align, 2 words)` bytes whose last two words record the block's `ObjGroup` reference
//! and how to give it back (null for an uncharged block); the caller's block follows it, so
//! every alignment is kept. The header costs that many bytes per allocation.

#[cfg(feature = "allocator-api2")]
mod group_alloc;
#[cfg(all(feature = "std", not(loom)))]
mod tenant;

#[cfg(feature = "allocator-api2")]
pub use group_alloc::GroupAlloc;
#[cfg(all(feature = "std", not(loom)))]
pub use tenant::{AllocStats, TenantAlloc, TenantGuard, enter, enter_group, set_default_tenant, stats};
