//! The heap node behind a [`Group`](super::Group) handle, its topology links and its
//! lifecycle transitions (create, offline, release, free).
//!
//! # Lifecycle
//!
//! | state | entered by | what holds the node | what is refused |
//! |-------|-----------|---------------------|-----------------|
//! | online | creation | the base reference (the group's membership in the tree), handles, children, stored pointers | nothing |
//! | offline | [`Group::offline`](super::Group::offline) | handles, children, stored pointers | new children, `tryget_online`, a second offline |
//! | released | the last `put` | nothing: the node is queued on the tree's released list | every `tryget` |
//! | freed | [`free`](Node::free) after an epoch grace period | — | — |
//!
//! Offline kills the reference count (switching it from per-CPU shards to one word) and
//! drops the base reference. Release happens on whatever thread drops the last reference,
//! possibly inside an allocator, so it only pushes the node onto a lock-free intrusive list
//! (no allocation, no lock). The next non-allocator operation on the tree hands the queued
//! nodes to the epoch collector, which frees each after every reader pinned before it has
//! unpinned. Freeing unlinks the node from its parent's child list and drops the child's
//! reference on the parent, so parents are freed after their children, the root last.
//!
//! # Topology lock
//!
//! Child lists and the online-children counts are guarded by the tree's `topology` flag,
//! held only for a few pointer updates and never while allocating or calling user code. A
//! node stays linked until it is *freed*, so a walker that holds a reference on a node can
//! always find that node's siblings and children under the flag.

use alloc_crate::boxed::Box;
use core::ptr::{self, NonNull};

use super::domain::{Domain, Released};
use super::events::{Event, Events};
use super::refcount::{RefCount, Slot};
use super::{GroupError, GroupId, GroupSpec};
use crate::counter::Counter;
use crate::cpu::CpuProvider;
use crate::fallible::{try_box, try_box_str};
use crate::stock::units::StockOwner;
use crate::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use crate::sync::cell::UnsafeCell;

pub(crate) const ONLINE: u8 = 0;
pub(crate) const OFFLINE: u8 = 1;

/// Links of the child lists; only touched with the tree's `topology` flag held.
pub(crate) struct Topo<P: CpuProvider, const K: usize> {
    pub(crate) first_child: *mut Node<P, K>,
    pub(crate) next: *mut Node<P, K>,
    pub(crate) prev: *mut Node<P, K>,
    pub(crate) online_children: usize,
}

/// A group's name, behind one thin pointer in the node.
pub(crate) struct NodeName(Box<str>);

/// A group's heap node.
pub(crate) struct Node<P: CpuProvider, const K: usize> {
    pub(crate) counter: Counter<'static>,
    pub(crate) refs: RefCount,
    pub(crate) domain: NonNull<Domain<P, K>>,
    pub(crate) parent: Option<NonNull<Node<P, K>>>,
    pub(crate) id: GroupId,
    /// The node's slot number in the domain's shard arena (its reference count holds the
    /// slot's shards): its dense index, the unit stock's entry is `slot_index % K`. 32 bits
    /// (with `state` beside it) keep the node at six lines on 64-bit targets.
    slot_index: u32,
    /// Boxed once more, so that an unnamed group pays one word, not two.
    name: Option<Box<NodeName>>,
    pub(crate) state: AtomicU8,
    pub(crate) events: Events,
    pub(crate) topo: UnsafeCell<Topo<P, K>>,
    /// The node's header on the domain's released list.
    released: Released,
    /// The object layer's: the head of this group's list of `ObjGroup`s, only touched under
    /// the topology flag. Opaque here (the group layer never reads it); null when the node
    /// is freed (every `ObjGroup` on it holds a reference on the node).
    pub(crate) obj_list: UnsafeCell<*mut ()>,
    /// The object layer's: the group's own active `ObjGroup` while online. Opaque here.
    pub(crate) obj_active: AtomicPtr<()>,
}

impl<P: CpuProvider, const K: usize> Node<P, K> {
    /// The group's name, if it was given one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref().map(|n| &*n.0)
    }

    /// The node's slot in the shard arena.
    fn slot(&self) -> Slot {
        self.refs.slot(self.slot_index as usize)
    }

    /// Allocates a node with `initial` references. Every allocation is fallible: on
    /// [`GroupError::OutOfMemory`] nothing is left allocated.
    ///
    /// # Safety
    ///
    /// `domain` must outlive the node, and so must `parent` (the caller gives the node one
    /// reference on it, dropped in [`Node::free`]).
    pub(crate) unsafe fn alloc(
        domain: NonNull<Domain<P, K>>,
        parent: Option<NonNull<Node<P, K>>>,
        id: GroupId,
        spec: &GroupSpec<'_>,
        initial: usize,
    ) -> Result<NonNull<Node<P, K>>, GroupError> {
        let parent_counter: Option<&'static Counter<'static>> = parent.map(|p| {
            // SAFETY: the parent node outlives this node (caller's obligation: the child owns
            // a reference on it until `free`), so extending the borrow of its counter to
            // `'static` never lets the child's counter reach freed memory.
            unsafe { &*ptr::addr_of!((*p.as_ptr()).counter) }
        });
        let mut counter = Counter::new(parent_counter);
        if !spec.protection {
            counter = counter.without_protection();
        }
        if !spec.failcnt {
            counter = counter.without_failcnt();
        }
        counter.set_max(spec.max).map_err(GroupError::Limit)?;
        counter.set_high(spec.high).map_err(GroupError::Limit)?;
        counter.set_min(spec.min).map_err(GroupError::Limit)?;
        counter.set_low(spec.low).map_err(GroupError::Limit)?;
        let oom = |_| GroupError::OutOfMemory;
        let name = match spec.name {
            Some(name) => Some(try_box(NodeName(try_box_str(name).map_err(oom)?)).map_err(oom)?),
            None => None,
        };
        // SAFETY: the caller's obligation: the domain outlives the node.
        let arena = unsafe { &domain.as_ref().arena };
        let slot = arena.alloc().map_err(oom)?;
        let Ok(slot_index) = u32::try_from(slot.index) else {
            // Four billion groups live at once: no memory for more.
            arena.free(slot);
            return Err(GroupError::OutOfMemory);
        };
        // SAFETY: the arena lives in the domain, which outlives the count; the slot is given
        // back in `free_now`, after the node's grace period.
        let refs = unsafe { RefCount::new_in(arena, slot, initial) };
        let node = try_box(Node {
            counter,
            refs,
            domain,
            parent,
            id,
            slot_index,
            name,
            state: AtomicU8::new(ONLINE),
            events: Events::default(),
            topo: UnsafeCell::new(Topo {
                first_child: ptr::null_mut(),
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                online_children: 0,
            }),
            released: Released::new(Self::free_released),
            obj_list: UnsafeCell::new(ptr::null_mut()),
            obj_active: AtomicPtr::new(ptr::null_mut()),
        })
        .map_err(|e| {
            arena.free(slot);
            oom(e)
        })?;
        // Never reborrowed as a `Box` again until `free`: children keep `&'static`
        // references into it.
        Ok(NonNull::from(Box::leak(node)))
    }

    #[inline]
    pub(crate) fn domain(&self) -> &Domain<P, K> {
        // SAFETY: the domain outlives every node (it is freed after the root, which is freed
        // after every other node).
        unsafe { self.domain.as_ref() }
    }

    /// A handle to the node at `this`; the caller must know the count is non-zero (it holds
    /// a reference on this node or a descendant).
    ///
    /// # Safety
    ///
    /// `this` is a pointer the tree stores for the node (from its allocation), and the node
    /// is referenced by the caller, directly or through a descendant.
    pub(crate) unsafe fn handle(this: NonNull<Self>) -> super::Group<P, K> {
        // SAFETY: referenced by the caller, hence alive.
        let node = unsafe { this.as_ref() };
        node.refs.get(node.hint());
        // SAFETY: the reference just taken is the handle's.
        unsafe { super::Group::from_node(this) }
    }

    /// Frees a node that was allocated but never linked nor shared (a refused creation).
    ///
    /// # Safety
    ///
    /// `this` came from [`Node::alloc`] and nobody else ever saw it.
    pub(crate) unsafe fn discard(this: NonNull<Self>) {
        // SAFETY: never shared (caller's obligation): ours to free.
        let node = unsafe { Box::from_raw(this.as_ptr()) };
        let slot = node.slot();
        let domain = node.domain;
        drop(node);
        // SAFETY: the domain outlives its nodes; nobody can touch the slot's shards.
        unsafe { domain.as_ref() }.arena.free(slot);
    }

    #[inline]
    pub(crate) fn parent(&self) -> Option<&Node<P, K>> {
        // SAFETY: this node owns a reference on its parent until it is freed.
        self.parent.map(|p| unsafe { &*p.as_ptr() })
    }

    /// The shard hint for this node's reference count: the current CPU.
    #[inline(always)]
    pub(crate) fn hint(&self) -> usize {
        self.domain().hint()
    }

    #[inline]
    pub(crate) fn is_online(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `offline`, so a reader that sees
        // OFFLINE also sees the zeroed protection.
        self.state.load(Ordering::Acquire) == ONLINE
    }

    /// Whether `ancestor` is this node or one of its ancestors.
    pub(crate) fn is_descendant_of(&self, ancestor: &Node<P, K>) -> bool {
        let mut n = Some(self);
        while let Some(x) = n {
            if core::ptr::eq(x, ancestor) {
                return true;
            }
            n = x.parent();
        }
        false
    }

    /// Raises `event` on this node: local count here, hierarchical count here and on every
    /// ancestor.
    pub(crate) fn raise(&self, event: Event) {
        self.events.raise_local(event);
        let mut n = Some(self);
        while let Some(x) = n {
            x.events.raise_hier(event);
            n = x.parent();
        }
    }

    /// Drops one reference, releasing the node if it was the last.
    ///
    /// # Safety
    ///
    /// The caller owns a reference on `this` and gives it up.
    #[inline]
    pub(crate) unsafe fn put(this: NonNull<Self>) {
        // SAFETY: the caller owns a reference, so the node is alive.
        let node = unsafe { this.as_ref() };
        if node.refs.put(node.hint()) {
            // SAFETY: that was the last reference; we own the node now.
            unsafe { Self::release(this) };
        }
    }

    /// [`Node::put`] for code running inside the epoch collector (a deferred `free`). If this
    /// was the last reference:
    ///
    /// * while the tree handle exists, the node is queued but not pumped. A pump from here
    ///   would pin inside the collector's own pinned region, where the epoch cannot advance
    ///   far enough to free anything; the tree's next reclamation frees it (the running
    ///   `reclaim_pumped` loop, the one `Tree::drop` runs after setting `detached`, or
    ///   the orphan list's);
    /// * once the tree is detached, the node is freed at once, and so is each ancestor whose
    ///   last reference that frees. Crossbeam runs deferred functions from any pin of the
    ///   collector (every 128th pin, a thread's exit), not only from our pumps, so a node
    ///   queued there could wait for a pump that never comes. Those pins are never on an
    ///   allocator path (nothing an allocator reaches pins). Freeing without a grace period
    ///   is sound here because nothing reads a group node through a borrowed pointer once the
    ///   tree is detached: borrowed reads need a [`Guard`](crate::epoch::Guard) from the
    ///   tree handle (which is gone), and the crate's own pinned walks hold a reference on
    ///   the node they start from, hence on every ancestor, and protocol R readers take a
    ///   reference before use.
    ///
    /// # Safety
    ///
    /// As [`Node::put`], and the caller runs inside the epoch collector of `this`'s tree and
    /// does not touch the tree after this call (the tree may be freed with its root).
    pub(crate) unsafe fn put_in_collector(this: NonNull<Self>) {
        let mut next = Some(this);
        while let Some(p) = next.take() {
            // SAFETY: the caller owns a reference on `this`; each ancestor after it is kept by
            // the reference the node freed just before held on it.
            let node = unsafe { p.as_ref() };
            if !node.refs.put(node.hint()) {
                return;
            }
            let domain = node.domain();
            domain.note_released(node.id);
            if !domain.is_detached() {
                // SAFETY: `p` points to the live node; the header pointer is taken from it (not
                // from a reference to the field) so the free function may deallocate through it.
                let header = unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*p.as_ptr()).released)) };
                let _detached = domain.push_released(header);
                return;
            }
            // SAFETY: released, never queued, and unreachable (see above); the parent's
            // reference it held is handed back to us.
            next = unsafe { Self::free_now(p) };
        }
    }

    /// The last reference is gone: queue the node for freeing. Allocation-free and lock-free,
    /// so it may run inside an allocator.
    ///
    /// # Safety
    ///
    /// The reference count of `this` reached zero and nobody else will release it.
    #[cold]
    pub(crate) unsafe fn release(this: NonNull<Self>) {
        let (domain, header) = {
            // SAFETY: ours until published below (count zero, not yet on the list); the tree
            // outlives it. The borrow ends inside this block: once the node is on the list,
            // another thread's reclamation may free it (we are not pinned), so nothing of it
            // is read after the push.
            let node = unsafe { this.as_ref() };
            node.domain().note_released(node.id);
            // SAFETY: as above; the header pointer keeps the provenance of the whole node
            // (the free function deallocates the node through it).
            (node.domain, unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*this.as_ptr()).released)) })
        };
        // SAFETY: the domain is alive (this unpublished node keeps its root, hence a share);
        // no borrow of it is held here.
        unsafe { Domain::publish_released(domain, |d| d.push_released(header)) };
    }

    /// The released list's free function for nodes.
    ///
    /// # Safety
    ///
    /// As [`Node::free`], for the node whose header `header` is.
    unsafe fn free_released(header: NonNull<Released>) {
        // SAFETY: the header is the `released` field of a node (the only headers this
        // function is installed in), so stepping back by its offset gives the node.
        let this = unsafe { header.byte_sub(core::mem::offset_of!(Self, released)) }.cast::<Self>();
        // SAFETY: forwarded.
        unsafe { Self::free(this) };
    }

    /// Frees a released node after the grace period: unlinks it, drops it, and puts the
    /// reference it held on its parent. Runs from the epoch collector.
    ///
    /// # Safety
    ///
    /// `this` was released, handed to the collector once, and the grace period has passed:
    /// no reference and no pinned reader can reach it any more.
    pub(crate) unsafe fn free(this: NonNull<Self>) {
        // SAFETY: the caller's obligations are ours; we run inside the collector.
        if let Some(parent) = unsafe { Self::free_now(this) } {
            // SAFETY: the reference the freed node held on its parent, given up now; we run
            // inside the collector.
            unsafe { Self::put_in_collector(parent) };
        }
    }

    /// Frees `this` and returns its parent, whose reference the freed node held and the
    /// caller must now put (the root returns `None` and gives up the tree's ownership share
    /// instead).
    ///
    /// # Safety
    ///
    /// `this` was released, nobody can reach it any more (after a grace period, or in a
    /// detached tree, see [`Node::put_in_collector`]), and it is freed once.
    unsafe fn free_now(this: NonNull<Self>) -> Option<NonNull<Self>> {
        // SAFETY: still allocated (we free it below); exclusively ours (caller's obligation).
        let node = unsafe { this.as_ref() };
        let domain_ptr = node.domain;
        let parent = node.parent;
        let id = node.id;
        let slot = node.slot();
        {
            // SAFETY: the domain outlives its nodes.
            let domain = unsafe { domain_ptr.as_ref() };
            let _topology = domain.topology.lock();
            // SAFETY: the topology flag is held, which guards every `topo`.
            unsafe { Self::unlink(this) };
        }
        // SAFETY: the node came from `Box::leak` in `alloc` and is freed exactly once, here.
        drop(unsafe { Box::from_raw(this.as_ptr()) });
        // SAFETY: the domain outlives its nodes; the root (freed last) gives up its ownership
        // of the tree below, after which `domain_ptr` is not used.
        let domain = unsafe { domain_ptr.as_ref() };
        // The grace period has passed and the node is gone: nobody can touch its shards.
        domain.arena.free(slot);
        domain.note_freed(id);
        if parent.is_none() {
            // SAFETY: the root is freed last; its ownership share of the tree ends here.
            unsafe { Domain::release_owner(domain_ptr) };
        }
        parent
    }

    /// Links `this` as the first child of its parent and counts it online there.
    ///
    /// # Safety
    ///
    /// The topology flag is held; `this` has a parent and is not linked.
    pub(crate) unsafe fn link(this: NonNull<Self>) {
        // SAFETY: caller holds the topology flag; all nodes touched are alive (the parent is
        // referenced by `this`, its first child is linked hence not freed).
        unsafe {
            let parent = (*this.as_ptr()).parent.expect("link needs a parent").as_ptr();
            let first = (*parent).topo.with(|t| (*t).first_child);
            (*this.as_ptr()).topo.with_mut(|t| {
                (*t).next = first;
                (*t).prev = ptr::null_mut();
            });
            if !first.is_null() {
                (*first).topo.with_mut(|t| (*t).prev = this.as_ptr());
            }
            (*parent).topo.with_mut(|t| {
                (*t).first_child = this.as_ptr();
                (*t).online_children += 1;
            });
        }
    }

    /// Unlinks `this` from its parent's child list (no-op for the root).
    ///
    /// # Safety
    ///
    /// The topology flag is held and `this` is linked.
    unsafe fn unlink(this: NonNull<Self>) {
        // SAFETY: caller holds the topology flag; neighbours are linked hence alive.
        unsafe {
            let Some(parent) = (*this.as_ptr()).parent else {
                return;
            };
            let (prev, next) = (*this.as_ptr()).topo.with(|t| ((*t).prev, (*t).next));
            if prev.is_null() {
                (*parent.as_ptr()).topo.with_mut(|t| (*t).first_child = next);
            } else {
                (*prev).topo.with_mut(|t| (*t).next = next);
            }
            if !next.is_null() {
                (*next).topo.with_mut(|t| (*t).prev = prev);
            }
        }
    }

    /// Step 1 of taking this node offline, under the topology flag: refuses if it is the
    /// root, already offline, or has online children; otherwise zeroes its protection for
    /// good, marks it offline and uncounts it from its parent's online children. The caller
    /// (the tree, which also moves the layers above off the node before releasing the flag)
    /// then calls [`Node::finish_offline`].
    ///
    /// # Safety
    ///
    /// The topology flag is held and the caller holds a reference on `self`.
    pub(crate) unsafe fn offline_locked(&self) -> Result<(), GroupError> {
        let Some(parent) = self.parent() else { return Err(GroupError::Root) };
        // ORDERING: Relaxed; state changes only under the topology flag, which we hold.
        if self.state.load(Ordering::Relaxed) != ONLINE {
            return Err(GroupError::Offline);
        }
        // SAFETY: topology flag held.
        let online_children = self.topo.with(|t| unsafe { (*t).online_children });
        if online_children > 0 {
            return Err(GroupError::HasOnlineChildren { online_children });
        }
        // A dying group stops claiming protection for good (Linux's css_offline sets min/low
        // to 0), before the state says so: a reader that sees OFFLINE sees zero protection,
        // and `set_min`/`set_low` are refused from now on. (The counter's writer flag nests
        // inside the topology flag, never the other way round.)
        self.counter.retire_protection();
        self.mark_offline();
        // SAFETY: topology flag held; the parent is alive (referenced by this node).
        parent.topo.with_mut(|t| unsafe { (*t).online_children -= 1 });
        Ok(())
    }

    /// Marks the node offline (the root's at the tree's drop; others' in `offline_locked`).
    /// The caller holds the topology flag.
    pub(crate) fn mark_offline(&self) {
        // ORDERING: Release pairs with the Acquire in `is_online`.
        self.state.store(OFFLINE, Ordering::Release);
    }

    /// The last step of taking a node offline, after the flag is released: counts it and
    /// kills its reference count, dropping the base reference (Linux's `percpu_ref_kill`).
    /// The caller holds a reference, so the node is not released here.
    pub(crate) fn finish_offline(this: NonNull<Self>) {
        // SAFETY: the caller holds a reference.
        let node = unsafe { this.as_ref() };
        node.domain().note_offlined();
        if node.refs.kill() {
            // SAFETY: the count reached zero (impossible while the caller holds a handle,
            // but handled uniformly).
            unsafe { Self::release(this) };
        }
    }
}

impl<P: CpuProvider, const K: usize> StockOwner for Node<P, K> {
    #[inline(always)]
    fn counter(&self) -> &Counter<'_> {
        &self.counter
    }

    #[inline(always)]
    fn stock_index(&self) -> usize {
        self.slot_index as usize
    }

    #[inline]
    fn get_ref(&self, cpu: usize) {
        self.refs.get(cpu);
    }

    #[inline]
    unsafe fn put_ref(this: NonNull<Self>) {
        // SAFETY: forwarded.
        unsafe { Self::put(this) };
    }
}
