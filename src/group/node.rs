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

use super::events::{Event, Events};
use super::refcount::RefCount;
use super::tree::TreeInner;
use super::{GroupError, GroupId, GroupSpec};
use crate::counter::Counter;
use crate::cpu::CpuProvider;
use crate::fallible::{try_box, try_box_str};
use crate::objgroup::ObjNode;
use crate::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use crate::sync::cell::UnsafeCell;

/// How many reparented `ObjGroup`s an offline waits for outside the topology flag (the rest,
/// if a group collected more, are waited for under it).
const REPARENT_BATCH: usize = 32;

/// The `ObjGroup`s an offline reparented and still has to wait for.
type Reparented<P, const K: usize> = arrayvec::ArrayVec<NonNull<ObjNode<P, K>>, REPARENT_BATCH>;

pub(crate) const ONLINE: u8 = 0;
pub(crate) const OFFLINE: u8 = 1;

/// Links of the child lists; only touched with the tree's `topology` flag held.
pub(crate) struct Topo<P: CpuProvider, const K: usize> {
    pub(crate) first_child: *mut Node<P, K>,
    pub(crate) next: *mut Node<P, K>,
    pub(crate) prev: *mut Node<P, K>,
    pub(crate) online_children: usize,
}

/// A group's heap node.
pub(crate) struct Node<P: CpuProvider, const K: usize> {
    pub(crate) counter: Counter<'static>,
    pub(crate) refs: RefCount,
    pub(crate) tree: NonNull<TreeInner<P, K>>,
    pub(crate) parent: Option<NonNull<Node<P, K>>>,
    pub(crate) id: GroupId,
    pub(crate) name: Option<Box<str>>,
    pub(crate) state: AtomicU8,
    pub(crate) events: Events,
    pub(crate) topo: UnsafeCell<Topo<P, K>>,
    /// Link of the tree's released list (a Treiber stack).
    pub(crate) next_released: AtomicPtr<Node<P, K>>,
    /// Head of the list of `ObjGroup`s pointing at this group (its own and inherited ones);
    /// only touched under the topology flag.
    pub(crate) objgroups: UnsafeCell<*mut ObjNode<P, K>>,
    /// The group's own active `ObjGroup` (one reference) while online; null after offline.
    pub(crate) active_obj: AtomicPtr<ObjNode<P, K>>,
}

impl<P: CpuProvider, const K: usize> Node<P, K> {
    /// Allocates a node with `initial` references. Every allocation is fallible: on
    /// [`GroupError::OutOfMemory`] nothing is left allocated.
    ///
    /// # Safety
    ///
    /// `tree` must outlive the node, and so must `parent` (the caller gives the node one
    /// reference on it, dropped in [`Node::free`]).
    pub(crate) unsafe fn alloc(
        tree: NonNull<TreeInner<P, K>>,
        parent: Option<NonNull<Node<P, K>>>,
        id: GroupId,
        spec: &GroupSpec<'_>,
        initial: usize,
        shards: usize,
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
            Some(name) => Some(try_box_str(name).map_err(oom)?),
            None => None,
        };
        let refs = RefCount::try_new(initial, shards).map_err(oom)?;
        let node = try_box(Node {
            counter,
            refs,
            tree,
            parent,
            id,
            name,
            state: AtomicU8::new(ONLINE),
            events: Events::default(),
            topo: UnsafeCell::new(Topo {
                first_child: ptr::null_mut(),
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                online_children: 0,
            }),
            next_released: AtomicPtr::new(ptr::null_mut()),
            objgroups: UnsafeCell::new(ptr::null_mut()),
            active_obj: AtomicPtr::new(ptr::null_mut()),
        })
        .map_err(oom)?;
        // Never reborrowed as a `Box` again until `free`: children keep `&'static`
        // references into it.
        Ok(NonNull::from(Box::leak(node)))
    }

    #[inline]
    pub(crate) fn tree(&self) -> &TreeInner<P, K> {
        // SAFETY: the tree outlives every node (it is freed after the root, which is freed
        // after every other node).
        unsafe { self.tree.as_ref() }
    }

    #[inline]
    pub(crate) fn parent(&self) -> Option<&Node<P, K>> {
        // SAFETY: this node owns a reference on its parent until it is freed.
        self.parent.map(|p| unsafe { &*p.as_ptr() })
    }

    /// The shard hint for this node's reference count: the current CPU.
    #[inline(always)]
    pub(crate) fn hint(&self) -> usize {
        self.tree().cpus.current().unwrap_or(0)
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
            let tree = node.tree();
            tree.note_released(node.id);
            if !tree.is_detached() {
                let _detached = tree.push_released(p);
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
        let tree = {
            // SAFETY: ours until published below (count zero, not yet on the list); the tree
            // outlives it. The borrow ends inside this block: once the node is on the list,
            // another thread's reclamation may free it (we are not pinned), so nothing of it
            // is read after the push.
            let node = unsafe { this.as_ref() };
            node.tree().note_released(node.id);
            node.tree
        };
        // SAFETY: the tree is alive (this unpublished node keeps its root, hence a share);
        // no borrow of it is held here.
        unsafe { TreeInner::publish_released(tree, |t| t.push_released(this)) };
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
        let tree_ptr = node.tree;
        let parent = node.parent;
        let id = node.id;
        {
            // SAFETY: the tree outlives its nodes.
            let tree = unsafe { tree_ptr.as_ref() };
            let _topology = tree.topology.lock();
            // SAFETY: the topology flag is held, which guards every `topo`.
            unsafe { Self::unlink(this) };
        }
        // SAFETY: the node came from `Box::leak` in `alloc` and is freed exactly once, here.
        drop(unsafe { Box::from_raw(this.as_ptr()) });
        // SAFETY: the tree outlives its nodes; the root (freed last) gives up its ownership
        // of the tree below, after which `tree_ptr` is not used.
        let tree = unsafe { tree_ptr.as_ref() };
        tree.note_freed(id);
        if parent.is_none() {
            // SAFETY: the root is freed last; its ownership share of the tree ends here.
            unsafe { TreeInner::release_owner(tree_ptr) };
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

    /// Links `obj` at the head of `this` group's `ObjGroup` list.
    ///
    /// # Safety
    ///
    /// The topology flag is held; `obj` is alive and not linked.
    pub(crate) unsafe fn link_obj(this: NonNull<Self>, obj: NonNull<ObjNode<P, K>>) {
        // SAFETY: caller holds the topology flag, which guards every list link; the nodes
        // touched are alive (linked ones are not freed before they unlink under the flag).
        unsafe {
            let head = (*this.as_ptr()).objgroups.with(|h| *h);
            obj.as_ref().next.with_mut(|n| *n = head);
            obj.as_ref().prev.with_mut(|p| *p = ptr::null_mut());
            if !head.is_null() {
                (*head).prev.with_mut(|p| *p = obj.as_ptr());
            }
            (*this.as_ptr()).objgroups.with_mut(|h| *h = obj.as_ptr());
        }
    }

    /// Unlinks `obj` from `this` group's `ObjGroup` list.
    ///
    /// # Safety
    ///
    /// The topology flag is held and `obj` is on `this`'s list.
    pub(crate) unsafe fn unlink_obj(this: NonNull<Self>, obj: NonNull<ObjNode<P, K>>) {
        // SAFETY: as in `link_obj`.
        unsafe {
            let (prev, next) = (obj.as_ref().prev.with(|p| *p), obj.as_ref().next.with(|n| *n));
            if prev.is_null() {
                (*this.as_ptr()).objgroups.with_mut(|h| *h = next);
            } else {
                (*prev).next.with_mut(|n| *n = next);
            }
            if !next.is_null() {
                (*next).prev.with_mut(|p| *p = prev);
            }
        }
    }

    /// Points every `ObjGroup` on `this`'s list at `parent` and moves the list to the
    /// parent (Linux's `memcg_reparent_objcgs`). Returns how many references on `this` the
    /// `ObjGroup`s gave up, and the `ObjGroup`s whose readers the caller still has to wait
    /// for, after releasing the flag, before it puts those references (protocol R, step 3;
    /// beyond [`REPARENT_BATCH`] of them, the rest are waited for here).
    ///
    /// # Safety
    ///
    /// The topology flag is held; the caller holds references on `this` and `parent`, and
    /// is pinned (so that the returned `ObjGroup`s are not freed before it unpins).
    unsafe fn reparent_objs(this: NonNull<Self>, parent: NonNull<Self>) -> (usize, Reparented<P, K>) {
        let mut moved = 0;
        let mut pending = Reparented::new();
        // SAFETY: the flag is held (caller), so the lists are ours to walk and change; every
        // listed `ObjGroup` is alive (it unlinks under the flag before being freed).
        unsafe {
            let mut o = (*this.as_ptr()).objgroups.with(|h| *h);
            let mut tail = ptr::null_mut();
            while let Some(obj) = NonNull::new(o) {
                let old = obj.as_ref().reparent(parent);
                debug_assert!(old == this, "an ObjGroup on a group's list points at that group");
                if pending.try_push(obj).is_err() {
                    obj.as_ref().wait_for_readers();
                }
                moved += 1;
                tail = o;
                o = obj.as_ref().next.with(|n| *n);
            }
            if let Some(tail) = NonNull::new(tail) {
                // Splice the whole list in front of the parent's.
                let head = (*this.as_ptr()).objgroups.with(|h| *h);
                let phead = (*parent.as_ptr()).objgroups.with(|h| *h);
                tail.as_ref().next.with_mut(|n| *n = phead);
                if !phead.is_null() {
                    (*phead).prev.with_mut(|p| *p = tail.as_ptr());
                }
                (*parent.as_ptr()).objgroups.with_mut(|h| *h = head);
                (*this.as_ptr()).objgroups.with_mut(|h| *h = ptr::null_mut());
            }
        }
        (moved, pending)
    }

    /// Takes this node offline: refuses if it is the root,, already offline, or has online
    /// children; otherwise marks it offline, zeroes its protection, and drops the base
    /// reference. The caller holds a reference, so the node is not released here.
    pub(crate) fn offline(this: NonNull<Self>) -> Result<(), GroupError> {
        // SAFETY: the caller holds a reference.
        let node = unsafe { this.as_ref() };
        let tree = node.tree();
        let Some(parent) = node.parent() else { return Err(GroupError::Root) };
        let moved;
        let pending;
        let active;
        // Pinned until the reparented `ObjGroup`s' readers are waited for below: none of
        // them can be freed meanwhile (their frees go through the epoch).
        let guard = tree.pin_internal();
        {
            let _topology = tree.topology.lock();
            // ORDERING: Relaxed; state changes only under the topology flag, which we hold.
            if node.state.load(Ordering::Relaxed) != ONLINE {
                return Err(GroupError::Offline);
            }
            // SAFETY: topology flag held.
            let online_children = node.topo.with(|t| unsafe { (*t).online_children });
            if online_children > 0 {
                return Err(GroupError::HasOnlineChildren { online_children });
            }
            // A dying group stops claiming protection for good (Linux's css_offline sets
            // min/low to 0), before the state says so: a reader that sees OFFLINE sees zero
            // protection, and `set_min`/`set_low` are refused from now on. (The counter's
            // writer flag nests inside the topology flag, never the other way round.)
            node.counter.retire_protection();
            // ORDERING: Release pairs with the Acquire in `is_online`.
            node.state.store(OFFLINE, Ordering::Release);
            // SAFETY: topology flag held; the parent is alive (referenced by this node).
            parent.topo.with_mut(|t| unsafe { (*t).online_children -= 1 });
            // SAFETY: topology flag held; we hold a reference on this node, which holds one
            // on its parent.
            (moved, pending) = unsafe { Self::reparent_objs(this, node.parent.expect("not the root")) };
            // ORDERING: AcqRel; pairs with the Acquire load in `Group::obj_group`.
            active = node.active_obj.swap(ptr::null_mut(), Ordering::AcqRel);
        }
        for obj in pending {
            // SAFETY: reparented above; we are pinned since before, so it is not freed.
            unsafe { obj.as_ref() }.wait_for_readers();
        }
        drop(guard);
        for _ in 0..moved {
            // SAFETY: each reparented `ObjGroup` handed us the reference it held on this
            // node; the caller's handle keeps the count above zero.
            unsafe { Self::put(this) };
        }
        if let Some(active) = NonNull::new(active) {
            // The group's reference on its own `ObjGroup`: killing drops it, and from now on
            // the `ObjGroup`'s zero can be detected (Linux's percpu_ref_kill on the objcg).
            // SAFETY: the reference `active_obj` owned.
            if unsafe { active.as_ref() }.refs.kill() {
                // SAFETY: that was the last reference.
                unsafe { ObjNode::release(active) };
            }
        }
        tree.note_offlined();
        if node.refs.kill() {
            // SAFETY: the count reached zero (impossible while the caller holds a handle,
            // but handled uniformly).
            unsafe { Self::release(this) };
        }
        Ok(())
    }
}
