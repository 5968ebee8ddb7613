//! [`TenantAlloc`]: a `GlobalAlloc` that charges each allocation to the calling thread's
//! tenant (see the module docs of [`crate::alloc`]).

use alloc_crate::boxed::Box;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, size_of};
use core::ptr::{self, NonNull};

use crate::cpu::{CpuProvider, ThreadCpus};
use crate::groups::{Group, GroupError};
use crate::obj::ObjGroup;
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// An object's reference, and whether the charge left a group above its `high`.
type ChargedObject = Option<(NonNull<()>, bool)>;

/// How to charge through, and give back, references on an `ObjGroup<P, K>` held in raw form:
/// one table per `P` and `K`, so that a block records its owner without naming its type.
///
/// The four accounting entries are `extern "C"`, so they cannot unwind: they may run the
/// embedder's code (a [`Reclaimer`](crate::group::Reclaimer) at a limit, an
/// [`Observer`](crate::group::Observer) when a free releases an `ObjGroup`), and a panic
/// there must not unwind out of a `GlobalAlloc` method, which is undefined behaviour. Rust
/// aborts the process instead when a panic reaches the boundary of an `extern "C"` function
/// (guaranteed since 1.81; the MSRV is 1.85), at no cost on the way that does not panic.
/// Only Rust calls them, so their Rust-only types never cross a C boundary.
#[allow(improper_ctypes_definitions)]
struct Ops {
    charge_object: unsafe extern "C" fn(NonNull<()>, usize) -> ChargedObject,
    uncharge_object: unsafe extern "C" fn(NonNull<()>, usize),
    charge_bytes: unsafe extern "C" fn(NonNull<()>, usize) -> bool,
    uncharge_bytes: unsafe extern "C" fn(NonNull<()>, usize),
    put: unsafe fn(NonNull<()>),
}

struct OpsOf<P, const K: usize>(PhantomData<P>);

impl<P: CpuProvider, const K: usize> OpsOf<P, K> {
    const OPS: Ops = Ops {
        charge_object: Self::charge_object,
        uncharge_object: Self::uncharge_object,
        charge_bytes: Self::charge_bytes,
        uncharge_bytes: Self::uncharge_bytes,
        put: Self::put,
    };

    /// A borrowed handle on the `ObjGroup` a raw reference names.
    ///
    /// # Safety
    ///
    /// `raw` is a live reference on an `ObjGroup<P, K>` (the caller keeps it).
    unsafe fn borrow(raw: NonNull<()>) -> ManuallyDrop<ObjGroup<P, K>> {
        // SAFETY: forwarded; `ManuallyDrop` keeps the reference the caller's.
        ManuallyDrop::new(unsafe { ObjGroup::from_raw(raw) })
    }

    /// Charges an object of `bytes` and returns its reference and whether a group is over
    /// its `high`. `raw` is the tenant's reference (borrowed).
    #[allow(improper_ctypes_definitions)]
    unsafe extern "C" fn charge_object(raw: NonNull<()>, bytes: usize) -> ChargedObject {
        // SAFETY: the tenant's reference, kept by the caller.
        let o = unsafe { Self::borrow(raw) };
        o.charge_object(bytes).ok().map(|c| (c.object, c.charged.over_high.is_some()))
    }

    unsafe extern "C" fn uncharge_object(object: NonNull<()>, bytes: usize) {
        // SAFETY: `object` is a block's reference from `charge_object`, given back once.
        unsafe { ObjGroup::<P, K>::uncharge_object(object, bytes) }
    }

    unsafe extern "C" fn charge_bytes(raw: NonNull<()>, bytes: usize) -> bool {
        // SAFETY: a block's reference, kept by its block.
        unsafe { Self::borrow(raw) }.charge_bytes(bytes).is_ok()
    }

    unsafe extern "C" fn uncharge_bytes(raw: NonNull<()>, bytes: usize) {
        // SAFETY: as in `charge_bytes`.
        unsafe { Self::borrow(raw) }.uncharge_bytes(bytes);
    }

    unsafe fn put(raw: NonNull<()>) {
        // SAFETY: a reference from `into_raw`, given back once.
        drop(unsafe { ObjGroup::<P, K>::from_raw(raw) });
    }
}

/// A tenant: a raw reference on an `ObjGroup` and how to use it. Null `raw`: none.
#[derive(Clone, Copy)]
struct Tenant {
    raw: *mut (),
    ops: *const Ops,
}

impl Tenant {
    const NONE: Tenant = Tenant { raw: ptr::null_mut(), ops: ptr::null() };

    fn of<P: CpuProvider, const K: usize>(objgroup: &ObjGroup<P, K>) -> Tenant {
        Tenant { raw: objgroup.clone().into_raw().as_ptr(), ops: &OpsOf::<P, K>::OPS }
    }
}

/// What every block records in its header: its `ObjGroup` reference and how to give it back
/// (both null for an uncharged block). The last two words before the caller's block.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    object: *mut (),
    ops: *const Ops,
}

std::thread_local! {
    // `const` initialisers and no destructors: reading them never allocates, and they stay
    // readable while the thread tears down.
    static CURRENT: Cell<Tenant> = const { Cell::new(Tenant::NONE) };
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// The process's default tenant (a leaked record, set once), for threads outside any.
static DEFAULT: AtomicPtr<Tenant> = AtomicPtr::new(ptr::null_mut());
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static NESTED: AtomicUsize = AtomicUsize::new(0);
static OVER_HIGH: AtomicUsize = AtomicUsize::new(0);

/// Counts kept by the accounting allocators, process-wide. Each is a rare event, counted
/// with one relaxed add when it happens (the common allocation touches no shared line).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Allocations (and reallocations) refused because a tenant's limits refused the charge.
    pub refused: usize,
    /// Allocator calls made while the accounting itself was running on the same thread,
    /// passed through uncharged. 0 unless something the accounting calls allocates, which the
    /// crate promises it never does.
    pub nested: usize,
    /// Charges that left a group above its `high` (the allocation succeeded).
    pub over_high: usize,
}

/// The process-wide [`AllocStats`].
#[must_use]
pub fn stats() -> AllocStats {
    // ORDERING: Relaxed; statistics.
    AllocStats {
        refused: REFUSED.load(Ordering::Relaxed),
        nested: NESTED.load(Ordering::Relaxed),
        over_high: OVER_HIGH.load(Ordering::Relaxed),
    }
}

/// The calling thread's current tenant, or the default.
#[inline(always)]
fn current() -> Tenant {
    let t = CURRENT.try_with(Cell::get).unwrap_or(Tenant::NONE);
    if !t.raw.is_null() {
        return t;
    }
    // ORDERING: Acquire pairs with the Release CAS in `set_default_tenant`: the record is
    // initialised.
    let d = DEFAULT.load(Ordering::Acquire);
    if d.is_null() {
        return Tenant::NONE;
    }
    // SAFETY: a leaked record, never freed nor changed once published.
    unsafe { *d }
}

/// Runs `f` as the accounting, with the re-entry guard set; `None` (counted) if the
/// accounting already runs on this thread or the thread is tearing down.
#[inline(always)]
fn accounting<R>(f: impl FnOnce() -> R) -> Option<R> {
    let entered = BUSY.try_with(|b| !b.replace(true)).unwrap_or(false);
    if !entered {
        // ORDERING: Relaxed; statistic.
        NESTED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let r = f();
    let _ = BUSY.try_with(|b| b.set(false));
    Some(r)
}

/// Gives a block's charge and reference back (from `dealloc`, or when an allocation failed
/// after its charge). Balances even when nested: the block was charged.
///
/// # Safety
///
/// `header` is a charged block's, given back once.
#[inline(always)]
unsafe fn give_back(header: Header, bytes: usize) {
    let Some(object) = NonNull::new(header.object) else { return };
    // SAFETY: a charged block's header names its reference and its table.
    let give = || unsafe { ((*header.ops).uncharge_object)(object, bytes) };
    if accounting(give).is_none() {
        // SAFETY: as above; the closure did not run.
        unsafe { ((*header.ops).uncharge_object)(object, bytes) };
    }
}

/// The header's size for `layout`: two words, or the alignment if larger, so that the
/// caller's block keeps its alignment.
#[inline(always)]
const fn header_size(layout: Layout) -> usize {
    let words = size_of::<Header>().next_power_of_two();
    if layout.align() > words { layout.align() } else { words }
}

/// The inner allocator's layout for a block of `layout` with a header of `h` bytes.
#[inline(always)]
fn full_layout(layout: Layout, h: usize) -> Option<Layout> {
    Layout::from_size_align(layout.size().checked_add(h)?, h).ok()
}

/// A global allocator that charges every allocation to the calling thread's tenant.
///
/// `const`-constructible over any inner [`GlobalAlloc`]:
///
/// ```no_run
/// use std::alloc::System;
/// use chargetree::alloc::TenantAlloc;
///
/// #[global_allocator]
/// static ALLOCATOR: TenantAlloc<System> = TenantAlloc::new(System);
/// ```
///
/// See the [module documentation](crate::alloc) for what it charges, when it refuses, and
/// what it keeps in each block.
pub struct TenantAlloc<A> {
    inner: A,
}

impl<A> TenantAlloc<A> {
    /// Accounting over `inner`.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }

    /// The inner allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: fmt::Debug> fmt::Debug for TenantAlloc<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantAlloc").field("inner", &self.inner).finish()
    }
}

impl<A: GlobalAlloc> TenantAlloc<A> {
    /// `alloc` and `alloc_zeroed`.
    ///
    /// # Safety
    ///
    /// `GlobalAlloc::alloc`'s contract.
    #[inline(always)]
    unsafe fn allocate(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let h = header_size(layout);
        let Some(full) = full_layout(layout, h) else { return ptr::null_mut() };
        let mut header = Header { object: ptr::null_mut(), ops: ptr::null() };
        let tenant = current();
        if let Some(raw) = NonNull::new(tenant.raw) {
            // SAFETY: a tenant's table and reference, kept alive by its guard (or, for the
            // default, for the process).
            let charge = || unsafe { ((*tenant.ops).charge_object)(raw, layout.size()) };
            match accounting(charge) {
                Some(Some((object, over_high))) => {
                    if over_high {
                        // ORDERING: Relaxed; statistic.
                        OVER_HIGH.fetch_add(1, Ordering::Relaxed);
                    }
                    header = Header { object: object.as_ptr(), ops: tenant.ops };
                }
                Some(None) => {
                    // ORDERING: Relaxed; statistic.
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    return ptr::null_mut();
                }
                None => {} // nested: uncharged
            }
        }
        // SAFETY: `full` has a non-zero size (it includes the header).
        let base = unsafe { if zeroed { self.inner.alloc_zeroed(full) } else { self.inner.alloc(full) } };
        if base.is_null() {
            // SAFETY: the charge just made, given back once.
            unsafe { give_back(header, layout.size()) };
            return ptr::null_mut();
        }
        // SAFETY: `base` has `h >= size_of::<Header>()` bytes before the block, which starts
        // `h`-aligned, so the header's slot right before it is word-aligned.
        unsafe {
            let block = base.add(h);
            block.cast::<Header>().sub(1).write(header);
            block
        }
    }
}

// SAFETY: every block handed out is an inner block offset by `header_size(layout)`, a
// multiple of `layout.align()`, so it keeps the caller's alignment and size; `dealloc` and
// `realloc` undo the offset with the same layout. The header is written before the block is
// returned and read only by the functions below, given the block back.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TenantAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.allocate(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.allocate(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let h = header_size(layout);
        // SAFETY: `block` came from `alloc` with this layout: the header is right before it.
        let header = unsafe { block.cast::<Header>().sub(1).read() };
        // SAFETY: the inner block starts `h` bytes before `block`, with the layout `alloc`
        // gave the inner allocator (valid then, hence now).
        unsafe {
            let full = Layout::from_size_align_unchecked(layout.size() + h, h);
            self.inner.dealloc(block.sub(h), full);
        }
        // SAFETY: the block's own charge and reference, given back once.
        unsafe { give_back(header, layout.size()) };
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let h = header_size(layout);
        // The inner block's new size must make a valid layout with its alignment (at most
        // `isize::MAX` once rounded up), as the inner `realloc` requires: the caller's
        // promise covers `new_size`, not `new_size + h`. Checked before any charge.
        let Some(new_full) = new_size.checked_add(h).filter(|&n| Layout::from_size_align(n, h).is_ok())
        else {
            return ptr::null_mut();
        };
        // SAFETY: `block` came from `alloc` with `layout`: its header is right before it.
        let header = unsafe { block.cast::<Header>().sub(1).read() };
        let old = layout.size();
        // The block keeps its owner: charge or uncharge only the difference.
        let owner = NonNull::new(header.object);
        if let Some(object) = owner {
            // SAFETY: the block's reference (kept by the block) and its table.
            let ops = unsafe { &*header.ops };
            if new_size > old {
                // SAFETY: as above.
                let grow = || unsafe { (ops.charge_bytes)(object, new_size - old) };
                if accounting(grow) == Some(false) {
                    // ORDERING: Relaxed; statistic.
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    return ptr::null_mut();
                }
            } else if new_size < old {
                // SAFETY: as above.
                let _ = accounting(|| unsafe { (ops.uncharge_bytes)(object, old - new_size) });
            }
        }
        let undo = || {
            if let Some(object) = owner {
                // SAFETY: as above.
                let ops = unsafe { &*header.ops };
                if new_size > old {
                    // SAFETY: as above.
                    let _ = accounting(|| unsafe { (ops.uncharge_bytes)(object, new_size - old) });
                } else if new_size < old {
                    // SAFETY: as above.
                    let _ = accounting(|| unsafe { (ops.charge_bytes)(object, old - new_size) });
                }
            }
        };
        // SAFETY: the inner block starts `h` bytes before `block` with the layout `alloc`
        // gave it; the header moves with the data.
        let base = unsafe {
            let full = Layout::from_size_align_unchecked(old + h, h);
            self.inner.realloc(block.sub(h), full, new_full)
        };
        if base.is_null() {
            undo();
            return ptr::null_mut();
        }
        // SAFETY: `base` is the start of the (moved) inner block, `h` bytes before the block.
        unsafe { base.add(h) }
    }
}

/// Makes the calling thread's allocations charge `tenant` until the guard is dropped
/// (nesting restores the outer tenant). Takes the thread's CPU index now, outside any
/// allocation, and a reference on `tenant` that the guard gives back.
///
/// ```
/// use chargetree::alloc;
/// use chargetree::group::{GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let a = tree.root().create_child(GroupSpec::new().name("a")).unwrap().obj_group().unwrap();
/// let b = tree.root().create_child(GroupSpec::new().name("b")).unwrap().obj_group().unwrap();
/// let outer = alloc::enter(&a);
/// {
///     let _inner = alloc::enter(&b); // allocations here charge b (with `TenantAlloc`)
/// }
/// // ... and a again here
/// drop(outer);
/// ```
pub fn enter<P: CpuProvider, const K: usize>(tenant: &ObjGroup<P, K>) -> TenantGuard {
    let _ = ThreadCpus::register_current_thread();
    let previous = CURRENT.with(|c| c.replace(Tenant::of(tenant)));
    TenantGuard { previous, _not_send: PhantomData }
}

/// [`enter`] with a group's `ObjGroup` ([`Group::try_obj_group`]).
pub fn enter_group<P: CpuProvider, const K: usize>(group: &Group<P, K>) -> Result<TenantGuard, GroupError> {
    Ok(enter(&group.try_obj_group()?))
}

/// The tenant of threads outside any [`enter`] scope, for the rest of the process (by
/// default such threads are not charged). `Err(tenant)` if a default was set already.
pub fn set_default_tenant<P: CpuProvider, const K: usize>(
    tenant: &ObjGroup<P, K>,
) -> Result<(), ObjGroup<P, K>> {
    // ORDERING: Relaxed; a hint, the CAS decides.
    if !DEFAULT.load(Ordering::Relaxed).is_null() {
        return Err(tenant.clone());
    }
    let record = Box::into_raw(Box::new(Tenant::of(tenant)));
    // ORDERING: Release publishes the record to `current`'s Acquire load.
    match DEFAULT.compare_exchange(ptr::null_mut(), record, Ordering::Release, Ordering::Relaxed) {
        Ok(_) => Ok(()),
        Err(_) => {
            // SAFETY: ours, never published.
            let record = unsafe { Box::from_raw(record) };
            // SAFETY: the reference `Tenant::of` took, in raw form.
            Err(unsafe { ObjGroup::from_raw(NonNull::new_unchecked(record.raw)) })
        }
    }
}

/// The scope of a tenant on the current thread (see [`enter`]). Not `Send`: it restores the
/// thread's previous tenant when dropped.
#[must_use = "the tenant is left as soon as the guard is dropped"]
pub struct TenantGuard {
    previous: Tenant,
    _not_send: PhantomData<*mut ()>,
}

impl Drop for TenantGuard {
    fn drop(&mut self) {
        let mine = CURRENT.with(|c| c.replace(self.previous));
        if let Some(raw) = NonNull::new(mine.raw) {
            // SAFETY: the reference `enter` took, with its table, given back once.
            unsafe { ((*mine.ops).put)(raw) };
        }
    }
}

impl fmt::Debug for TenantGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("TenantGuard { .. }")
    }
}
