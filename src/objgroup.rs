//! Byte-granular object charging (Linux's `obj_cgroup` and object stock, `obj_cgroup_charge()`
//! and `refill_obj_stock()` in `mm/memcontrol.c`).
//!
//! An [`ObjGroup`] stands between objects and their group. Objects hold a reference to the
//! `ObjGroup` (not to the group); the `ObjGroup` points at a group and owns one reference on
//! it. Charges are in bytes: whole units are charged to the group through the unit engine
//! (stock, limits, reclaim), and the sub-unit remainder is parked in this CPU's *object
//! stock* (one cached `ObjGroup` and its bytes per CPU) or, when that stock is flushed, in
//! the `ObjGroup`'s own `nr_charged_bytes`. So for every `ObjGroup` at quiescence:
//!
//! > `unit × units charged through it = object bytes + stocked bytes + nr_charged_bytes`
//!
//! (Linux's O1), and when it is released, its objects are gone and no stock caches it, so
//! `nr_charged_bytes` is a whole number of units, which are then uncharged from the group it
//! points at by then (O2).
//!
//! # Reparenting (Linux's `memcg_reparent_objcgs`)
//!
//! When a group goes offline, every `ObjGroup` on its list (its own active one and those
//! inherited from its removed descendants) is pointed at the parent, and the list is spliced
//! onto the parent's, in one critical section of the tree's topology flag. Each `ObjGroup`'s
//! reference moves with the pointer (get on the parent, put on the dying group), so the
//! dying group is released as soon as its own handles are gone, while objects charged
//! through its `ObjGroup`s live on; their uncharges land on the parent, which already counted
//! those charges hierarchically. The dying group keeps a residue that is never uncharged,
//! and is freed with it (Linux's O3: reparenting moves ownership, not charges).
//!
//! # Protocol R (reader of `ObjGroup → group` vs reparenting)
//!
//! Byte charging runs inside allocators, so it may not pin an epoch. A reader of the group
//! pointer instead announces itself on the `ObjGroup`:
//!
//! | step | reader (`current_group`) | reparenter (`reparent`) |
//! |------|--------------------------|-------------------------|
//! | 1 | `readers.fetch_add(1)` (SeqCst) | `get(parent)`; `old = group.swap(parent)` (SeqCst) |
//! | 2 | `g = group.load()` (SeqCst) | (loom only: `fence(SeqCst)`) |
//! | 3 | `get(g)`: a handle, legal because the `ObjGroup`'s reference on `g` cannot be put yet | wait until `readers == 0` (SeqCst loads), after releasing the topology flag, pinned |
//! | 4 | `readers.fetch_sub(1)` (Release) | `put(old)` |
//!
//! Either the reader's load sees the parent, or the reparenter's wait sees the reader and
//! waits for step 4; so `old` is never put while a reader may still be taking a handle on
//! it. Reader sections are a handful of instructions (the long work happens on the handle,
//! after step 4), so the wait is short; it happens outside the topology flag (the
//! reparenter stays pinned, so the `ObjGroup`s it waits on are not freed meanwhile), so a
//! reader preempted in its section delays only this offline, never other topology changes.
//!
//! # Objects and their references
//!
//! Each live object should own a reference on its `ObjGroup` (so the uncharge finds it).
//! Taking it with a clone costs an atomic read-modify-write per object, and giving it back
//! another: about as much as the byte charge itself costs without them.
//! [`ObjGroup::charge_object`] and [`ObjGroup::uncharge_object`] do both jobs in one visit
//! to the object stock, which also caches spare references (taken
//! [`OBJ_REF_BATCH`](crate::stock::OBJ_REF_BATCH) at a time, at most two batches per CPU,
//! all given back when the stock is drained): in the steady state an object costs no atomic
//! read-modify-write at all. The reference is the same kind [`ObjGroup::into_raw`] returns,
//! so the two styles mix.
//!
//! ```
//! use chargetree::group::{GroupSpec, Tree};
//! use chargetree::objgroup::ObjGroup;
//!
//! let tree = Tree::new();
//! let tenant = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
//! let objs = tenant.obj_group().unwrap();
//! // An allocation of 200 bytes: charge it and store the reference in its header.
//! let header = objs.charge_object(200).unwrap().object;
//! // One 4 KiB unit is charged, plus what this CPU's unit stock pre-charged for later.
//! assert!(tenant.counter().usage() >= 1);
//! // Its free: only the header is needed.
//! // SAFETY: `header` came from `charge_object` on this tree's `ObjGroup`, once.
//! unsafe { <ObjGroup>::uncharge_object(header, 200) };
//! // Draining the stocks returns the cached unit and the spare references.
//! let _ = tree.drain_all(&tenant);
//! assert_eq!(tenant.counter().usage(), 0);
//! assert_eq!(objs.ref_count(), 2); // the handle and the group's own
//! ```

use alloc_crate::boxed::Box;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::cpu::{CpuProvider, DefaultCpus};
use crate::engine::{ChargeFailure, ChargeOptions, Charged};
use crate::fallible::{OutOfMemory, try_box};
use crate::group::node::Node;
use crate::group::refcount::RefCount;
use crate::group::tree::TreeInner;
use crate::group::{Group, GroupId};
use crate::stock::STOCK_SLOTS;
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;
use crate::sync::{dekker_fence, spin_loop};

/// Bytes per unit unless the tree is configured otherwise (units are 4 KiB pages).
pub const DEFAULT_UNIT_BYTES: usize = 4096;

/// The largest unit a tree accepts (1 GiB, the largest huge page): remainders are below a
/// unit, so parked and cached byte counts stay far from overflow even on 32-bit targets.
pub const MAX_UNIT_BYTES: usize = 1 << 30;

/// The heap node behind an [`ObjGroup`].
pub(crate) struct ObjNode<P: CpuProvider, const K: usize> {
    pub(crate) refs: RefCount,
    /// The current owner; owns one reference on it (protocol R).
    group: AtomicPtr<Node<P, K>>,
    readers: AtomicUsize,
    /// Byte remainders flushed from object stocks, already charged in whole units.
    nr_charged_bytes: AtomicUsize,
    tree: NonNull<TreeInner<P, K>>,
    /// Links of the owner group's list of `ObjGroup`s; only under the topology flag.
    pub(crate) prev: UnsafeCell<*mut ObjNode<P, K>>,
    pub(crate) next: UnsafeCell<*mut ObjNode<P, K>>,
    pub(crate) next_released: AtomicPtr<ObjNode<P, K>>,
}

// SAFETY: shared state is atomics or guarded by the topology flag; the group pointer owns a
// reference (sendable like a `Group`).
unsafe impl<P: CpuProvider, const K: usize> Send for ObjNode<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for ObjNode<P, K> {}

impl<P: CpuProvider, const K: usize> ObjNode<P, K> {
    /// A new node pointing at `group` with `initial` references, taking a reference on
    /// `group`. The caller links it into the group's list (or discards it). `Err` (with
    /// nothing taken or left allocated) if the allocator refuses.
    ///
    /// # Safety
    ///
    /// The caller holds a reference on `group` (so a plain get is legal) and the tree
    /// outlives the node.
    pub(crate) unsafe fn alloc(
        group: NonNull<Node<P, K>>,
        initial: usize,
        shards: usize,
    ) -> Result<NonNull<Self>, OutOfMemory> {
        // SAFETY: the caller holds a reference.
        let g = unsafe { group.as_ref() };
        let refs = RefCount::try_new(initial, shards)?;
        let node = try_box(ObjNode {
            refs,
            group: AtomicPtr::new(group.as_ptr()),
            readers: AtomicUsize::new(0),
            nr_charged_bytes: AtomicUsize::new(0),
            tree: g.tree,
            prev: UnsafeCell::new(ptr::null_mut()),
            next: UnsafeCell::new(ptr::null_mut()),
            next_released: AtomicPtr::new(ptr::null_mut()),
        })?;
        // The node's reference on its group, taken once nothing can fail any more.
        g.refs.get(g.hint());
        Ok(NonNull::from(Box::leak(node)))
    }

    /// Frees a node that was never shared, putting the reference it took on its group.
    ///
    /// # Safety
    ///
    /// `this` came from `alloc` and was never linked nor handed out.
    pub(crate) unsafe fn discard(this: NonNull<Self>) {
        // SAFETY: never shared: ours to free (caller's obligation).
        let node = unsafe { Box::from_raw(this.as_ptr()) };
        // ORDERING: Relaxed; nobody else has seen the node.
        let group = node.group.load(Ordering::Relaxed);
        drop(node);
        // SAFETY: the reference `alloc` took.
        unsafe { Node::put(NonNull::new_unchecked(group)) };
    }

    #[inline]
    pub(crate) fn tree(&self) -> &TreeInner<P, K> {
        // SAFETY: the tree outlives every node that can reach it.
        unsafe { self.tree.as_ref() }
    }

    #[inline(always)]
    pub(crate) fn hint(&self) -> usize {
        self.tree().cpus.current().unwrap_or(0)
    }

    /// A handle to the current owner group (protocol R, reader side). Allocation-free and
    /// lock-free, safe inside an allocator.
    pub(crate) fn current_group(&self) -> Group<P, K> {
        // ORDERING: SeqCst, step 1 of protocol R; pairs with the reparenter's SeqCst swap and
        // its SeqCst loads of `readers` (store-buffering).
        self.readers.fetch_add(1, Ordering::SeqCst);
        dekker_fence();
        // ORDERING: SeqCst, step 2 of protocol R.
        let g = self.group.load(Ordering::SeqCst);
        // SAFETY: the `ObjGroup` owns a reference on `g`, which the reparenter does not put
        // before `readers` drops back (protocol R), so `g` is alive and its count non-zero.
        let node = unsafe { &*g };
        node.refs.get(node.hint());
        // ORDERING: Release: the reparenter's later load of 0 orders our reads of `g` before
        // its put.
        self.readers.fetch_sub(1, Ordering::Release);
        // SAFETY: the reference just taken.
        unsafe { Group::from_node(NonNull::new_unchecked(g)) }
    }

    /// The current owner's id (racy: it may change right after).
    fn current_group_id(&self) -> GroupId {
        self.current_group().id()
    }

    /// Points this node at `parent` (protocol R, reparenter side, step 1). Returns the
    /// reference the node held on its previous owner; the caller puts it only after
    /// [`ObjNode::wait_for_readers`] (step 3). Caller holds the topology flag and a reference
    /// on `parent`.
    pub(crate) fn reparent(&self, parent: NonNull<Node<P, K>>) -> NonNull<Node<P, K>> {
        // SAFETY: the caller holds a reference on `parent`.
        let p = unsafe { parent.as_ref() };
        p.refs.get(p.hint());
        // ORDERING: SeqCst, step 1 of protocol R (reparenter).
        let old = self.group.swap(parent.as_ptr(), Ordering::SeqCst);
        dekker_fence();
        // SAFETY: a node's group pointer is never null.
        unsafe { NonNull::new_unchecked(old) }
    }

    /// Step 3 of protocol R: waits until no reader that may have loaded the previous owner
    /// is still taking a handle on it. Called after [`ObjNode::reparent`], without the
    /// topology flag (a preempted reader must not stall every topology change).
    pub(crate) fn wait_for_readers(&self) {
        // ORDERING: SeqCst loads, step 3 of protocol R: pairs with the reader's SeqCst
        // increment; the Acquire half orders the reader's work before our put.
        while self.readers.load(Ordering::SeqCst) != 0 {
            spin_loop();
        }
    }

    /// Parks `bytes` of already-charged remainder: whole units are uncharged from the
    /// current owner, the rest is added to `nr_charged_bytes`; if the parked bytes then make
    /// whole units, those are uncharged too (Linux leaves them parked until the `ObjGroup`
    /// is released; returning them early keeps usage within a unit of the truth).
    pub(crate) fn flush_bytes(&self, bytes: usize) {
        let unit = self.tree().unit_bytes;
        let (mut units, rem) = (bytes / unit, bytes % unit);
        if rem > 0 {
            // ORDERING: Relaxed; a sum that only has to be exact at quiescence (RMWs compose).
            let mut parked = self.nr_charged_bytes.fetch_add(rem, Ordering::Relaxed) + rem;
            while parked >= unit {
                let whole = parked / unit * unit;
                // ORDERING: Relaxed; as above. Only whole units leave, so O1 is kept.
                match self.nr_charged_bytes.compare_exchange_weak(
                    parked,
                    parked - whole,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        units += whole / unit;
                        break;
                    }
                    Err(now) => parked = now,
                }
            }
        }
        if units > 0 {
            self.current_group().uncharge_counted(units);
        }
    }

    /// Takes the parked remainder (to seed an object stock).
    pub(crate) fn take_charged_bytes(&self) -> usize {
        // ORDERING: Relaxed fast check; the swap is the RMW that matters.
        if self.nr_charged_bytes.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.nr_charged_bytes.swap(0, Ordering::Relaxed)
    }

    /// Drops one reference, releasing the node (queued, allocation-free) if it was the last.
    ///
    /// # Safety
    ///
    /// The caller owns a reference on `this` and gives it up.
    #[inline]
    pub(crate) unsafe fn put(this: NonNull<Self>) {
        // SAFETY: the caller owns a reference.
        let node = unsafe { this.as_ref() };
        if node.refs.put(node.hint()) {
            // SAFETY: that was the last reference.
            unsafe { Self::release(this) };
        }
    }

    /// Drops `n` references at once (a cache giving back a batch), releasing the node if
    /// they were the last.
    ///
    /// # Safety
    ///
    /// The caller owns `n` references on `this` and gives them up.
    #[inline]
    pub(crate) unsafe fn put_many(this: NonNull<Self>, n: usize) {
        // SAFETY: the caller owns references.
        let node = unsafe { this.as_ref() };
        if node.refs.put_many(node.hint(), n) {
            // SAFETY: those were the last references.
            unsafe { Self::release(this) };
        }
    }

    /// # Safety
    ///
    /// The count of `this` reached zero and nobody else releases it.
    #[cold]
    pub(crate) unsafe fn release(this: NonNull<Self>) {
        // SAFETY: ours until published (count zero, not yet on the list). Read before the
        // push: once the node is on the list, another thread's reclamation may free it (we
        // are not pinned).
        let tree = unsafe { this.as_ref() }.tree;
        // SAFETY: the tree is alive (this unpublished node keeps its group, hence the root
        // and a share); no borrow of it is held here.
        unsafe { TreeInner::publish_released(tree, |t| t.push_released_obj(this)) };
    }

    /// Frees a released node after the grace period: uncharges its parked whole units from
    /// its final owner, unlinks it from the owner's list and puts the owner.
    ///
    /// # Safety
    ///
    /// `this` was released and handed to the collector once; the grace period has passed.
    pub(crate) unsafe fn free(this: NonNull<Self>) {
        // SAFETY: exclusively ours, still allocated.
        let node = unsafe { this.as_ref() };
        let tree = node.tree();
        // The owner cannot change any more: reparenting only visits nodes on a group's list,
        // and we unlink under the same flag.
        let owner = {
            let _topology = tree.topology.lock();
            // ORDERING: Relaxed; stable under the topology flag, which reparenting holds.
            let owner = node.group.load(Ordering::Relaxed);
            // SAFETY: the flag is held; `owner` is alive (we hold a reference on it).
            unsafe { Node::unlink_obj(NonNull::new_unchecked(owner), this) };
            owner
        };
        // ORDERING: Relaxed; no object and no stock can add to it any more.
        let parked = node.nr_charged_bytes.load(Ordering::Relaxed);
        let unit = tree.unit_bytes;
        // O2: a whole number of units. A remainder means the caller uncharged different
        // byte counts than it charged; it is counted as forgiven on the owner below.
        let (units, stray) = (parked / unit, parked % unit);
        // SAFETY: a node's owner pointer is never null.
        let owner_ptr = unsafe { NonNull::new_unchecked(owner) };
        // The reference this node held on its owner is given up with `put_in_collector`
        // below, not by dropping a handle: a handle's drop would pump reclamation from inside
        // the collector, where nothing can be freed (the collector's own pin holds the epoch).
        // SAFETY: borrowed from that reference, which is alive until the put.
        let owner = core::mem::ManuallyDrop::new(unsafe { Group::from_node(owner_ptr) });
        if units > 0 {
            owner.counter().uncharge_counted(units);
        }
        if stray > 0 {
            tree.note_stray_bytes(stray);
        }
        // SAFETY: allocated by `alloc` with `Box::leak`, freed once, here.
        drop(unsafe { Box::from_raw(this.as_ptr()) });
        tree.note_obj_freed();
        // SAFETY: the owner reference above; we run inside the collector, driven by a
        // reclamation loop of this tree.
        unsafe { Node::put_in_collector(owner_ptr) };
    }
}

/// What [`ObjGroup::charge_object`] returns: the object's reference and what the charge
/// reported.
#[derive(Debug)]
#[must_use = "the object's reference must be kept and given back with `ObjGroup::uncharge_object`"]
pub struct ObjectCharge {
    /// The object's reference on its `ObjGroup`, raw (as [`ObjGroup::into_raw`]): store it
    /// in the object, give it back with [`ObjGroup::uncharge_object`].
    pub object: NonNull<()>,
    /// What the charge reported (over `high`, forced).
    pub charged: Charged,
}

/// A handle to an object group: one reference. Clone takes one, drop puts one.
///
/// Objects charged in bytes should each hold a reference (a clone, or
/// [`ObjGroup::into_raw`] stored in the object), so that the `ObjGroup` outlives them and
/// their uncharges find it.
pub struct ObjGroup<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    node: NonNull<ObjNode<P, K>>,
    _owns: PhantomData<ObjNode<P, K>>,
}

// SAFETY: the node is `Send + Sync`; the handle owns a reference.
unsafe impl<P: CpuProvider, const K: usize> Send for ObjGroup<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for ObjGroup<P, K> {}

impl<P: CpuProvider, const K: usize> ObjGroup<P, K> {
    /// # Safety
    ///
    /// The caller owns one reference on `node` and gives it to the handle.
    pub(crate) unsafe fn from_node(node: NonNull<ObjNode<P, K>>) -> Self {
        Self { node, _owns: PhantomData }
    }

    #[inline]
    pub(crate) fn node(&self) -> &ObjNode<P, K> {
        // SAFETY: the handle owns a reference.
        unsafe { self.node.as_ref() }
    }

    /// Gives up the handle, keeping its reference in the returned pointer (to store in an
    /// object, e.g. an allocation header). Reclaim it with [`ObjGroup::from_raw`].
    #[must_use]
    pub fn into_raw(self) -> NonNull<()> {
        let p = self.node.cast();
        core::mem::forget(self);
        p
    }

    /// Re-creates a handle from [`ObjGroup::into_raw`].
    ///
    /// # Safety
    ///
    /// `raw` came from `into_raw` on an `ObjGroup<P, K>` with the same `P` and `K`, and each
    /// `into_raw` is matched by exactly one `from_raw`.
    #[must_use]
    pub unsafe fn from_raw(raw: NonNull<()>) -> Self {
        // SAFETY: forwarded to the caller: a reference `into_raw` kept.
        unsafe { Self::from_node(raw.cast()) }
    }

    /// Charges `bytes`: from this CPU's object stock if it caches this `ObjGroup` with
    /// enough bytes (the fast path: a few plain loads and stores), else whole units through
    /// the group's charge engine with the remainder parked in the object stock.
    #[inline(always)]
    pub fn charge_bytes(&self, bytes: usize) -> Result<Charged, ChargeFailure> {
        self.charge_bytes_with(bytes, ChargeOptions::DEFAULT)
    }

    /// [`ObjGroup::charge_bytes`] with charge options for the unit charge.
    #[inline(always)]
    pub fn charge_bytes_with(&self, bytes: usize, options: ChargeOptions) -> Result<Charged, ChargeFailure> {
        let tree = self.node().tree();
        let cpu = tree.cpus.current();
        if tree.stocks.consume_obj(cpu, self.node, bytes, false) {
            return Ok(Charged::default());
        }
        self.charge_bytes_slow(cpu, bytes, options)
    }

    #[cold]
    #[inline(never)]
    fn charge_bytes_slow(
        &self,
        cpu: Option<usize>,
        bytes: usize,
        options: ChargeOptions,
    ) -> Result<Charged, ChargeFailure> {
        let tree = self.node().tree();
        let unit = tree.unit_bytes;
        let units = bytes / unit + usize::from(bytes % unit != 0);
        let group = self.node().current_group();
        let charged = group.charge_with(units, options).map_err(|e| match e {
            ChargeFailure::TooLarge { .. } => ChargeFailure::TooLarge { requested: bytes },
            other => other,
        })?;
        // What the rounding charged beyond `bytes` (computed without `units * unit`, which
        // can overflow for absurd sizes).
        let rem = if bytes % unit == 0 { 0 } else { unit - bytes % unit };
        if rem > 0 {
            // The remainder is charged but not used: park it, without uncharging whole units
            // (Linux's `allow_uncharge = false`), so the next small charge finds it.
            tree.stocks.refill_obj(cpu, self.node, rem, false, false);
        }
        Ok(charged)
    }

    /// Uncharges `bytes` into this CPU's object stock; once the stock holds more than a unit,
    /// all its whole units are returned to the group that owns this `ObjGroup` by then (the
    /// parent, after reparenting). Uncharging more than was charged is clamped and counted
    /// on the counters (never asserted: the bytes may reach them much later).
    #[inline(always)]
    pub fn uncharge_bytes(&self, bytes: usize) {
        let tree = self.node().tree();
        tree.stocks.refill_obj(tree.cpus.current(), self.node, bytes, true, false);
    }

    /// Charges `bytes` for one object and takes the object's reference on this `ObjGroup`,
    /// returned raw (as [`ObjGroup::into_raw`]) for the object to keep: what
    /// `charge_bytes(bytes)` then `clone().into_raw()` do, in one visit to this CPU's object
    /// stock and without an atomic read-modify-write when the stock has a spare reference
    /// (see the module docs). Give both back with [`ObjGroup::uncharge_object`]. On failure
    /// nothing is charged and no reference is taken.
    #[inline(always)]
    pub fn charge_object(&self, bytes: usize) -> Result<ObjectCharge, ChargeFailure> {
        self.charge_object_with(bytes, ChargeOptions::DEFAULT)
    }

    /// [`ObjGroup::charge_object`] with charge options for the unit charge.
    #[inline(always)]
    pub fn charge_object_with(
        &self,
        bytes: usize,
        options: ChargeOptions,
    ) -> Result<ObjectCharge, ChargeFailure> {
        let tree = self.node().tree();
        let cpu = tree.cpus.current();
        if tree.stocks.consume_obj(cpu, self.node, bytes, true) {
            return Ok(ObjectCharge { object: self.node.cast(), charged: Charged::default() });
        }
        let charged = self.charge_bytes_slow(cpu, bytes, options)?;
        // The object's reference, taken after the charge succeeded.
        let object = self.clone().into_raw();
        Ok(ObjectCharge { object, charged })
    }

    /// Uncharges `bytes` of an object and gives back the reference it held: what
    /// `from_raw(object)`, `uncharge_bytes(bytes)` and a drop do, in one visit to this CPU's
    /// object stock; the reference is kept there as a spare when the stock caches this
    /// `ObjGroup`. Needs nothing but the object's stored reference (an allocator's `dealloc`
    /// has only the header). Uncharging more than was charged is clamped and counted, as in
    /// [`ObjGroup::uncharge_bytes`].
    ///
    /// # Safety
    ///
    /// `object` is a reference from [`ObjGroup::charge_object`] or [`ObjGroup::into_raw`]
    /// on an `ObjGroup<P, K>` with the same `P` and `K`, not given back before (each is given
    /// back exactly once, by this or by [`ObjGroup::from_raw`]).
    #[inline(always)]
    pub unsafe fn uncharge_object(object: NonNull<()>, bytes: usize) {
        let node: NonNull<ObjNode<P, K>> = object.cast();
        // SAFETY: `object` owns a reference (caller's obligation), so the node is alive.
        let tree = unsafe { node.as_ref() }.tree();
        // The reference is given up inside (kept as a spare or put), after the bytes.
        tree.stocks.refill_obj(tree.cpus.current(), node, bytes, true, true);
    }

    /// The number of references on this `ObjGroup`: handles, objects' references, the
    /// group's own while it is online, and each CPU's object-stock entry with its spares (at
    /// most `1 + 2 × OBJ_REF_BATCH` per CPU). A racy statistic while the group is online
    /// (the count is spread over shards then), exact once it is offline and quiescent.
    #[must_use]
    pub fn ref_count(&self) -> usize {
        self.node().refs.count()
    }

    /// A handle to the group this `ObjGroup` currently charges.
    #[must_use]
    pub fn group(&self) -> Group<P, K> {
        self.node().current_group()
    }

    /// Bytes parked in the `ObjGroup` (flushed stock remainders). A racy statistic.
    #[must_use]
    pub fn parked_bytes(&self) -> usize {
        // ORDERING: Relaxed; statistic.
        self.node().nr_charged_bytes.load(Ordering::Relaxed)
    }

    /// Whether both handles refer to the same `ObjGroup`.
    #[must_use]
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.node == other.node
    }

    /// Bytes of this `ObjGroup` cached in the object stocks of all CPUs (charged in whole
    /// units, not yet handed out). A racy statistic.
    #[must_use]
    pub fn cached_bytes(&self) -> usize {
        self.node().tree().stocks.cached_bytes(self.node)
    }
}

impl<P: CpuProvider, const K: usize> Clone for ObjGroup<P, K> {
    #[inline]
    fn clone(&self) -> Self {
        self.node().refs.get(self.node().hint());
        // SAFETY: the reference just taken.
        unsafe { Self::from_node(self.node) }
    }
}

impl<P: CpuProvider, const K: usize> Drop for ObjGroup<P, K> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the handle's reference, given up.
        unsafe { ObjNode::put(self.node) };
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for ObjGroup<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjGroup")
            .field("group", &self.node().current_group_id())
            .field("parked_bytes", &self.parked_bytes())
            .finish_non_exhaustive()
    }
}
