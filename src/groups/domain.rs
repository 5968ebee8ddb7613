//! The group layer's share of a tree (its *domain*): the CPU provider, the epoch collector,
//! the topology flag, the unit stock, the shard arena, ids and lifecycle counts, and the
//! released list with the reclamation that frees what is on it. Nodes point here; the
//! [`Tree`](crate::group::Tree) one layer up embeds a domain as the first field of its
//! shared state, beside the engine's and the object layer's, and wires them together.
//!
//! The layers above reach their own state through pointers the tree installs once, before
//! the domain is shared ([`Domain::set_upper`]), and the object layer's per-CPU byte stock
//! is drained, closed and checked with the unit stock through the small [`UpperCache`]
//! trait: the group layer never names what sits above it.
//!
//! # Released list and reclamation
//!
//! Whatever reaches its last reference (a group's node, an `ObjGroup`'s) may do so inside an
//! allocator, so it only pushes its [`Released`] header onto a lock-free intrusive list (a
//! Treiber stack: no allocation, no lock). The next non-allocator operation hands the list to
//! the epoch collector ([`Domain::reclaim_with`]), which runs each header's `free` function
//! after every reader pinned before it has unpinned.
//!
//! # Ownership
//!
//! A domain is owned jointly by the tree handle and the root node (the root is freed after
//! every other node), counted in `owners`, plus one share while the domain is on the orphan
//! list (`orphans.rs`, protocol Q). The last share frees the tree's whole allocation with the
//! function the tree installed.

use alloc_crate::boxed::Box;
use core::ptr::{self, NonNull};

use super::GroupId;
use super::node::Node;
use super::orphans::OrphanLink;
use super::refcount::ShardArena;
use crate::cpu::{CpuProvider, SlotHook};
use crate::epoch::{Epoch, Guard};
use crate::fallible::OutOfMemory;
use crate::stock::units::UnitStock;
use crate::sync::SpinFlag;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering, fence};

/// How many pin–flush rounds in a row that free nothing [`Domain::reclaim_pumped`] tries
/// before giving up: each round lets the epoch advance once, and a node is freed two
/// advances after it was deferred (rounds that free something do not count: freeing a child
/// can release its parent, and so on up the tree). Smaller under loom, where every round
/// multiplies the interleavings to explore.
const PUMP_ROUNDS: usize = if cfg!(loom) { 16 } else { 64 };

/// Notified when groups are released (last reference gone) and freed (memory returned).
///
/// For metrics and tests ("each group is freed exactly once"). `released` may run on any
/// thread that drops a last reference, including inside a global allocator: it must not
/// allocate, block, or call back into the tree. `freed` runs on whichever thread runs the
/// epoch collector, outside any allocator path. Ids are dense ([`GroupId`]), so a table
/// indexed by id (sized for the groups you expect) needs no hashing.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use chargetree::group::{GroupId, GroupSpec, Observer, Tree, TreeConfig};
///
/// #[derive(Default)]
/// struct Freed(AtomicUsize);
/// struct Count(Arc<Freed>);
/// impl Observer for Count {
///     fn freed(&self, _: GroupId) {
///         self.0.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// let freed = Arc::new(Freed::default());
/// let tree = Tree::with_config(TreeConfig::new().observer(Count(freed.clone())));
/// let g = tree.root().create_child(GroupSpec::new()).unwrap();
/// g.offline().unwrap();
/// drop(g);
/// tree.reclaim();
/// assert_eq!(freed.0.load(Ordering::Relaxed), 1);
/// ```
pub trait Observer: Send + Sync {
    /// The group's last reference was dropped (it is queued for freeing).
    fn released(&self, id: GroupId) {
        let _ = id;
    }
    /// The group's memory was freed.
    fn freed(&self, id: GroupId) {
        let _ = id;
    }
}

/// The header of anything that goes through the released list: its link and the function
/// that frees it (handed the header's address, which is also the object's: the header is
/// its first field).
pub(crate) struct Released {
    next: AtomicPtr<Released>,
    free: unsafe fn(NonNull<Released>),
}

impl Released {
    /// A header whose object is freed by `free`.
    pub(crate) fn new(free: unsafe fn(NonNull<Released>)) -> Self {
        Self { next: AtomicPtr::new(ptr::null_mut()), free }
    }
}

/// A per-CPU cache of a layer above groups (the object layer's byte stock), drained and
/// closed with the unit stock. Every method is called outside allocator paths except
/// `drain_own` (a context's exit).
pub(crate) trait UpperCache<P: CpuProvider, const K: usize>: Sync {
    /// Returns every CPU's cached entries whose group is in `root`'s subtree (all for `None`)
    /// to the groups, waiting for a concurrent drain of this cache instead of skipping.
    fn drain_all(&self, root: Option<&Node<P, K>>);
    /// The same, for this CPU only; skipped if the slot is held.
    fn drain_local(&self, cpu: Option<usize>);
    /// The context holding `cpu` goes away and empties its slot for good.
    fn drain_own(&self, cpu: usize);
    /// Stops new entries ([`PerCpu::close`](crate::stock::slots::PerCpu::close)).
    fn close(&self) -> bool;
    /// Whether nothing is cached and no owner is inside.
    fn is_drained(&self) -> bool;
    /// Forgets the exit hook for every slot.
    fn unwatch_exits(&self, hook: &SlotHook);
    /// Heavy barriers that failed.
    fn barrier_failures(&self) -> usize;
}

/// The group layer's lifecycle counts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GroupCounts {
    pub(crate) created: usize,
    pub(crate) offlined: usize,
    pub(crate) released: usize,
    pub(crate) freed: usize,
    pub(crate) barrier_failures: usize,
}

/// See the module docs.
pub(crate) struct Domain<P: CpuProvider, const K: usize> {
    pub(crate) cpus: P,
    pub(crate) epoch: Epoch,
    /// Guards every node's child links and online-children count, and the lists of the
    /// layers above that hang off nodes (the object layer's `ObjGroup` lists).
    pub(crate) topology: SpinFlag,
    pub(crate) stock: UnitStock<P, Node<P, K>, K>,
    pub(crate) arena: ShardArena,
    /// Run by a context that cached something here when it goes away (a thread's exit):
    /// drains that context's slots of every per-CPU cache. Its data is this domain.
    exit_hook: SlotHook,
    released: AtomicPtr<Released>,
    /// Headers pushed on / freed from the released list, of every kind.
    queued: AtomicUsize,
    dequeued_freed: AtomicUsize,
    next_id: AtomicUsize,
    created: AtomicUsize,
    offlined: AtomicUsize,
    released_count: AtomicUsize,
    freed: AtomicUsize,
    /// 2 while the `Tree` handle exists (handle + root), 1 after, 0 → free.
    owners: AtomicUsize,
    /// Set when the `Tree` handle is dropped: last puts then reclaim themselves.
    detached: AtomicBool,
    /// This tree's link in the process's orphan list (see `orphans.rs`).
    orphan: OrphanLink,
    /// Set (under `topology`) when the tree starts to be dropped: no new groups.
    pub(crate) closing: AtomicBool,
    pub(crate) root: AtomicPtr<Node<P, K>>,
    observer: Option<Box<dyn Observer>>,
    /// The object layer's per-CPU cache, installed by the tree ([`Domain::set_upper`]).
    upper_cache: Option<NonNull<dyn UpperCache<P, K>>>,
    /// The engine's state and the object layer's, installed by the tree; the group layer
    /// never reads them (each layer reads its own, see [`Domain::upper`]).
    upper: [*const (); 2],
    /// Frees the tree's allocation, which starts with this domain (installed by the tree).
    free_tree: unsafe fn(NonNull<Self>),
}

/// Index of the engine's state in [`Domain::upper`].
pub(crate) const UPPER_ENGINE: usize = 0;
/// Index of the object layer's state in [`Domain::upper`].
pub(crate) const UPPER_OBJ: usize = 1;

// SAFETY: the raw pointers are to nodes whose shared fields are atomics or are guarded by
// `topology`, or into the tree's own allocation (the upper layers' state, `Sync`); `observer`
// is `Send + Sync`; `P` is `Send + Sync` (`CpuProvider` bound); the collector is `Send + Sync`.
unsafe impl<P: CpuProvider, const K: usize> Send for Domain<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for Domain<P, K> {}

impl<P: CpuProvider, const K: usize> Domain<P, K> {
    /// A domain for `cpus`, with a unit stock of `batch` and reference counts over `classes`
    /// shards. It is not usable before [`Domain::bind`] (at its final address).
    pub(crate) fn try_new(
        cpus: P,
        batch: usize,
        classes: usize,
        observer: Option<Box<dyn Observer>>,
        free_tree: unsafe fn(NonNull<Self>),
    ) -> Result<Self, OutOfMemory> {
        let stock = UnitStock::try_new(cpus.count(), batch)?;
        Ok(Self {
            cpus,
            epoch: Epoch::new(),
            topology: SpinFlag::new(),
            stock,
            arena: ShardArena::new(classes),
            exit_hook: SlotHook::new(Self::run_exit_hook, ptr::null()),
            released: AtomicPtr::new(ptr::null_mut()),
            queued: AtomicUsize::new(0),
            dequeued_freed: AtomicUsize::new(0),
            next_id: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            offlined: AtomicUsize::new(0),
            released_count: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            owners: AtomicUsize::new(2),
            detached: AtomicBool::new(false),
            orphan: OrphanLink::new(Self::reclaim_as_orphan),
            closing: AtomicBool::new(false),
            root: AtomicPtr::new(ptr::null_mut()),
            observer,
            upper_cache: None,
            upper: [ptr::null(); 2],
            free_tree,
        })
    }

    /// Fixes the domain's address for the exit hook, the stock and the orphan list.
    ///
    /// # Safety
    ///
    /// The domain does not move after this and is not shared yet.
    pub(crate) unsafe fn bind(me: *mut Self) {
        // SAFETY: the caller's promise: `me` is the domain's final address, unique for now.
        // Every pointer handed out is derived from `me` itself (not from a reference to a
        // field), so later references to the domain are its children and cannot
        // invalidate it.
        unsafe {
            (*ptr::addr_of_mut!((*me).exit_hook)).set_data(me.cast_const().cast());
            let provider = ptr::addr_of!((*me).cpus);
            let hook = ptr::addr_of!((*me).exit_hook);
            // The provider and the hook live in the domain beside the stock, which does not
            // move from here on; the hook drains the stock's slot (`run_exit_hook`).
            UnitStock::bind(ptr::addr_of_mut!((*me).stock), provider, hook);
            (*ptr::addr_of!((*me).orphan)).set_owner(NonNull::new_unchecked(me).cast());
        }
    }

    /// Installs the layers above: their state pointers ([`UPPER_ENGINE`], [`UPPER_OBJ`]) and
    /// the object layer's per-CPU cache.
    ///
    /// # Safety
    ///
    /// Called once, before the domain is shared, with the pointer `bind` was given;
    /// everything installed lives as long as the domain (in the same allocation) and is of
    /// the type its layer reads it as.
    pub(crate) unsafe fn set_upper(
        me: *mut Self,
        upper: [*const (); 2],
        cache: NonNull<dyn UpperCache<P, K>>,
    ) {
        // SAFETY: the caller's promise; plain stores of values not derived from `me`.
        unsafe {
            ptr::addr_of_mut!((*me).upper).write(upper);
            ptr::addr_of_mut!((*me).upper_cache).write(Some(cache));
        }
    }

    /// The state pointer installed for layer `which` (see [`Domain::set_upper`]).
    #[inline(always)]
    pub(crate) fn upper(&self, which: usize) -> *const () {
        self.upper[which]
    }

    /// The exit hook every per-CPU cache of this tree registers.
    pub(crate) fn exit_hook(&self) -> &SlotHook {
        &self.exit_hook
    }

    fn upper_cache(&self) -> Option<&dyn UpperCache<P, K>> {
        // SAFETY: installed by `set_upper`, alive as long as the domain.
        self.upper_cache.map(|c| unsafe { &*c.as_ptr() })
    }

    /// The exit hook: the context that holds `cpu` goes away; give back what it cached.
    ///
    /// # Safety
    ///
    /// `data` is a bound domain that is alive (its tree unwatches before freeing it), and the
    /// caller is the context that holds `cpu`, giving it up.
    unsafe fn run_exit_hook(data: *const (), cpu: usize) {
        // SAFETY: the caller's obligations.
        let domain = unsafe { &*data.cast::<Self>() };
        // The object stock first: its whole units pass through the unit stock.
        if let Some(c) = domain.upper_cache() {
            c.drain_own(cpu);
        }
        domain.stock.drain_own(cpu);
    }

    /// The caller's shard hint: the current CPU.
    #[inline(always)]
    pub(crate) fn hint(&self) -> usize {
        self.cpus.shard_hint()
    }

    pub(crate) fn next_id(&self) -> GroupId {
        // ORDERING: Relaxed; uniqueness only needs the RMW.
        GroupId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn note_created(&self) {
        // ORDERING: Relaxed; statistics (here and in the other `note_*`).
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_offlined(&self) {
        self.offlined.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_released(&self, id: GroupId) {
        self.released_count.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.released(id);
        }
    }

    pub(crate) fn note_freed(&self, id: GroupId) {
        self.freed.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.freed(id);
        }
    }

    /// The group layer's lifecycle counts.
    pub(crate) fn counts(&self) -> GroupCounts {
        // ORDERING: Relaxed; statistics.
        GroupCounts {
            created: self.created.load(Ordering::Relaxed),
            offlined: self.offlined.load(Ordering::Relaxed),
            released: self.released_count.load(Ordering::Relaxed),
            freed: self.freed.load(Ordering::Relaxed),
            barrier_failures: self.stock.slots().barrier_failures()
                + self.upper_cache().map_or(0, |c| c.barrier_failures()),
        }
    }

    /// Whether the tree handle is gone: once `true`, it stays so. Called after the caller
    /// released a node (its last `put`) or pushed one on the released list.
    pub(crate) fn is_detached(&self) -> bool {
        // ORDERING: store-buffering with `detach` (store `detached`, fence, drain the list):
        // with a SeqCst fence on both sides, either this load sees `detached` or the drop's
        // drain sees the node the caller released or pushed before it, so no released node
        // is stranded.
        fence(Ordering::SeqCst);
        self.detached.load(Ordering::Relaxed)
    }

    /// The tree handle is going away: from now on last puts reclaim themselves (see
    /// [`Domain::is_detached`]).
    pub(crate) fn detach(&self) {
        // ORDERING: store-buffering with `is_detached`: SeqCst fence between this store and
        // the caller's later drain of the released list.
        self.detached.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Drains every CPU's cached entries of `root`'s subtree (all entries for `None`) from
    /// the object stock and the unit stock, skipping a cache another drain is emptying.
    /// Returns the units the unit stock returned, `None` if it was being drained.
    pub(crate) fn drain_all(&self, root: Option<&Node<P, K>>) -> Option<usize> {
        if let Some(c) = self.upper_cache() {
            c.drain_all(root);
        }
        self.stock.drain_all(|n| root.is_none_or(|r| n.is_descendant_of(r)))
    }

    /// [`Domain::drain_all`], waiting for a concurrent drain to finish instead of skipping
    /// (for limits and teardown, which want the units back). Not for allocator paths.
    pub(crate) fn drain_blocking(&self, root: Option<&Node<P, K>>) -> usize {
        if let Some(c) = self.upper_cache() {
            c.drain_all(root);
        }
        loop {
            let r = self.stock.drain_all(|n| root.is_none_or(|r| n.is_descendant_of(r)));
            if let Some(units) = r {
                return units;
            }
            crate::sync::spin_loop();
        }
    }

    /// Drains every CPU's unit-stock entry for `node` (and only those CPUs: no barrier when
    /// none caches it), waiting for a concurrent drain. For offline.
    pub(crate) fn drain_node(&self, node: &Node<P, K>) -> usize {
        loop {
            if let Some(units) = self.stock.drain_owner(node) {
                return units;
            }
            crate::sync::spin_loop();
        }
    }

    /// This CPU's entries of both stocks back to the counters (the object stock first).
    pub(crate) fn drain_local(&self) -> usize {
        let cpu = self.cpus.current();
        if let Some(c) = self.upper_cache() {
            c.drain_local(cpu);
        }
        self.stock.drain_local(cpu)
    }

    /// The tree is being dropped: closes both stocks and drains them until nothing is cached
    /// and nothing can be, then forgets the exit hooks. `false` if a heavy barrier failed:
    /// the stocks were left as they are (and the hooks with them).
    pub(crate) fn close_caches(&self) -> bool {
        let upper_ok = self.upper_cache().is_none_or(|c| c.close());
        if !(upper_ok && self.stock.slots().close()) {
            return false;
        }
        // Once closed, no new entry is installed, so draining until drained terminates (a CPU
        // inside an operation is retried when it leaves it), and the end is final: an owner
        // that read `closed == false` is still seen busy, or its entry is seen.
        loop {
            self.drain_blocking(None);
            if self.upper_cache().is_none_or(|c| c.is_drained()) && self.stock.slots().is_drained() {
                break;
            }
            crate::sync::spin_loop();
        }
        // Nothing is cached and nothing will be: the contexts' exit hooks can go.
        if let Some(c) = self.upper_cache() {
            c.unwatch_exits(&self.exit_hook);
        }
        self.stock.slots().unwatch_exits(&self.exit_hook);
        true
    }

    /// Takes one more ownership share for good (the tree must outlive hooks it could not
    /// take back).
    pub(crate) fn leak_share(&self) {
        // ORDERING: Relaxed, the Arc recipe (the caller holds a share).
        self.owners.fetch_add(1, Ordering::Relaxed);
    }

    /// Pushes a released header onto the released list (Treiber push: lock-free, no
    /// allocation). Returns whether the tree's handle is gone, in which case nobody else
    /// would reclaim: the caller should reclaim (see [`Domain::publish_released`]) unless it
    /// runs inside the collector.
    #[must_use]
    pub(crate) fn push_released(&self, header: NonNull<Released>) -> bool {
        // ORDERING: Relaxed; a count, published with the push.
        self.queued.fetch_add(1, Ordering::Relaxed);
        // ORDERING: Relaxed initial load; the CAS publishes.
        let mut head = self.released.load(Ordering::Relaxed);
        loop {
            // SAFETY: released, owned by the pusher until the push publishes it.
            unsafe { header.as_ref() }.next.store(head, Ordering::Relaxed);
            // ORDERING: Release pairs with the Acquire swap in `reclaim_with`, which then
            // sees the link and every write made to the object before its release.
            match self.released.compare_exchange_weak(
                head,
                header.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        self.is_detached()
    }

    /// Publishes a released object with `push` (which returns whether the tree is detached)
    /// and, if the tree is detached, lists it as an orphan. Holds an ownership share of the
    /// tree throughout: the releasing thread is not pinned, so once the object is on the list
    /// any reclamation may free it, and with it the chain up to the root, whose free gives up
    /// a share of the tree. Nothing of the object is read after `push`.
    ///
    /// # Safety
    ///
    /// `this` points to a live domain (the caller owns a released object of it that is not
    /// yet published, which keeps the root, hence a share, alive) and no reference to it is
    /// held across the call: the tree may be freed inside.
    pub(crate) unsafe fn publish_released(this: NonNull<Self>, push: impl FnOnce(&Self) -> bool) {
        {
            // SAFETY: alive (caller's obligation); the borrow ends before the release below.
            let domain = unsafe { this.as_ref() };
            // ORDERING: Relaxed: a new share is taken while another keeps the tree alive
            // (the Arc recipe); `release_owner`'s AcqRel orders the rest.
            domain.owners.fetch_add(1, Ordering::Relaxed);
            if push(domain) {
                // Detached: nobody else may ever reclaim, and this may be an allocator's
                // `dealloc`: list the tree as an orphan (protocol Q in `orphans.rs`).
                domain.list_as_orphan();
            }
        }
        // SAFETY: the share taken above, given up (without freeing here); `this` is not used
        // afterwards.
        unsafe { Self::release_owner_deferred(this) };
    }

    /// Lists this tree as an orphan unless it is listed. The caller holds a share.
    pub(crate) fn list_as_orphan(&self) {
        if self.orphan.mark() {
            // ORDERING: Relaxed, the Arc recipe: the caller's share keeps the tree alive.
            self.owners.fetch_add(1, Ordering::Relaxed);
            self.orphan.push();
        }
    }

    /// Gives up one ownership share like [`Domain::release_owner`], but never frees the
    /// tree (an allocator path may be the caller): the last share is handed to the orphan
    /// list instead, whose next reclamation frees the tree.
    ///
    /// # Safety
    ///
    /// The caller owns a share and does not use `this` afterwards.
    unsafe fn release_owner_deferred(this: NonNull<Self>) {
        // SAFETY: the caller owns a share, so the tree is alive until it is given up.
        let domain = unsafe { this.as_ref() };
        // ORDERING: Relaxed; the CAS below decides.
        let mut cur = domain.owners.load(Ordering::Relaxed);
        loop {
            if cur == 1 {
                // Ours is the last share: nobody else can take one, and the orphan list holds
                // none (it would count), so the tree is not listed. Hand the share to it.
                if domain.orphan.mark() {
                    domain.orphan.push();
                    return;
                }
                // The list's reclaimer is between clearing the flag and dropping its share.
                crate::sync::spin_loop();
                cur = domain.owners.load(Ordering::Relaxed);
                continue;
            }
            // ORDERING: Release, the Arc recipe for a share that is not the last (the last
            // one's AcqRel is in `release_owner`).
            match domain.owners.compare_exchange_weak(cur, cur - 1, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The orphan list's reclamation of this tree (`OrphanLink::reclaim`).
    ///
    /// # Safety
    ///
    /// `this` is a domain on which the caller owns the orphan list's share, given up here.
    unsafe fn reclaim_as_orphan(this: NonNull<()>) {
        let this = this.cast::<Self>();
        // SAFETY: the list's share keeps the tree alive.
        let domain = unsafe { this.as_ref() };
        if !domain.reclaim_pumped() && domain.orphan.mark() {
            // Something released is not freed yet (a thread pinned elsewhere holds the epoch
            // back): keep the share and stay listed for the next reclamation.
            domain.orphan.push();
            return;
        }
        // SAFETY: the list's share, given up; not an allocator path.
        unsafe { Self::release_owner(this) };
    }

    /// Pins for internal work: the thread's participant with `std`, else a fresh one (the
    /// guard keeps it registered until dropped).
    pub(crate) fn pin_internal(&self) -> Guard<'_> {
        #[cfg(all(feature = "std", not(loom)))]
        {
            self.epoch.pin_current_thread(self.identity())
        }
        #[cfg(not(all(feature = "std", not(loom))))]
        {
            self.epoch.register(self.identity()).pin()
        }
    }

    /// This tree's identity for guards and owner cells: its address, compared and never
    /// dereferenced through a guard. Unique while anything of the tree is alive (a cell that
    /// holds a group keeps the tree alive; an empty cell never dereferences).
    #[inline]
    pub(crate) fn identity(&self) -> usize {
        ptr::from_ref(self) as usize
    }

    /// Hands every released object to the collector; returns whether there were any. Not for
    /// allocator paths: pinning may collect, and collecting may allocate.
    pub(crate) fn reclaim_with(&self, guard: &Guard<'_>) -> bool {
        // ORDERING: Relaxed fast check; the swap below is what synchronises.
        if self.released.load(Ordering::Relaxed).is_null() {
            return false;
        }
        // ORDERING: Acquire pairs with the Release CAS in `push_released`.
        let mut p = self.released.swap(ptr::null_mut(), Ordering::Acquire);
        while let Some(header) = NonNull::new(p) {
            // SAFETY: headers on the list are released and unreachable; we own the list now.
            let h = unsafe { header.as_ref() };
            // ORDERING: Relaxed; made visible by the Acquire swap above.
            p = h.next.load(Ordering::Relaxed);
            let free = h.free;
            let addr = SendPtr(header);
            let counter = SendCount(NonNull::from(&self.dequeued_freed));
            // SAFETY: the object is unreachable except by pinned readers, and handed to the
            // collector exactly once; `free` touches the tree, which outlives everything it
            // frees (the root is freed last, and the count below is updated before the
            // object's free can free the root).
            unsafe {
                guard.defer(move || {
                    let (addr, counter) = (addr, counter);
                    // ORDERING: Relaxed; a progress count for `reclaim_pumped`.
                    counter.0.as_ref().fetch_add(1, Ordering::Relaxed);
                    free(addr.0);
                });
            }
        }
        true
    }

    /// One reclamation round: hand released objects to the collector and flush once.
    #[cfg(all(loom, test))]
    pub(crate) fn reclaim_once(&self) {
        let guard = self.pin_internal();
        self.reclaim_with(&guard);
        guard.flush();
    }

    /// Released objects (groups and `ObjGroup`s) not freed yet: on the released list or
    /// handed to the collector. Racy (two Relaxed loads), exact at quiescence.
    pub(crate) fn awaiting_free(&self) -> usize {
        // ORDERING: Relaxed; a heuristic for when to pump. Both only grow and a free follows
        // its queueing; racing loads can overstate the figure or wrap it (a huge value), and
        // either only makes an offline pump early, which is always correct.
        let freed = self.dequeued_freed.load(Ordering::Relaxed);
        self.queued.load(Ordering::Relaxed).wrapping_sub(freed)
    }

    /// Reclaims and nudges the collector until every released object is freed, giving up
    /// after [`PUMP_ROUNDS`] rounds in a row that freed nothing (yielding the CPU between
    /// them). Frees can release more (a freed node puts its parent, a freed `ObjGroup` its
    /// group), so a round that made progress resets the count: in a quiescent process
    /// everything released is freed before this returns, however long the chain. A thread
    /// pinned elsewhere for longer holds the epoch back; what is left then is freed by later
    /// reclamation. Returns whether everything released was freed.
    pub(crate) fn reclaim_pumped(&self) -> bool {
        let mut idle = 0;
        let mut seen = usize::MAX;
        while idle < PUMP_ROUNDS {
            {
                let guard = self.pin_internal();
                self.reclaim_with(&guard);
                guard.flush();
            }
            // ORDERING: Relaxed; a progress heuristic.
            let freed = self.dequeued_freed.load(Ordering::Relaxed);
            if freed == self.queued.load(Ordering::Relaxed) && self.released.load(Ordering::Relaxed).is_null()
            {
                return true;
            }
            if freed == seen {
                idle += 1;
                // Nothing freed: some thread is pinned (maybe descheduled inside a short
                // internal operation, or running deferred frees elsewhere). Let it run before
                // the next round instead of burning the budget in microseconds.
                crate::sync::yield_now();
            } else {
                idle = 0;
            }
            seen = freed;
        }
        false
    }

    /// Gives up one ownership share; frees the tree at zero.
    ///
    /// # Safety
    ///
    /// The caller owns a share and does not use `this` afterwards.
    pub(crate) unsafe fn release_owner(this: NonNull<Self>) {
        // SAFETY: the caller owns a share, so the tree is alive.
        let domain = unsafe { this.as_ref() };
        // ORDERING: AcqRel: the last owner sees every write of the other owners.
        if domain.owners.fetch_sub(1, Ordering::AcqRel) == 1 {
            let free_tree = domain.free_tree;
            // SAFETY: last share: nobody else can reach the tree (every node is freed, the
            // handle is gone); the tree's function frees its allocation.
            unsafe { free_tree(this) };
        }
    }
}

/// A released header moved into a deferred closure.
struct SendPtr(NonNull<Released>);
// SAFETY: the object is released and handed to exactly one deferred call, which may run on
// any thread; everything released is `Sync` in the fields its free touches.
unsafe impl Send for SendPtr {}

/// The domain's progress count, moved into a deferred closure.
struct SendCount(NonNull<AtomicUsize>);
// SAFETY: an atomic of the domain, which outlives every deferred free (see `reclaim_with`).
unsafe impl Send for SendCount {}
