//! [`GroupAlloc`]: an `allocator_api2` allocator that charges one collection to one group.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

use crate::cpu::{CpuProvider, DefaultCpus};
use crate::obj::ObjGroup;
use crate::stock::STOCK_SLOTS;

/// An [`Allocator`] that charges every allocation of the collections using it to one
/// `ObjGroup`, in bytes, whatever thread makes it, and fails cleanly (`AllocError`) when the
/// group's limits refuse. Growth and shrinking charge only the difference. Blocks come from
/// the inner allocator `A` (`allocator_api2`'s `Global` by default) unchanged: no header.
///
/// ```
/// use allocator_api2::vec::Vec;
/// use chargetree::alloc::GroupAlloc;
/// use chargetree::group::{GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let cache = tree.root().create_child(GroupSpec::new().name("cache").max(2)).unwrap();
/// let mut v: Vec<u8, _> = Vec::new_in(GroupAlloc::new(cache.obj_group().unwrap()));
/// v.extend_from_slice(&[1, 2, 3]);
/// assert!(v.try_reserve(1 << 20).is_err(), "1 MiB is above the group's 2 pages");
/// ```
pub struct GroupAlloc<A = Global, P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    objgroup: ObjGroup<P, K>,
    inner: A,
}

impl<P: CpuProvider, const K: usize> GroupAlloc<Global, P, K> {
    /// Charges to `objgroup`, allocating from `Global`.
    #[must_use]
    pub fn new(objgroup: ObjGroup<P, K>) -> Self {
        Self { objgroup, inner: Global }
    }
}

impl<A, P: CpuProvider, const K: usize> GroupAlloc<A, P, K> {
    /// Charges to `objgroup`, allocating from `inner`.
    #[must_use]
    pub fn with_inner(objgroup: ObjGroup<P, K>, inner: A) -> Self {
        Self { objgroup, inner }
    }

    /// The `ObjGroup` charged.
    #[must_use]
    pub fn objgroup(&self) -> &ObjGroup<P, K> {
        &self.objgroup
    }
}

impl<A: Clone, P: CpuProvider, const K: usize> Clone for GroupAlloc<A, P, K> {
    fn clone(&self) -> Self {
        Self { objgroup: self.objgroup.clone(), inner: self.inner.clone() }
    }
}

impl<A, P: CpuProvider, const K: usize> fmt::Debug for GroupAlloc<A, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupAlloc").field("objgroup", &self.objgroup).finish_non_exhaustive()
    }
}

// SAFETY: blocks come from `inner` with the caller's layouts and go back to it with the same
// ones (forwarded unchanged); the accounting never touches their memory. Clones charge the
// same `ObjGroup` and allocate from clones of `inner`, which the `Allocator` contract lets
// free each other's blocks when `A`'s clones may.
unsafe impl<A: Allocator, P: CpuProvider, const K: usize> Allocator for GroupAlloc<A, P, K> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let _ = self.objgroup.charge_bytes(layout.size()).map_err(|_| AllocError)?;
        self.inner.allocate(layout).inspect_err(|_| self.objgroup.uncharge_bytes(layout.size()))
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let _ = self.objgroup.charge_bytes(layout.size()).map_err(|_| AllocError)?;
        self.inner.allocate_zeroed(layout).inspect_err(|_| self.objgroup.uncharge_bytes(layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded: `ptr` came from this allocator (hence `inner`) with `layout`.
        unsafe { self.inner.deallocate(ptr, layout) };
        self.objgroup.uncharge_bytes(layout.size());
    }

    unsafe fn grow(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let more = new.size() - old.size();
        let _ = self.objgroup.charge_bytes(more).map_err(|_| AllocError)?;
        // SAFETY: forwarded: `ptr` came from this allocator with `old`, `new` is larger.
        unsafe { self.inner.grow(ptr, old, new) }.inspect_err(|_| self.objgroup.uncharge_bytes(more))
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let more = new.size() - old.size();
        let _ = self.objgroup.charge_bytes(more).map_err(|_| AllocError)?;
        // SAFETY: as in `grow`.
        unsafe { self.inner.grow_zeroed(ptr, old, new) }.inspect_err(|_| self.objgroup.uncharge_bytes(more))
    }

    unsafe fn shrink(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded: `ptr` came from this allocator with `old`, `new` is smaller.
        let q = unsafe { self.inner.shrink(ptr, old, new) }?;
        self.objgroup.uncharge_bytes(old.size() - new.size());
        Ok(q)
    }
}
