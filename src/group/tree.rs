//! The tree (domain): owns the root group, the configuration, the CPU provider and the epoch
//! collector. No globals: two trees in one process share nothing.

use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use super::node::Node;
use super::orphans::{OrphanLink, reclaim_orphans};
use super::{Group, GroupError, GroupId, GroupSpec};
use crate::cpu::{CpuProvider, DefaultCpus};
use crate::engine::{DEFAULT_RETRIES, Reclaimer};
use crate::epoch::{Epoch, Guard, Participant};
use crate::fallible::try_box;
use crate::objgroup::DEFAULT_UNIT_BYTES;
use crate::objgroup::ObjNode;
use crate::stock::STOCK_SLOTS;
use crate::stock::{DEFAULT_BATCH, Stocks};
use crate::sync::SpinFlag;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering, fence};

/// How many pin–flush rounds in a row that free nothing [`TreeInner::reclaim_pumped`] tries
/// before giving up: each round lets the epoch advance once, and a node is freed two
/// advances after it was deferred (rounds that free something do not count: freeing a child
/// can release its parent, and so on up the tree). Smaller under loom, where every round
/// multiplies the interleavings to explore (loom models call [`TreeInner::reclaim_once`] in
/// their concurrent sections).
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
    /// The last reference of group `id` was dropped.
    fn released(&self, id: GroupId) {
        let _ = id;
    }
    /// The memory of group `id` was freed.
    fn freed(&self, id: GroupId) {
        let _ = id;
    }
}

/// The largest [`TreeConfig::refcount_shards`] value; larger ones are clamped to it.
pub const MAX_REFCOUNT_SHARDS: usize = 64;

/// The largest [`TreeConfig::max_retries`] value; larger ones are clamped to it.
pub const MAX_RETRIES: usize = 1 << 16;

/// How a [`Tree`] is built.
///
/// ```
/// use chargetree::cpu::ThreadCpus;
/// use chargetree::group::{GroupSpec, Tree, TreeConfig};
///
/// let config = TreeConfig::with_cpus(ThreadCpus::new(64)) // up to 64 threads cache
///     .batch(32) // units pre-charged per walk and cached per CPU and group
///     .unit_bytes(4096) // for byte charges: units are pages
///     .root(GroupSpec::new().name("machine").max(1 << 20));
/// let tree = Tree::with_config(config);
/// assert_eq!(tree.root().name(), Some("machine"));
/// ```
pub struct TreeConfig<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    cpus: P,
    refcount_shards: Option<usize>,
    root: GroupSpec<'static>,
    observer: Option<Box<dyn Observer>>,
    batch: usize,
    max_retries: usize,
    reclaimer: Option<Box<dyn Reclaimer<P, K>>>,
    unit_bytes: usize,
}

impl<P: CpuProvider + Default> Default for TreeConfig<P, STOCK_SLOTS> {
    fn default() -> Self {
        Self::with_cpus(P::default())
    }
}

impl TreeConfig<DefaultCpus, STOCK_SLOTS> {
    /// The default configuration: the default CPU provider, reference counts sharded over
    /// as many CPUs as it has (up to 16), stocks of [`STOCK_SLOTS`] groups per CPU with a
    /// batch of [`DEFAULT_BATCH`] units, 16 reclaim retries, no reclaimer, an unlimited root.
    #[must_use]
    pub fn new() -> Self {
        Self::with_cpus(DefaultCpus::default())
    }
}

impl<P: CpuProvider> TreeConfig<P, STOCK_SLOTS> {
    /// A configuration using `cpus` as the CPU provider and [`STOCK_SLOTS`] stock entries per
    /// CPU.
    #[must_use]
    pub fn with_cpus(cpus: P) -> Self {
        Self::with_cpus_and_slots(cpus)
    }
}

impl<P: CpuProvider, const K: usize> TreeConfig<P, K> {
    /// A configuration using `cpus` as the CPU provider and `K` stock entries per CPU
    /// (`TreeConfig::<_, 4>::with_cpus_and_slots(cpus)`).
    #[must_use]
    pub fn with_cpus_and_slots(cpus: P) -> Self {
        Self {
            cpus,
            refcount_shards: None,
            root: GroupSpec::new().name("root"),
            observer: None,
            batch: DEFAULT_BATCH,
            max_retries: DEFAULT_RETRIES,
            reclaimer: None,
            unit_bytes: DEFAULT_UNIT_BYTES,
        }
    }

    /// Spreads each group's reference count over `shards` per-CPU shards (rounded up to a
    /// power of two). Each shard costs one cache line per group. Default:
    /// `min(cpus.count(), 16)`. Clamped to `1..=`[`MAX_REFCOUNT_SHARDS`].
    #[must_use]
    pub fn refcount_shards(mut self, shards: usize) -> Self {
        self.refcount_shards = Some(shards.clamp(1, MAX_REFCOUNT_SHARDS));
        self
    }

    /// Limits and protection of the root group.
    #[must_use]
    pub fn root(mut self, spec: GroupSpec<'static>) -> Self {
        self.root = spec;
        self
    }

    /// Installs an [`Observer`].
    #[must_use]
    pub fn observer(mut self, observer: impl Observer + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Units pre-charged per counter walk and cached per CPU and group at most (Linux's
    /// `MEMCG_CHARGE_BATCH`, default [`DEFAULT_BATCH`]). 0 disables the stocks. Stocked units
    /// are charged but unused, so a group's usage may exceed what its objects hold by up to
    /// `batch × CPUs`; they are returned by drains (which the charge path runs before
    /// failing). Clamped to [`MAX_BATCH`](crate::stock::MAX_BATCH); a batch that a limit
    /// refuses is never a reason to refuse a charge (the engine retries with the exact amount).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.min(crate::stock::MAX_BATCH);
        self
    }

    /// How many times the charge engine retries after reclaim before failing (Linux's
    /// `MAX_RECLAIM_RETRIES`, default 16). Clamped to [`MAX_RETRIES`], so that a reclaimer
    /// that never makes progress cannot keep a charge looping for ever.
    #[must_use]
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries.min(MAX_RETRIES);
        self
    }

    /// Bytes per unit for byte-granular charging through [`ObjGroup`](crate::objgroup::ObjGroup)s
    /// (default 4096: units are pages). Clamped to `1..=`[`MAX_UNIT_BYTES`](crate::objgroup::MAX_UNIT_BYTES)
    /// (1 GiB, the largest huge page), so that byte remainders, always below a unit, can be
    /// summed without overflow.
    #[must_use]
    pub fn unit_bytes(mut self, bytes: usize) -> Self {
        self.unit_bytes = bytes.clamp(1, crate::objgroup::MAX_UNIT_BYTES);
        self
    }

    /// Installs the hook the charge engine calls when a group is over its limit.
    #[must_use]
    pub fn reclaimer(mut self, reclaimer: impl Reclaimer<P, K> + 'static) -> Self {
        self.reclaimer = Some(Box::new(reclaimer));
        self
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for TreeConfig<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TreeConfig")
            .field("cpus", &self.cpus.count())
            .field("refcount_shards", &self.refcount_shards)
            .finish_non_exhaustive()
    }
}

/// Counts of group lifecycle transitions, for monitoring (how many groups are dying, how
/// many wait for a grace period). Each field is read separately.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Groups created, the root included.
    pub created: usize,
    /// Groups taken offline (the root counts when the tree is dropped).
    pub offlined: usize,
    /// Groups whose last reference is gone.
    pub released: usize,
    /// Groups whose memory was freed.
    pub freed: usize,
    /// Charges forced past a limit because the caller asked for no-fail.
    pub forced: usize,
    /// Remote drains (and the tree's drop) that found the heavy barrier failing
    /// (`membarrier(2)` refused, e.g. by a seccomp filter) and so took nothing from other
    /// CPUs' stocks. Charges keep working; cached units stay cached until their owner
    /// drains its own stock.
    pub barrier_failures: usize,
    /// Sub-unit bytes left in released `ObjGroup`s: objects uncharged other byte counts than
    /// they charged (a caller bug, counted here). After over-uncharges they were never
    /// charged; after under-uncharges they are the unused part of a unit that stays charged.
    pub stray_bytes: usize,
    /// `ObjGroup`s created (one per group).
    pub objgroups_created: usize,
    /// `ObjGroup`s freed.
    pub objgroups_freed: usize,
}

impl TreeStats {
    /// Offline groups still referenced (Linux's "dying" cgroups).
    #[must_use]
    pub fn dying(&self) -> usize {
        self.offlined.saturating_sub(self.released)
    }
}

/// The shared state of a tree. Owned jointly by the [`Tree`] handle and the root node (the
/// root is freed after every other node, so the tree outlives all of them).
pub(crate) struct TreeInner<P: CpuProvider, const K: usize> {
    pub(crate) cpus: P,
    pub(crate) epoch: Epoch,
    pub(crate) shards: usize,
    /// Guards every node's child links and online-children count.
    pub(crate) topology: SpinFlag,
    released: AtomicPtr<Node<P, K>>,
    released_objs: AtomicPtr<ObjNode<P, K>>,
    objs_created: AtomicUsize,
    objs_released: AtomicUsize,
    objs_freed: AtomicUsize,
    /// Bytes per unit for byte-granular charging (`ObjGroup`).
    pub(crate) unit_bytes: usize,
    stray_bytes: AtomicUsize,
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
    root: AtomicPtr<Node<P, K>>,
    observer: Option<Box<dyn Observer>>,
    pub(crate) stocks: Stocks<P, K>,
    pub(crate) max_retries: usize,
    pub(crate) reclaimer: Option<Box<dyn Reclaimer<P, K>>>,
    forced: AtomicUsize,
}

// SAFETY: the raw pointers are to nodes whose shared fields are atomics or are guarded by
// `topology`; `observer` is `Send + Sync`; `P` is `Send + Sync` (`CpuProvider` bound); the
// collector is `Send + Sync`.
unsafe impl<P: CpuProvider, const K: usize> Send for TreeInner<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for TreeInner<P, K> {}

impl<P: CpuProvider, const K: usize> TreeInner<P, K> {
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

    pub(crate) fn note_obj_created(&self) {
        self.objs_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_obj_freed(&self) {
        self.objs_freed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_stray_bytes(&self, bytes: usize) {
        self.stray_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Pushes a released `ObjGroup` node (as [`TreeInner::push_released`]).
    #[must_use]
    pub(crate) fn push_released_obj(&self, node: NonNull<ObjNode<P, K>>) -> bool {
        self.objs_released.fetch_add(1, Ordering::Relaxed);
        // SAFETY: released, owned by the pusher until the push publishes it.
        treiber_push(&self.released_objs, node, &unsafe { node.as_ref() }.next_released);
        self.is_detached()
    }

    /// Whether the tree handle is gone: once `true`, it stays so. Called after the caller
    /// released a node (its last `put`) or pushed one on a released list.
    pub(crate) fn is_detached(&self) -> bool {
        // ORDERING: store-buffering with `Tree::drop` (store `detached`, fence, drain the
        // lists): with a SeqCst fence on both sides, either this load sees `detached` or the
        // drop's drain sees the node the caller released or pushed before it, so no released
        // node is stranded.
        fence(Ordering::SeqCst);
        self.detached.load(Ordering::Relaxed)
    }

    pub(crate) fn note_forced(&self) {
        self.forced.fetch_add(1, Ordering::Relaxed);
    }

    /// Drains every CPU's stock entries of `root`'s subtree (all entries for `None`),
    /// waiting for a concurrent drain to finish instead of skipping (for offline and
    /// teardown, which want the references back). Not for allocator paths.
    pub(crate) fn drain_stocks_blocking(&self, root: Option<&Node<P, K>>) -> usize {
        loop {
            let r = self.stocks.drain_all(|n| root.is_none_or(|r| n.is_descendant_of(r)));
            if let Some(units) = r {
                return units;
            }
            crate::sync::spin_loop();
        }
    }

    pub(crate) fn note_freed(&self, id: GroupId) {
        self.freed.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.freed(id);
        }
    }

    pub(crate) fn stats(&self) -> TreeStats {
        // ORDERING: Relaxed; statistics.
        TreeStats {
            created: self.created.load(Ordering::Relaxed),
            offlined: self.offlined.load(Ordering::Relaxed),
            released: self.released_count.load(Ordering::Relaxed),
            freed: self.freed.load(Ordering::Relaxed),
            forced: self.forced.load(Ordering::Relaxed),
            stray_bytes: self.stray_bytes.load(Ordering::Relaxed),
            barrier_failures: self.stocks.barrier_failures(),
            objgroups_created: self.objs_created.load(Ordering::Relaxed),
            objgroups_freed: self.objs_freed.load(Ordering::Relaxed),
        }
    }

    /// Pushes a released node onto the released list (Treiber push: lock-free, no
    /// allocation). Returns whether the tree's handle is gone, in which case nobody else
    /// would reclaim: the caller should reclaim (see [`TreeInner::publish_released`]) unless
    /// it runs inside the collector.
    #[must_use]
    pub(crate) fn push_released(&self, node: NonNull<Node<P, K>>) -> bool {
        // SAFETY: released, owned by the pusher until the push publishes it.
        treiber_push(&self.released, node, &unsafe { node.as_ref() }.next_released);
        self.is_detached()
    }

    /// Publishes a released node with `push` (which returns whether the tree is detached)
    /// and, if the tree is detached, reclaims. Holds an ownership share of the tree
    /// throughout: the releasing thread is not pinned, so once the node is on the list any
    /// reclamation may free it, and with it the chain up to the root, whose free gives up a
    /// share of the tree. Nothing of the node is read after `push`.
    ///
    /// # Safety
    ///
    /// `this` points to a live tree (the caller owns a released node of it that is not yet
    /// published, which keeps the root, hence a share, alive) and no reference to it is held
    /// across the call: the tree may be freed inside.
    pub(crate) unsafe fn publish_released(this: NonNull<Self>, push: impl FnOnce(&Self) -> bool) {
        {
            // SAFETY: alive (caller's obligation); the borrow ends before the release below.
            let tree = unsafe { this.as_ref() };
            // ORDERING: Relaxed: a new share is taken while another keeps the tree alive
            // (the Arc recipe); `release_owner`'s AcqRel orders the rest.
            tree.owners.fetch_add(1, Ordering::Relaxed);
            if push(tree) {
                // Detached: nobody else may ever reclaim, and this may be an allocator's
                // `dealloc`: list the tree as an orphan (protocol Q in `orphans.rs`).
                tree.list_as_orphan();
            }
        }
        // SAFETY: the share taken above, given up (without freeing here); `this` is not used
        // afterwards.
        unsafe { Self::release_owner_deferred(this) };
    }

    /// Lists this tree as an orphan unless it is listed. The caller holds a share.
    fn list_as_orphan(&self) {
        if self.orphan.mark() {
            // ORDERING: Relaxed, the Arc recipe: the caller's share keeps the tree alive.
            self.owners.fetch_add(1, Ordering::Relaxed);
            self.orphan.push();
        }
    }

    /// Gives up one ownership share like [`TreeInner::release_owner`], but never frees the
    /// tree (an allocator path may be the caller): the last share is handed to the orphan
    /// list instead, whose next reclamation frees the tree.
    ///
    /// # Safety
    ///
    /// The caller owns a share and does not use `this` afterwards.
    unsafe fn release_owner_deferred(this: NonNull<Self>) {
        // SAFETY: the caller owns a share, so the tree is alive until it is given up.
        let tree = unsafe { this.as_ref() };
        // ORDERING: Relaxed; the CAS below decides.
        let mut cur = tree.owners.load(Ordering::Relaxed);
        loop {
            if cur == 1 {
                // Ours is the last share: nobody else can take one, and the orphan list holds
                // none (it would count), so the tree is not listed. Hand the share to it.
                if tree.orphan.mark() {
                    tree.orphan.push();
                    return;
                }
                // The list's reclaimer is between clearing the flag and dropping its share.
                crate::sync::spin_loop();
                cur = tree.owners.load(Ordering::Relaxed);
                continue;
            }
            // ORDERING: Release, the Arc recipe for a share that is not the last (the last
            // one's AcqRel is in `release_owner`).
            match tree.owners.compare_exchange_weak(cur, cur - 1, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The orphan list's reclamation of this tree (`OrphanLink::reclaim`).
    ///
    /// # Safety
    ///
    /// `this` is a tree on which the caller owns the orphan list's share, given up here.
    unsafe fn reclaim_as_orphan(this: NonNull<()>) {
        let this = this.cast::<Self>();
        // SAFETY: the list's share keeps the tree alive.
        let tree = unsafe { this.as_ref() };
        if !tree.reclaim_pumped() && tree.orphan.mark() {
            // Something released is not freed yet (a thread pinned elsewhere holds the epoch
            // back): keep the share and stay listed for the next reclamation.
            tree.orphan.push();
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
        self as *const Self as usize
    }

    /// Hands every released node to the collector; returns whether there were any. Not for
    /// allocator paths: pinning may collect, and collecting may allocate.
    pub(crate) fn reclaim_with(&self, guard: &Guard<'_>) -> bool {
        // ObjGroups first: freeing them can release groups.
        // ORDERING: Relaxed fast check; the swap is what synchronises.
        let objs = !self.released_objs.load(Ordering::Relaxed).is_null();
        if objs {
            // ORDERING: Acquire pairs with the Release CAS in `push_released_obj`.
            let mut p = self.released_objs.swap(ptr::null_mut(), Ordering::Acquire);
            while let Some(node) = NonNull::new(p) {
                // SAFETY: released and unreachable; we own the list now.
                p = unsafe { node.as_ref() }.next_released.load(Ordering::Relaxed);
                let addr = SendObjPtr(node);
                // SAFETY: unreachable except by pinned readers of `active_obj`, handed to the
                // collector exactly once; `free` touches the tree, which outlives it.
                unsafe {
                    guard.defer(move || {
                        let addr = addr;
                        ObjNode::free(addr.0);
                    });
                }
            }
        }
        // ORDERING: Relaxed fast check; the swap below is what synchronises.
        if self.released.load(Ordering::Relaxed).is_null() {
            return objs;
        }
        // ORDERING: Acquire pairs with the Release CAS in `push_released`.
        let mut p = self.released.swap(ptr::null_mut(), Ordering::Acquire);
        while let Some(node) = NonNull::new(p) {
            // SAFETY: nodes on the list are released and unreachable; we own the list now.
            p = unsafe { node.as_ref() }.next_released.load(Ordering::Relaxed);
            let addr = SendPtr(node);
            // SAFETY: the node is unreachable (count zero, no stored pointer) and handed to the
            // collector exactly once; `free` touches the tree, which outlives its nodes.
            unsafe {
                guard.defer(move || {
                    let addr = addr;
                    Node::free(addr.0);
                });
            }
        }
        true
    }

    /// One reclamation round: hand released nodes to the collector and flush once.
    #[cfg(all(loom, test))]
    pub(crate) fn reclaim_once(&self) {
        let guard = self.pin_internal();
        self.reclaim_with(&guard);
        guard.flush();
    }

    /// Reclaims and nudges the collector until every released node is freed, giving up
    /// after [`PUMP_ROUNDS`] rounds in a row that freed nothing (yielding the CPU between
    /// them). Frees can release more (a freed node puts its parent, a freed `ObjGroup` its
    /// group), so a round that made progress resets the count: in a quiescent process
    /// everything released is freed before this returns, however long the chain. A thread
    /// pinned elsewhere for longer holds the epoch back; what is left then is freed by later
    /// reclamation. Returns whether everything released was freed.
    pub(crate) fn reclaim_pumped(&self) -> bool {
        let mut idle = 0;
        let mut seen = (usize::MAX, usize::MAX);
        while idle < PUMP_ROUNDS {
            {
                let guard = self.pin_internal();
                self.reclaim_with(&guard);
                guard.flush();
            }
            let stats = self.stats();
            // ORDERING: Relaxed; a progress heuristic.
            if stats.freed == stats.released
                && self.released.load(Ordering::Relaxed).is_null()
                && self.released_objs.load(Ordering::Relaxed).is_null()
                && stats.objgroups_freed == self.objs_released.load(Ordering::Relaxed)
            {
                return true;
            }
            let now = (stats.freed, stats.objgroups_freed);
            if now == seen {
                idle += 1;
                // Nothing freed: some thread is pinned (maybe descheduled inside a short
                // internal operation, or running deferred frees elsewhere). Let it run before
                // the next round instead of burning the budget in microseconds.
                crate::sync::yield_now();
            } else {
                idle = 0;
            }
            seen = now;
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
        let owners = unsafe { this.as_ref() }.owners.fetch_sub(1, Ordering::AcqRel);
        // ORDERING: AcqRel: the last owner sees every write of the other owner.
        if owners == 1 {
            // SAFETY: last share: nobody else can reach the tree (every node is freed, the
            // handle is gone). Allocated by `Box::leak` in `Tree::with_config`.
            drop(unsafe { Box::from_raw(this.as_ptr()) });
        }
    }
}

/// Pushes `node`, whose link field is `link`, onto the intrusive stack `list` (Treiber push:
/// lock-free, no allocation). The node must be owned by the caller until this returns.
fn treiber_push<T>(list: &AtomicPtr<T>, node: NonNull<T>, link: &AtomicPtr<T>) {
    // ORDERING: Relaxed initial load; the CAS publishes.
    let mut head = list.load(Ordering::Relaxed);
    loop {
        // ORDERING: Relaxed; published by the Release CAS below.
        link.store(head, Ordering::Relaxed);
        // ORDERING: Release pairs with the Acquire swap in `reclaim_with`, which then sees
        // the link and every write made to the node before its release.
        match list.compare_exchange_weak(head, node.as_ptr(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// An `ObjGroup` node pointer moved into a deferred closure.
struct SendObjPtr<P: CpuProvider, const K: usize>(NonNull<ObjNode<P, K>>);
// SAFETY: as `SendPtr`.
unsafe impl<P: CpuProvider, const K: usize> Send for SendObjPtr<P, K> {}

/// A pointer moved into a deferred closure.
struct SendPtr<P: CpuProvider, const K: usize>(NonNull<Node<P, K>>);
// SAFETY: the node is released and handed to exactly one deferred call, which may run on any
// thread; nodes are `Sync` in all the fields `free` touches.
unsafe impl<P: CpuProvider, const K: usize> Send for SendPtr<P, K> {}

/// A hierarchy of groups with its own root, configuration, CPU provider and epoch collector.
///
/// Dropping the tree takes every group offline (children first), so groups are freed as soon
/// as their handles and stored pointers are gone. Handles may outlive the tree; their
/// counters keep working (charging an offline group is allowed, as in Linux). Their last
/// drops may happen inside an allocator, so they only queue: the groups (and, with the root,
/// the tree's bookkeeping, its observer and reclaimer) are freed by the next non-allocator
/// operation of the crate, or by [`reclaim_orphans`](super::reclaim_orphans).
///
/// ```
/// use chargetree::group::{GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let vm = tree.root().create_child(GroupSpec::new().name("vm-1").max(1024)).unwrap();
/// vm.counter().try_charge(1000).unwrap();
/// assert_eq!(tree.root().counter().usage(), 1000);
/// assert!(vm.counter().try_charge(100).is_err());
/// vm.counter().uncharge(1000);
/// vm.offline().unwrap();
/// drop(vm);
/// tree.reclaim();
/// ```
pub struct Tree<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    inner: NonNull<TreeInner<P, K>>,
    _owns: PhantomData<TreeInner<P, K>>,
}

// SAFETY: `TreeInner` is `Send + Sync`; the handle is a shared owner.
unsafe impl<P: CpuProvider, const K: usize> Send for Tree<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for Tree<P, K> {}

#[cfg(all(feature = "std", not(loom)))]
impl Tree<DefaultCpus, STOCK_SLOTS> {
    /// A tree with the default configuration.
    #[must_use]
    pub fn new() -> Self {
        Self::with_config(TreeConfig::new())
    }
}

#[cfg(all(feature = "std", not(loom)))]
impl Default for Tree<DefaultCpus, STOCK_SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: CpuProvider, const K: usize> Tree<P, K> {
    /// A tree built from `config`.
    ///
    /// # Panics
    ///
    /// If the root spec's limits are above [`COUNTER_MAX`](crate::COUNTER_MAX); calls
    /// [`handle_alloc_error`](alloc_crate::alloc::handle_alloc_error) if the allocator refuses
    /// memory. [`Tree::try_with_config`] returns both as errors.
    #[must_use]
    pub fn with_config(config: TreeConfig<P, K>) -> Self {
        match Self::try_with_config(config) {
            Ok(tree) => tree,
            Err(GroupError::OutOfMemory) => {
                alloc_crate::alloc::handle_alloc_error(core::alloc::Layout::new::<TreeInner<P, K>>())
            }
            Err(e) => panic!("chargetree: invalid root spec: {e}"),
        }
    }

    /// A tree built from `config`, or why not: [`GroupError::Limit`] if the root spec's
    /// limits are above [`COUNTER_MAX`](crate::COUNTER_MAX), [`GroupError::OutOfMemory`] if
    /// the allocator refused memory (nothing is left allocated then; the configuration, its
    /// observer and reclaimer included, is dropped). The epoch collector is created on first
    /// use, by the first reclamation or pin.
    ///
    /// ```
    /// use chargetree::group::{GroupSpec, Tree, TreeConfig};
    ///
    /// let bad = TreeConfig::new().root(GroupSpec::new().max(usize::MAX - 1));
    /// assert!(Tree::try_with_config(bad).is_err());
    /// let tree = Tree::try_with_config(TreeConfig::new()).unwrap();
    /// assert!(tree.root().is_root());
    /// ```
    pub fn try_with_config(config: TreeConfig<P, K>) -> Result<Self, GroupError> {
        reclaim_orphans();
        config.root.validate().map_err(GroupError::Limit)?;
        let oom = |_| GroupError::OutOfMemory;
        let shards = config.refcount_shards.unwrap_or_else(|| config.cpus.count().clamp(1, 16));
        let stocks = Stocks::try_new(config.cpus.count(), config.batch, config.unit_bytes).map_err(oom)?;
        let mut inner = try_box(TreeInner {
            cpus: config.cpus,
            epoch: Epoch::new(),
            shards,
            topology: SpinFlag::new(),
            released: AtomicPtr::new(ptr::null_mut()),
            released_objs: AtomicPtr::new(ptr::null_mut()),
            objs_created: AtomicUsize::new(0),
            objs_released: AtomicUsize::new(0),
            objs_freed: AtomicUsize::new(0),
            unit_bytes: config.unit_bytes,
            stray_bytes: AtomicUsize::new(0),
            next_id: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            offlined: AtomicUsize::new(0),
            released_count: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            owners: AtomicUsize::new(2),
            detached: AtomicBool::new(false),
            orphan: OrphanLink::new(TreeInner::<P, K>::reclaim_as_orphan),
            closing: AtomicBool::new(false),
            root: AtomicPtr::new(ptr::null_mut()),
            observer: config.observer,
            stocks,
            max_retries: config.max_retries,
            reclaimer: config.reclaimer,
            forced: AtomicUsize::new(0),
        })
        .map_err(oom)?;
        let provider = ptr::from_ref(&inner.cpus);
        // SAFETY: the provider lives beside the stocks in the same allocation, which does not
        // move from here on (leaked below, freed as a whole).
        unsafe { inner.stocks.bind(provider) };
        let inner = NonNull::from(Box::leak(inner));
        // SAFETY: just allocated.
        let tree = unsafe { inner.as_ref() };
        tree.orphan.set_owner(inner.cast());
        let id = tree.next_id();
        // SAFETY: the tree outlives the root (the root owns a share of it); no parent.
        let root = match unsafe { Node::alloc(inner, None, id, &config.root, 1, shards) } {
            Ok(root) => root,
            Err(e) => {
                // SAFETY: allocated above with `Box::leak`, never shared.
                drop(unsafe { Box::from_raw(inner.as_ptr()) });
                return Err(e);
            }
        };
        tree.note_created();

        // ORDERING: Release pairs with the Acquire loads in `root_node`.
        tree.root.store(root.as_ptr(), Ordering::Release);
        Ok(Self { inner, _owns: PhantomData })
    }

    #[inline]
    pub(crate) fn inner(&self) -> &TreeInner<P, K> {
        // SAFETY: the handle owns a share of the tree.
        unsafe { self.inner.as_ref() }
    }

    fn root_node(&self) -> NonNull<Node<P, K>> {
        // ORDERING: Acquire pairs with the Release store in `with_config`.
        NonNull::new(self.inner().root.load(Ordering::Acquire)).expect("root is set at creation")
    }

    /// A handle to the root group.
    #[must_use]
    pub fn root(&self) -> Group<P, K> {
        let root = self.root_node();
        // SAFETY: the root is online while the tree handle exists (its base reference is
        // only dropped in `Tree::drop`), so taking a reference is legal.
        unsafe { root.as_ref() }.refs.get(self.inner().cpus.current().unwrap_or(0));
        // SAFETY: we just took the reference the handle owns.
        unsafe { Group::from_node(root) }
    }

    /// The CPU provider.
    #[must_use]
    pub fn cpus(&self) -> &P {
        &self.inner().cpus
    }

    /// Lifecycle counts.
    #[must_use]
    pub fn stats(&self) -> TreeStats {
        self.inner().stats()
    }

    /// Pins the current thread in this tree's epoch (with `std`).
    ///
    /// Also hands released groups to the collector. Not for use inside a global allocator:
    /// pinning may collect garbage, which may allocate.
    #[cfg(all(feature = "std", not(loom)))]
    #[must_use]
    pub fn pin(&self) -> Guard<'_> {
        reclaim_orphans();
        let inner = self.inner();
        let guard = inner.epoch.pin_current_thread(inner.identity());
        if inner.reclaim_with(&guard) {
            // Move the deferred frees out of this thread's bag, or an idle thread would keep
            // them forever.
            guard.flush();
        }
        guard
    }

    /// Registers a new participant of this tree's epoch, for embedders that pin per CPU
    /// (see [`crate::epoch`]). Allocates.
    #[must_use]
    pub fn register(&self) -> Participant<'_> {
        let inner = self.inner();
        inner.epoch.register(inner.identity())
    }

    /// Whether `guard` was pinned in this tree's epoch.
    #[must_use]
    pub fn owns_guard(&self, guard: &Guard<'_>) -> bool {
        guard.owner() == self.inner().identity()
    }

    /// Whether `participant` belongs to this tree's epoch.
    #[must_use]
    pub fn owns_participant(&self, participant: &Participant<'_>) -> bool {
        participant.owner() == self.inner().identity()
    }

    pub(crate) fn inner_ptr(&self) -> NonNull<TreeInner<P, K>> {
        self.inner
    }

    /// One reclamation round (loom models keep their concurrent sections small).
    #[cfg(all(loom, test))]
    pub(crate) fn reclaim_once(&self) {
        self.inner().reclaim_once();
    }

    /// Hands released groups to the epoch collector and helps it along; in a quiescent
    /// process they are freed before this returns. Not for use inside a global allocator.
    pub fn reclaim(&self) {
        reclaim_orphans();
        let _ = self.inner().reclaim_pumped();
    }

    /// The group with id `id`, if it exists and is not released (a pre-order walk: O(groups);
    /// keep the handle instead when looking up often).
    #[must_use]
    pub fn group(&self, id: GroupId) -> Option<Group<P, K>> {
        let root = self.root();
        let mut cursor = Some(root.clone());
        while let Some(g) = cursor {
            if g.id() == id {
                return Some(g);
            }
            cursor = g.next_pre(&root);
        }
        None
    }

    /// The group at `path`, a `/`-separated list of names from the root (`"tenant/vm-1"`;
    /// the empty path, or `"/"`, is the root). Among siblings with the same name, the newest
    /// is found first.
    ///
    /// ```
    /// use chargetree::group::{GroupSpec, Tree};
    ///
    /// let tree = Tree::new();
    /// let tenant = tree.root().create_child(GroupSpec::new().name("tenant")).unwrap();
    /// let vm = tenant.create_child(GroupSpec::new().name("vm-1")).unwrap();
    /// assert!(tree.find("tenant/vm-1").unwrap().ptr_eq(&vm));
    /// assert!(tree.find("/tenant").unwrap().ptr_eq(&tenant));
    /// assert!(tree.find("tenant/vm-2").is_none());
    /// ```
    #[must_use]
    pub fn find(&self, path: &str) -> Option<Group<P, K>> {
        let mut g = self.root();
        for name in path.split('/').filter(|s| !s.is_empty()) {
            let mut child = g.first_child();
            g = loop {
                let c = child?;
                if c.name() == Some(name) {
                    break c;
                }
                child = c.next_sibling();
            };
        }
        Some(g)
    }

    /// Every group of the tree, in pre-order, each as an owned handle (allocates a `Vec`).
    #[must_use]
    pub fn groups(&self) -> Vec<Group<P, K>> {
        let mut out = Vec::new();
        let mut cursor = Some(self.root());
        while let Some(g) = cursor {
            cursor = g.next_pre(&self.root());
            out.push(g);
        }
        out
    }
}

impl<P: CpuProvider, const K: usize> Drop for Tree<P, K> {
    fn drop(&mut self) {
        {
            let _topology = self.inner().topology.lock();
            // ORDERING: Relaxed; read and written under the topology flag.
            self.inner().closing.store(true, Ordering::Relaxed);
        }
        // Give every cached unit and stock reference back, and cache no more. Once closed, no
        // new entry is installed, so draining until the stocks are drained terminates (a CPU
        // inside an operation is retried when it leaves it), and the end is final: an owner
        // that read `closed == false` is still seen busy, or its entry is seen (see
        // `Stocks::close`).
        if self.inner().stocks.close() {
            loop {
                self.inner().drain_stocks_blocking(None);
                if self.inner().stocks.is_drained() {
                    break;
                }
                crate::sync::spin_loop();
            }
            // Nothing is cached and nothing will be: the contexts' exit hooks can go.
            self.inner().stocks.unwatch_exits();
        } else {
            // The heavy barrier failed (`membarrier` refused): the stocks cannot be taken
            // from their owners safely, so they are left as they are, and so are the exit
            // hooks that give them back when their threads exit. The tree's bookkeeping must
            // then outlive every hook: it keeps one share for good (a leak of its memory,
            // never a use-after-free).
            // ORDERING: Relaxed, the Arc recipe (the handle's share is still held).
            self.inner().owners.fetch_add(1, Ordering::Relaxed);
        }
        // Take every group offline, children first (post-order = reverse pre-order). No
        // group can be created from here on, so the snapshot is complete.
        let groups = self.groups();
        for g in groups.iter().rev() {
            if g.is_root() {
                continue;
            }
            // Groups already offline are skipped; nothing else can fail here.
            let _ = g.offline();
        }
        let root = self.root_node();
        drop(groups);
        let inner = self.inner();
        // ORDERING: store-buffering with `is_detached` (see there): SeqCst fence between
        // this store and the drain in `reclaim_pumped` below.
        inner.detached.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // SAFETY: the root's base reference is owned by the tree handle.
        let root_ref = unsafe { root.as_ref() };
        {
            let _topology = inner.topology.lock();
            // ORDERING: Release, as in `Node::offline`.
            root_ref.state.store(super::node::OFFLINE, Ordering::Release);
        }
        inner.note_offlined();
        // ORDERING: AcqRel, as in `Node::offline`.
        if let Some(active) = NonNull::new(root_ref.active_obj.swap(ptr::null_mut(), Ordering::AcqRel)) {
            // SAFETY: the root's reference on its own `ObjGroup`, dropped by the kill.
            if unsafe { active.as_ref() }.refs.kill() {
                // SAFETY: that was the last reference.
                unsafe { ObjNode::release(active) };
            }
        }
        if root_ref.refs.kill() {
            // SAFETY: the last reference was the base reference, just dropped.
            unsafe { Node::release(root) };
        }
        if !inner.reclaim_pumped() {
            // A thread pinned elsewhere holds the epoch back: what is released but not yet
            // freed is left to the next reclamation point (see `orphans.rs`).
            inner.list_as_orphan();
        }
        // SAFETY: the handle's share, given up; `self.inner` is not used after this.
        unsafe { TreeInner::release_owner(self.inner) };
        reclaim_orphans();
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for Tree<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree").field("stats", &self.stats()).finish_non_exhaustive()
    }
}
