//! The object layer (layer 5, above groups and the charge engine): [`ObjGroup`]s, the
//! per-CPU object stock (`stock.rs`), byte charging through whole units, and the
//! reparenting of `ObjGroup`s when their group goes offline (protocol R). It adds
//! [`Group::obj_group`] to the group handle. The public docs are those of
//! [`chargetree::objgroup`](crate::objgroup).

pub(crate) mod stock;

use alloc_crate::boxed::Box;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::cpu::{CpuProvider, DefaultCpus};
use crate::engine::{ChargeFailure, ChargeOptions, Charged};
use crate::fallible::{OutOfMemory, try_box};
use crate::groups::domain::{Domain, Released, UPPER_OBJ};
use crate::groups::node::Node;
use crate::groups::refcount::{RefCount, Slot};
use crate::groups::{Group, GroupError, GroupId, reclaim_orphans};
use crate::stock::STOCK_SLOTS;
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;
use crate::sync::{dekker_fence, spin_loop};
use stock::ObjStock;

/// How many reparented `ObjGroup`s an offline waits for outside the topology flag (the rest,
/// if a group collected more, are waited for under it).
const REPARENT_BATCH: usize = 32;

/// The object layer's share of a tree: the object stock, the unit size and the `ObjGroup`
/// counts. The tree builds it beside the group layer's domain and installs a pointer to it
/// there (`UPPER_OBJ`), and the stock as the domain's upper per-CPU cache.
pub(crate) struct ObjTree<P: CpuProvider, const K: usize> {
    pub(crate) stock: ObjStock<P, K>,
    /// Bytes per unit.
    pub(crate) unit_bytes: usize,
    domain: *const Domain<P, K>,
    created: AtomicUsize,
    freed: AtomicUsize,
    stray_bytes: AtomicUsize,
}

// SAFETY: `domain` points at the domain whose allocation this state lives in; the rest is
// atomics and the stock (`Send + Sync`).
unsafe impl<P: CpuProvider, const K: usize> Send for ObjTree<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for ObjTree<P, K> {}

/// The object layer's counts, for `TreeStats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ObjCounts {
    pub(crate) created: usize,
    pub(crate) freed: usize,
    pub(crate) stray_bytes: usize,
}

impl<P: CpuProvider, const K: usize> ObjTree<P, K> {
    pub(crate) fn try_new(count: usize, unit_bytes: usize) -> Result<Self, OutOfMemory> {
        Ok(Self {
            stock: ObjStock::try_new(count, unit_bytes)?,
            unit_bytes,
            domain: ptr::null(),
            created: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            stray_bytes: AtomicUsize::new(0),
        })
    }

    /// Names the tree's domain.
    ///
    /// # Safety
    ///
    /// The domain outlives this state (they share one allocation), which does not move.
    pub(crate) unsafe fn bind(me: *mut Self, domain: *const Domain<P, K>) {
        // SAFETY: the caller's promise: `me` is this state's final address, unique for now.
        unsafe {
            ptr::addr_of_mut!((*me).domain).write(domain);
            ObjStock::bind(ptr::addr_of_mut!((*me).stock), domain);
        }
    }

    /// The object layer's state of the tree `domain` belongs to.
    #[inline]
    pub(crate) fn of(domain: &Domain<P, K>) -> &Self {
        // SAFETY: the tree installs a pointer to its `ObjTree<P, K>` at `UPPER_OBJ` before
        // the domain is shared, in the same allocation (`Domain::set_upper`).
        unsafe { &*domain.upper(UPPER_OBJ).cast::<Self>() }
    }

    /// The pointer the object layer's state was wired with, [`ObjTree::of`] as a pointer.
    #[inline]
    pub(crate) fn ptr_of(domain: &Domain<P, K>) -> NonNull<Self> {
        // SAFETY: installed by the tree before sharing (see `of`), never null.
        unsafe { NonNull::new_unchecked(domain.upper(UPPER_OBJ).cast::<Self>().cast_mut()) }
    }

    /// The domain as the pointer `bind` was given (the tree's own, with its provenance: the
    /// last share frees the tree through it), not one derived from a reference.
    #[inline]
    pub(crate) fn domain_ptr(&self) -> NonNull<Domain<P, K>> {
        // SAFETY: set by `bind`, never null.
        unsafe { NonNull::new_unchecked(self.domain.cast_mut()) }
    }

    #[inline(always)]
    pub(crate) fn domain(&self) -> &Domain<P, K> {
        // SAFETY: set by `bind`; the domain outlives this state.
        unsafe { &*self.domain }
    }

    pub(crate) fn counts(&self) -> ObjCounts {
        // ORDERING: Relaxed; statistics.
        ObjCounts {
            created: self.created.load(Ordering::Relaxed),
            freed: self.freed.load(Ordering::Relaxed),
            stray_bytes: self.stray_bytes.load(Ordering::Relaxed),
        }
    }
}

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
    tree: NonNull<ObjTree<P, K>>,
    /// The count's slot in the domain's shard arena.
    slot: Slot,
    /// Links of the owner group's list of `ObjGroup`s; only under the topology flag.
    prev: UnsafeCell<*mut ObjNode<P, K>>,
    next: UnsafeCell<*mut ObjNode<P, K>>,
    /// The node's header on the domain's released list.
    released: Released,
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
    ) -> Result<NonNull<Self>, OutOfMemory> {
        // SAFETY: the caller holds a reference.
        let g = unsafe { group.as_ref() };
        let arena = &g.domain().arena;
        let slot = arena.alloc()?;
        // SAFETY: the arena lives in the domain, which outlives the node; the slot is given
        // back in `free` or `discard`.
        let refs = unsafe { RefCount::new_in(arena, slot, initial) };
        let node = try_box(ObjNode {
            refs,
            group: AtomicPtr::new(group.as_ptr()),
            readers: AtomicUsize::new(0),
            nr_charged_bytes: AtomicUsize::new(0),
            tree: ObjTree::ptr_of(g.domain()),
            slot,
            prev: UnsafeCell::new(ptr::null_mut()),
            next: UnsafeCell::new(ptr::null_mut()),
            released: Released::new(Self::free_released),
        })
        .inspect_err(|_| arena.free(slot))?;
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
        let slot = node.slot;
        node.tree().domain().arena.free(slot);
        drop(node);
        // SAFETY: the reference `alloc` took.
        unsafe { Node::put(NonNull::new_unchecked(group)) };
    }

    #[inline]
    pub(crate) fn tree(&self) -> &ObjTree<P, K> {
        // SAFETY: the tree outlives every node that can reach it.
        unsafe { self.tree.as_ref() }
    }

    #[inline(always)]
    pub(crate) fn hint(&self) -> usize {
        self.tree().domain().hint()
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
        let units = self.park_bytes(bytes);
        if units > 0 {
            self.current_group().uncharge_counted(units);
        }
    }

    /// [`ObjNode::flush_bytes`] for a remote drainer: the whole units go straight to the
    /// counters, never into the calling CPU's unit stock (a drain must not refill the
    /// drainer's stock, nor evict its entries).
    pub(crate) fn flush_bytes_to_counters(&self, bytes: usize) {
        let units = self.park_bytes(bytes);
        if units > 0 {
            self.current_group().counter().uncharge_counted(units);
        }
    }

    /// Parks the sub-unit part of `bytes`; returns the whole units to uncharge.
    fn park_bytes(&self, bytes: usize) -> usize {
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
        units
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
        // Read before the push: once the node is on the list, another thread's reclamation
        // may free it (we are not pinned).
        let (domain, header) = {
            // SAFETY: ours until published (count zero, not yet on the list).
            let node = unsafe { this.as_ref() };
            (
                node.tree().domain_ptr(),
                // From the node's pointer, not a reference to the field: the free function
                // gets the whole node back from it (and deallocates through it).
                // SAFETY: `this` points to a live node.
                unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*this.as_ptr()).released)) },
            )
        };
        // SAFETY: the domain is alive (this unpublished node keeps its group, hence the root
        // and a share); no borrow of it is held here.
        unsafe { Domain::publish_released(domain, |d| d.push_released(header)) };
    }

    /// The released list's free function for `ObjGroup` nodes.
    ///
    /// # Safety
    ///
    /// As [`ObjNode::free`], for the node whose header `header` is.
    unsafe fn free_released(header: NonNull<Released>) {
        // SAFETY: the header is the `released` field of an `ObjNode` (the only headers this
        // function is installed in), so stepping back by its offset gives the node.
        let this = unsafe { header.byte_sub(core::mem::offset_of!(Self, released)) }.cast::<Self>();
        // SAFETY: forwarded.
        unsafe { Self::free(this) };
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
            let _topology = tree.domain().topology.lock();
            // ORDERING: Relaxed; stable under the topology flag, which reparenting holds.
            let owner = node.group.load(Ordering::Relaxed);
            // SAFETY: the flag is held; `owner` is alive (we hold a reference on it).
            unsafe { unlink_obj(NonNull::new_unchecked(owner), this) };
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
            // ORDERING: Relaxed; a statistic.
            tree.stray_bytes.fetch_add(stray, Ordering::Relaxed);
        }
        let slot = node.slot;
        // SAFETY: allocated by `alloc` with `Box::leak`, freed once, here.
        drop(unsafe { Box::from_raw(this.as_ptr()) });
        // The grace period has passed and the node is gone: nobody can touch its shards.
        tree.domain().arena.free(slot);
        // ORDERING: Relaxed; a statistic.
        tree.freed.fetch_add(1, Ordering::Relaxed);
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
        let cpu = tree.domain().cpus.current();
        if tree.stock.consume(cpu, self.node, bytes, false) {
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
            tree.stock.refill(cpu, self.node, rem, false, false);
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
        tree.stock.refill(tree.domain().cpus.current(), self.node, bytes, true, false);
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
        let cpu = tree.domain().cpus.current();
        if tree.stock.consume(cpu, self.node, bytes, true) {
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
        tree.stock.refill(tree.domain().cpus.current(), node, bytes, true, true);
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
        self.node().tree().stock.cached_bytes(self.node)
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

impl<P: CpuProvider, const K: usize> Group<P, K> {
    /// The `ObjGroup` to charge objects of this group through, in bytes: the group's own
    /// while it is online (created on first use), else the nearest online ancestor's
    /// (Linux's `get_obj_cgroup_from_memcg`). `None` once the tree is being dropped, or if
    /// the allocator refused the memory for a new one ([`Group::try_obj_group`] says which).
    ///
    /// Not for allocator paths (it pins the epoch and may allocate); take it once and keep
    /// the handle.
    #[must_use]
    pub fn obj_group(&self) -> Option<ObjGroup<P, K>> {
        self.try_obj_group().ok()
    }

    /// [`Group::obj_group`], with the reason of a failure: [`GroupError::TreeClosed`] once
    /// the tree is being dropped, [`GroupError::OutOfMemory`] if the allocator refused the
    /// memory for a new `ObjGroup` (nothing is left allocated then).
    pub fn try_obj_group(&self) -> Result<ObjGroup<P, K>, GroupError> {
        reclaim_orphans();
        let domain = self.node().domain();
        let _guard = domain.pin_internal();
        let mut n = Some(self.node_ptr());
        while let Some(xp) = n {
            // SAFETY: this group or an ancestor, kept alive by this handle.
            let x = unsafe { xp.as_ref() };
            // ORDERING: Acquire pairs with the Release store in `install_obj` and the AcqRel
            // swap at offline.
            if let Some(o) = NonNull::new(x.obj_active.load(Ordering::Acquire).cast::<ObjNode<P, K>>()) {
                // SAFETY: loaded under a guard from a pointer that owned a reference, so the
                // node is not freed before the guard is dropped (its free is deferred).
                let on = unsafe { o.as_ref() };
                if on.refs.tryget(on.hint()) {
                    // SAFETY: the reference just taken.
                    return Ok(unsafe { ObjGroup::from_node(o) });
                }
            } else if x.is_online() {
                if let Some(o) = install_obj(xp)? {
                    return Ok(o);
                }
                continue; // lost a race (another creator, or an offline): look again
            }
            n = x.parent;
        }
        Err(GroupError::TreeClosed)
    }
}

/// Creates `x`'s own `ObjGroup` and installs it as active, unless `x` went offline or got one
/// meanwhile. Returns a handle to the new one.
fn install_obj<P: CpuProvider, const K: usize>(
    xp: NonNull<Node<P, K>>,
) -> Result<Option<ObjGroup<P, K>>, GroupError> {
    // SAFETY: the caller's handle keeps `xp` (this group or an ancestor) alive.
    let x = unsafe { xp.as_ref() };
    let domain = x.domain();
    // Two references: the group's active one and the returned handle.
    // SAFETY: the caller's handle keeps `x` referenced (it is this group or an ancestor), so
    // the reference `alloc` takes on it is legal; the tree outlives the node.
    let obj = unsafe { ObjNode::alloc(xp, 2) }.map_err(|_| GroupError::OutOfMemory)?;
    let installed = {
        let _topology = domain.topology.lock();
        // ORDERING: Relaxed; both are only written under the topology flag.
        let ok = x.is_online()
            && !domain.closing.load(Ordering::Relaxed)
            && x.obj_active.load(Ordering::Relaxed).is_null();
        if ok {
            // SAFETY: topology flag held; `obj` is new.
            unsafe { link_obj(xp, obj) };
            // ORDERING: Release pairs with the Acquire load in `obj_group`.
            x.obj_active.store(obj.as_ptr().cast(), Ordering::Release);
        }
        ok
    };
    if installed {
        // ORDERING: Relaxed; a statistic.
        ObjTree::of(domain).created.fetch_add(1, Ordering::Relaxed);
        // SAFETY: one of the two initial references is the handle's.
        Ok(Some(unsafe { ObjGroup::from_node(obj) }))
    } else {
        // SAFETY: never shared; drop it together with the reference it took on `x`.
        unsafe { ObjNode::discard(obj) };
        Ok(None)
    }
}

/// The head of `node`'s list of `ObjGroup`s (the object layer's field of the node).
///
/// # Safety
///
/// The topology flag is held.
unsafe fn list_head<P: CpuProvider, const K: usize>(node: NonNull<Node<P, K>>) -> *mut ObjNode<P, K> {
    // SAFETY: the caller holds the flag, which guards the field; the node is alive.
    unsafe { (*node.as_ptr()).obj_list.with(|h| (*h).cast()) }
}

/// Sets the head of `node`'s list of `ObjGroup`s.
///
/// # Safety
///
/// The topology flag is held.
unsafe fn set_list_head<P: CpuProvider, const K: usize>(node: NonNull<Node<P, K>>, head: *mut ObjNode<P, K>) {
    // SAFETY: as in `list_head`.
    unsafe { (*node.as_ptr()).obj_list.with_mut(|h| *h = head.cast()) };
}

/// Links `obj` at the head of group `this`'s `ObjGroup` list.
///
/// # Safety
///
/// The topology flag is held; `obj` is alive and not linked.
unsafe fn link_obj<P: CpuProvider, const K: usize>(this: NonNull<Node<P, K>>, obj: NonNull<ObjNode<P, K>>) {
    // SAFETY: caller holds the topology flag, which guards every list link; the nodes touched
    // are alive (linked ones are not freed before they unlink under the flag).
    unsafe {
        let head = list_head(this);
        obj.as_ref().next.with_mut(|n| *n = head);
        obj.as_ref().prev.with_mut(|p| *p = ptr::null_mut());
        if !head.is_null() {
            (*head).prev.with_mut(|p| *p = obj.as_ptr());
        }
        set_list_head(this, obj.as_ptr());
    }
}

/// Unlinks `obj` from group `this`'s `ObjGroup` list.
///
/// # Safety
///
/// The topology flag is held and `obj` is on `this`'s list.
unsafe fn unlink_obj<P: CpuProvider, const K: usize>(this: NonNull<Node<P, K>>, obj: NonNull<ObjNode<P, K>>) {
    // SAFETY: as in `link_obj`.
    unsafe {
        let (prev, next) = (obj.as_ref().prev.with(|p| *p), obj.as_ref().next.with(|n| *n));
        if prev.is_null() {
            set_list_head(this, next);
        } else {
            (*prev).next.with_mut(|n| *n = next);
        }
        if !next.is_null() {
            (*next).prev.with_mut(|p| *p = prev);
        }
    }
}

/// What an offline moved off its group, under the topology flag: the references on the dying
/// group its `ObjGroup`s gave up, the `ObjGroup`s whose readers are still to be waited for
/// (protocol R, step 3), and the group's own active `ObjGroup`, whose reference the offline
/// kills.
pub(crate) struct Reparented<P: CpuProvider, const K: usize> {
    moved: usize,
    pending: arrayvec::ArrayVec<NonNull<ObjNode<P, K>>, REPARENT_BATCH>,
    active: *mut ObjNode<P, K>,
}

/// Points every `ObjGroup` on `this`'s list at `parent` and moves the list to the parent
/// (Linux's `memcg_reparent_objcgs`), and takes the group's active `ObjGroup` away. The
/// caller then releases the flag and calls [`finish_reparent`]. Beyond [`REPARENT_BATCH`]
/// reparented `ObjGroup`s, the rest's readers are waited for here.
///
/// # Safety
///
/// The topology flag is held; the caller holds references on `this` and `parent`, and is
/// pinned (so that the returned `ObjGroup`s are not freed before it unpins).
pub(crate) unsafe fn reparent_locked<P: CpuProvider, const K: usize>(
    this: NonNull<Node<P, K>>,
    parent: NonNull<Node<P, K>>,
) -> Reparented<P, K> {
    let mut r = Reparented { moved: 0, pending: arrayvec::ArrayVec::new(), active: ptr::null_mut() };
    // SAFETY: the flag is held (caller), so the lists are ours to walk and change; every
    // listed `ObjGroup` is alive (it unlinks under the flag before being freed).
    unsafe {
        let mut o = list_head(this);
        let mut tail = ptr::null_mut();
        while let Some(obj) = NonNull::new(o) {
            let old = obj.as_ref().reparent(parent);
            debug_assert!(old == this, "an ObjGroup on a group's list points at that group");
            if r.pending.try_push(obj).is_err() {
                obj.as_ref().wait_for_readers();
            }
            r.moved += 1;
            tail = o;
            o = obj.as_ref().next.with(|n| *n);
        }
        if let Some(tail) = NonNull::new(tail) {
            // Splice the whole list in front of the parent's.
            let head = list_head(this);
            let phead = list_head(parent);
            tail.as_ref().next.with_mut(|n| *n = phead);
            if !phead.is_null() {
                (*phead).prev.with_mut(|p| *p = tail.as_ptr());
            }
            set_list_head(parent, head);
            set_list_head(this, ptr::null_mut());
        }
    }
    r.active = take_active(this);
    r
}

/// Takes `this` group's active `ObjGroup` away (at offline, or the root's at the tree's
/// drop); the caller kills its reference with [`finish_reparent`]. The caller holds the
/// topology flag or is the tree's drop.
pub(crate) fn take_active<P: CpuProvider, const K: usize>(this: NonNull<Node<P, K>>) -> *mut ObjNode<P, K> {
    // SAFETY: the caller holds a reference on `this`.
    let node = unsafe { this.as_ref() };
    // ORDERING: AcqRel; pairs with the Acquire load in `Group::obj_group`.
    node.obj_active.swap(ptr::null_mut(), Ordering::AcqRel).cast()
}

/// The rest of an offline's reparenting, after the topology flag is released (still
/// pinned): waits for the readers of the reparented `ObjGroup`s (protocol R, step 3), puts
/// the references they held on `this`, and kills the group's reference on its own
/// `ObjGroup` (Linux's `percpu_ref_kill` on the objcg), from which on its zero can be seen.
///
/// # Safety
///
/// `r` came from [`reparent_locked`] (or a `Reparented::active_only`) on `this`; the caller
/// holds a reference on `this` and has stayed pinned since.
pub(crate) unsafe fn finish_reparent<P: CpuProvider, const K: usize>(
    this: NonNull<Node<P, K>>,
    r: Reparented<P, K>,
) {
    for obj in &r.pending {
        // SAFETY: reparented under the flag; we are pinned since before, so it is not freed.
        unsafe { obj.as_ref() }.wait_for_readers();
    }
    for _ in 0..r.moved {
        // SAFETY: each reparented `ObjGroup` handed us the reference it held on this node;
        // the caller's handle keeps the count above zero.
        unsafe { Node::put(this) };
    }
    if let Some(active) = NonNull::new(r.active) {
        // SAFETY: the reference `obj_active` owned.
        if unsafe { active.as_ref() }.refs.kill() {
            // SAFETY: that was the last reference.
            unsafe { ObjNode::release(active) };
        }
    }
}

impl<P: CpuProvider, const K: usize> Reparented<P, K> {
    /// Nothing reparented, only the active `ObjGroup` `active` to kill (the root's).
    pub(crate) fn active_only(active: *mut ObjNode<P, K>) -> Self {
        Self { moved: 0, pending: arrayvec::ArrayVec::new(), active }
    }
}
