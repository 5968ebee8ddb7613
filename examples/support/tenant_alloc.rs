//! A per-tenant accounting allocator built on chargetree, shared by `examples/allocator.rs`
//! and `benches/allocator.rs`.
//!
//! * [`TenantAlloc`] is a `GlobalAlloc` that charges every allocation, in bytes, through the
//!   current thread's [`ObjGroup`] (set with [`enter`]), and refuses an allocation over the
//!   limit by returning null, so `Vec::try_reserve` sees an error and the process survives.
//!   Each allocation carries a small header with the `ObjGroup` it was charged to (holding a
//!   reference), so the free uncharges the right group even if it happens on another thread
//!   or after the tenant's group was removed (the `ObjGroup` was reparented by then).
//! * [`GroupAlloc`] is an `allocator_api2::alloc::Allocator` that charges one collection to
//!   one `ObjGroup`, whatever thread uses it.
//!
//! Nothing chargetree does inside `alloc`/`dealloc` allocates; a re-entry guard passes any
//! nested call straight to the system allocator and counts it in [`REENTRIES`], which stays
//! 0 (the example asserts it).

#![allow(dead_code)] // each includer uses a different part

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};

use chargetree::objgroup::ObjGroup;

/// Bytes in front of every block: enough for the `ObjGroup` pointer, and a multiple of any
/// alignment up to 16 so the block stays aligned (larger alignments use a larger header).
const HEADER: usize = 16;

thread_local! {
    /// The current thread's tenant: an `ObjGroup` reference in raw form, owned by the
    /// thread's [`TenantGuard`]. Const-initialised, no destructor: reading it never
    /// allocates.
    static CURRENT: Cell<*mut ()> = const { Cell::new(ptr::null_mut()) };
    /// Set while the accounting runs on this thread.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// Allocations charged by this thread and not yet added to [`CHARGED`] (a guard adds
    /// them when it drops). A statistic bumped on every allocation should not be a shared
    /// atomic: that is a locked instruction per allocation on a line every thread writes.
    static CHARGED_HERE: Cell<usize> = const { Cell::new(0) };
}

/// Allocator calls made while the accounting itself was running (must stay 0).
pub(crate) static REENTRIES: AtomicUsize = AtomicUsize::new(0);
/// Allocations refused because a group was at its limit.
pub(crate) static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// Charges that left a group above its `high`.
pub(crate) static OVER_HIGH: AtomicUsize = AtomicUsize::new(0);
/// Allocations charged to a tenant, by threads whose guard has been dropped (each thread
/// counts in a thread-local and adds its count here when it leaves its tenant).
pub(crate) static CHARGED: AtomicUsize = AtomicUsize::new(0);

/// The global allocator.
pub(crate) struct TenantAlloc;

/// Sets the current thread's tenant until the guard is dropped.
pub(crate) struct TenantGuard {
    previous: *mut (),
}

/// Makes `tenant` the current thread's tenant: allocations made on this thread are charged
/// to it until the returned guard is dropped.
pub(crate) fn enter(tenant: &ObjGroup) -> TenantGuard {
    // Take the thread's CPU slot now, outside any allocation: its first use registers a
    // thread-local destructor, which may allocate.
    let _ = chargetree::cpu::ThreadCpus::register_current_thread();
    let raw = tenant.clone().into_raw().as_ptr();
    TenantGuard { previous: CURRENT.with(|c| c.replace(raw)) }
}

impl Drop for TenantGuard {
    fn drop(&mut self) {
        let mine = CURRENT.with(|c| c.replace(self.previous));
        let charged = CHARGED_HERE.with(|c| c.replace(0));
        CHARGED.fetch_add(charged, Ordering::Relaxed);
        if let Some(p) = NonNull::new(mine) {
            // SAFETY: `enter` stored a reference from `into_raw`; given back exactly once.
            drop(unsafe { <ObjGroup>::from_raw(p) });
        }
    }
}

/// Runs `f` as the accounting, with the re-entry guard set. Returns `None` if the
/// accounting is already running on this thread (a nested call: pass it through).
#[inline]
fn accounting<R>(f: impl FnOnce() -> R) -> Option<R> {
    let entered = BUSY.try_with(|b| !b.replace(true)).unwrap_or(false);
    if !entered {
        REENTRIES.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let r = f();
    let _ = BUSY.try_with(|b| b.set(false));
    Some(r)
}

fn header_size(layout: Layout) -> usize {
    layout.align().max(HEADER)
}

// SAFETY: every block handed out is a system block offset by `header_size(layout)`, which
// keeps `layout.align()` (the header is a multiple of it); `dealloc` undoes the offset with
// the same layout. The header holds a raw `ObjGroup` reference or null.
unsafe impl GlobalAlloc for TenantAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let h = header_size(layout);
        let Ok(full) = Layout::from_size_align(layout.size() + h, layout.align().max(HEADER)) else {
            return ptr::null_mut();
        };
        let current = CURRENT.try_with(Cell::get).unwrap_or(ptr::null_mut());
        let mut owner: *mut () = ptr::null_mut();
        if let Some(cur) = NonNull::new(current) {
            // `accounting` counts a re-entry and passes through if it is already running.
            let charged = accounting(|| {
                // SAFETY: the thread's guard keeps this reference alive; we only borrow
                // it (ManuallyDrop: no put).
                let tenant = std::mem::ManuallyDrop::new(unsafe { <ObjGroup>::from_raw(cur) });
                // The charge and the block's own reference on its ObjGroup, in one visit
                // to the CPU's object stock (the reference usually from its spares).
                match tenant.charge_object(layout.size()) {
                    Ok(c) => {
                        if c.charged.over_high.is_some() {
                            OVER_HIGH.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(c.object.as_ptr())
                    }
                    Err(_) => None,
                }
            });
            match charged {
                Some(Some(o)) => {
                    owner = o;
                    let _ = CHARGED_HERE.try_with(|c| c.set(c.get() + 1));
                }
                Some(None) => {
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    return ptr::null_mut();
                }
                None => {}
            }
        }
        // SAFETY: `full` has a non-zero size (it includes the header).
        let base = unsafe { System.alloc(full) };
        if base.is_null() {
            if let Some(o) = NonNull::new(owner) {
                let size = layout.size();
                // SAFETY: the reference taken above, given back once with its charge.
                if accounting(|| unsafe { <ObjGroup>::uncharge_object(o, size) }).is_none() {
                    // SAFETY: as above (the closure did not run).
                    unsafe { <ObjGroup>::uncharge_object(o, size) };
                }
            }
            return ptr::null_mut();
        }
        // SAFETY: `base` has `full.size() >= h` bytes; the header is the last pointer-sized
        // word before the block, aligned because `h` is a multiple of 8.
        unsafe {
            let block = base.add(h);
            block.cast::<*mut ()>().sub(1).write(owner);
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let h = header_size(layout);
        // SAFETY: `block` came from `alloc` with this layout: the header is right before it.
        let owner = unsafe { block.cast::<*mut ()>().sub(1).read() };
        // SAFETY: the system block starts `h` bytes before `block`, with the same full layout.
        unsafe {
            let full = Layout::from_size_align_unchecked(layout.size() + h, layout.align().max(HEADER));
            System.dealloc(block.sub(h), full);
        }
        if let Some(o) = NonNull::new(owner) {
            let size = layout.size();
            // The bytes and the block's reference go back together; the reference is kept as
            // a spare of the CPU's object stock or put (which may release the ObjGroup:
            // queued, no allocation).
            // SAFETY: the block's reference, taken in `alloc`, given back exactly once.
            if accounting(|| unsafe { <ObjGroup>::uncharge_object(o, size) }).is_none() {
                // Nested (cannot happen unless the library re-entered): still balance it.
                // SAFETY: as above (the closure did not run).
                unsafe { <ObjGroup>::uncharge_object(o, size) };
            }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let h = header_size(layout);
        // SAFETY: `block` came from `alloc` with `layout`: its header is right before it.
        let owner = unsafe { block.cast::<*mut ()>().sub(1).read() };
        // The block stays charged to its owner: charge or uncharge only the difference.
        if let Some(o) = NonNull::new(owner) {
            // SAFETY: the block's reference, borrowed (not given back: the block lives on).
            let o = std::mem::ManuallyDrop::new(unsafe { <ObjGroup>::from_raw(o) });
            if new_size > layout.size() {
                let refused =
                    accounting(|| o.charge_bytes(new_size - layout.size()).is_err()).unwrap_or(false);
                if refused {
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    return ptr::null_mut();
                }
            } else if new_size < layout.size() {
                let _ = accounting(|| o.uncharge_bytes(layout.size() - new_size));
            }
        }
        let full = Layout::from_size_align(layout.size() + h, layout.align().max(HEADER)).expect("was valid");
        // SAFETY: the system block starts `h` bytes before `block` with layout `full`; the
        // header moves with the data.
        let base = unsafe { System.realloc(block.sub(h), full, new_size + h) };
        if base.is_null() {
            if let Some(o) = NonNull::new(owner) {
                // Undo the difference charged above; the old block is untouched.
                // SAFETY: borrowed as above.
                let o = std::mem::ManuallyDrop::new(unsafe { <ObjGroup>::from_raw(o) });
                if new_size > layout.size() {
                    let _ = accounting(|| o.uncharge_bytes(new_size - layout.size()));
                } else if new_size < layout.size() {
                    let _ = accounting(|| o.charge_bytes(layout.size() - new_size).is_ok());
                }
            }
            return ptr::null_mut();
        }
        // SAFETY: `base` is the start of the (moved) system block.
        unsafe { base.add(h) }
    }
}

/// An `allocator_api2` allocator that charges every allocation of one collection to one
/// `ObjGroup` (whatever thread makes it), and fails cleanly at the limit.
#[derive(Clone)]
pub(crate) struct GroupAlloc {
    objgroup: ObjGroup,
}

impl GroupAlloc {
    /// Charges to `objgroup`.
    pub(crate) fn new(objgroup: ObjGroup) -> Self {
        Self { objgroup }
    }
}

// SAFETY: blocks come from the system allocator with the caller's layout and are returned
// to it with the same layout; charging never touches the memory.
unsafe impl allocator_api2::alloc::Allocator for GroupAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if self.objgroup.charge_bytes(layout.size()).is_err() {
            return Err(allocator_api2::alloc::AllocError);
        }
        match allocator_api2::alloc::System.allocate(layout) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.objgroup.uncharge_bytes(layout.size());
                Err(e)
            }
        }
    }

    unsafe fn deallocate(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded: `p` came from `allocate` with `layout`.
        unsafe { allocator_api2::alloc::System.deallocate(p, layout) };
        self.objgroup.uncharge_bytes(layout.size());
    }

    unsafe fn grow(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        // Charge the difference only, and let the system allocator grow in place.
        if self.objgroup.charge_bytes(new.size() - old.size()).is_err() {
            return Err(allocator_api2::alloc::AllocError);
        }
        // SAFETY: forwarded: `p` came from this allocator with `old`, `new` is larger.
        match unsafe { allocator_api2::alloc::System.grow(p, old, new) } {
            Ok(q) => Ok(q),
            Err(e) => {
                self.objgroup.uncharge_bytes(new.size() - old.size());
                Err(e)
            }
        }
    }

    unsafe fn shrink(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        // SAFETY: forwarded: `p` came from this allocator with `old`, `new` is smaller.
        let q = unsafe { allocator_api2::alloc::System.shrink(p, old, new) }?;
        self.objgroup.uncharge_bytes(old.size() - new.size());
        Ok(q)
    }
}
