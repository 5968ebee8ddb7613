//! The tree (layer 6, the composition root): owns the root group and the configuration, and
//! builds and wires the layers below it: the group layer's domain (CPU provider, epoch
//! collector, unit stock, shard arena), the engine's state (reclaimer, retries) and the
//! object layer's (object stock, unit size), in one allocation. It runs the sequences that
//! cross layers, calling down: a group's offline (`offline.rs`: the group layer's step, the
//! object layer's reparenting, the stock drain, reclamation) and the tree's drop. No globals:
//! two trees in one process share nothing.

#[cfg(not(loom))]
mod lazy;
mod offline;

#[cfg(not(loom))]
pub use lazy::LazyTree;
pub use offline::OFFLINE_PUMP_BATCH;

use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::cpu::{CpuProvider, DefaultCpus};
use crate::engine::{DEFAULT_RETRIES, EngineState, Reclaimer};
use crate::epoch::{Guard, Participant};
use crate::fallible::try_box;
use crate::groups::domain::{Domain, Observer, UPPER_ENGINE, UPPER_OBJ, UpperCache};
use crate::groups::node::Node;
use crate::groups::owner::OwnerCell;
use crate::groups::refcount::MAX_CLASSES;
use crate::groups::{Group, GroupError, GroupId, GroupSpec, reclaim_orphans};
use crate::obj::{DEFAULT_UNIT_BYTES, MAX_UNIT_BYTES, ObjTree};
use crate::stock::{DEFAULT_BATCH, MAX_BATCH, STOCK_SLOTS};
use crate::sync::atomic::Ordering;

/// The default number of reference-count shard classes: as many as the provider has CPUs,
/// up to 8 (each class costs 8 bytes per group, see `RefCount`).
const DEFAULT_CLASSES: usize = 8;

/// The largest [`TreeConfig::refcount_shards`] value; larger ones are clamped to it.
pub const MAX_REFCOUNT_SHARDS: usize = MAX_CLASSES;

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
    /// as many CPUs as it has (up to 8), stocks of [`STOCK_SLOTS`] groups per CPU with a
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
    /// power of two): CPU `i` uses shard `i mod shards`. The shards of all groups are packed
    /// per shard in a per-tree arena, so each costs 8 bytes per group, and CPUs on different
    /// shards never share a cache line. Default: `min(cpus.count(), 8)`. Clamped to
    /// `1..=`[`MAX_REFCOUNT_SHARDS`].
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
        self.batch = batch.min(MAX_BATCH);
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
        self.unit_bytes = bytes.clamp(1, MAX_UNIT_BYTES);
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

/// The shared state of a tree: the group layer's domain first (nodes point at it, and its
/// last ownership share frees this whole allocation through [`TreeInner::free`]), then the
/// engine's and the object layer's state, which the domain points at.
#[repr(C)]
pub(crate) struct TreeInner<P: CpuProvider, const K: usize> {
    domain: Domain<P, K>,
    engine: EngineState<P, K>,
    obj: ObjTree<P, K>,
}

impl<P: CpuProvider, const K: usize> TreeInner<P, K> {
    /// The domain's `free_tree`: frees the allocation that starts with the domain.
    ///
    /// # Safety
    ///
    /// `domain` is the first field of a `TreeInner` allocated by `Tree::try_with_config`,
    /// whose last ownership share is gone.
    unsafe fn free(domain: NonNull<Domain<P, K>>) {
        // SAFETY: `repr(C)` puts the domain at offset 0, so its address is the allocation's;
        // allocated by `try_box` in `try_with_config` and kept as a raw pointer, freed once, here.
        drop(unsafe { Box::from_raw(domain.cast::<Self>().as_ptr()) });
    }

    pub(crate) fn stats(&self) -> TreeStats {
        let g = self.domain.counts();
        let o = self.obj.counts();
        TreeStats {
            created: g.created,
            offlined: g.offlined,
            released: g.released,
            freed: g.freed,
            forced: self.engine.forced(),
            barrier_failures: g.barrier_failures,
            stray_bytes: o.stray_bytes,
            objgroups_created: o.created,
            objgroups_freed: o.freed,
        }
    }
}

/// A hierarchy of groups with its own root, configuration, CPU provider and epoch collector.
///
/// Dropping the tree takes every group offline (children first), so groups are freed as soon
/// as their handles and stored pointers are gone. Handles may outlive the tree; their
/// counters keep working (charging an offline group is allowed, as in Linux). Their last
/// drops may happen inside an allocator, so they only queue: the groups (and, with the root,
/// the tree's bookkeeping, its observer and reclaimer) are freed by the next non-allocator
/// operation of the crate, or by [`reclaim_orphans`](crate::group::reclaim_orphans).
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
        let count = config.cpus.count();
        let classes = config.refcount_shards.unwrap_or_else(|| count.clamp(1, DEFAULT_CLASSES));
        let obj = ObjTree::try_new(count, config.unit_bytes).map_err(oom)?;
        let engine = EngineState::new(config.reclaimer, config.max_retries, config.unit_bytes);
        let domain =
            Domain::try_new(config.cpus, config.batch, classes, config.observer, TreeInner::<P, K>::free)
                .map_err(oom)?;
        let inner = try_box(TreeInner { domain, engine, obj }).map_err(oom)?;
        // Every pointer the parts keep into this allocation is derived from `raw`, the
        // allocation's own pointer, never from a reference to a part: a reference taken
        // later (a handle's `&TreeInner`, a `&mut` during wiring) is then always a child of
        // what the parts hold, so using it cannot invalidate them (Stacked and Tree Borrows).
        let raw = Box::into_raw(inner);
        // SAFETY: `raw` is a fresh, unique allocation that does not move (freed as a whole by
        // `TreeInner::free`), and nothing is shared yet; the parts named live in it.
        unsafe {
            let domain = ptr::addr_of_mut!((*raw).domain);
            Domain::bind(domain);
            ObjTree::bind(ptr::addr_of_mut!((*raw).obj), domain);
            let upper = [ptr::addr_of!((*raw).engine).cast::<()>(), ptr::addr_of!((*raw).obj).cast::<()>()];
            debug_assert_eq!((UPPER_ENGINE, UPPER_OBJ), (0, 1));
            let cache: NonNull<dyn UpperCache<P, K>> =
                NonNull::new_unchecked(ptr::addr_of_mut!((*raw).obj.stock));
            Domain::set_upper(domain, upper, cache);
        }
        // SAFETY: from `Box::into_raw`.
        let inner = unsafe { NonNull::new_unchecked(raw) };
        // SAFETY: just allocated.
        let tree = unsafe { inner.as_ref() };
        // `repr(C)`: the domain's address is the allocation's, with its provenance (freeing the
        // tree goes through this pointer, `TreeInner::free`).
        let domain = inner.cast::<Domain<P, K>>();
        let id = tree.domain.next_id();
        // SAFETY: the domain outlives the root (the root owns a share of it); no parent.
        let root = match unsafe { Node::alloc(domain, None, id, &config.root, 1) } {
            Ok(root) => root,
            Err(e) => {
                // SAFETY: allocated above by `try_box`, never shared.
                drop(unsafe { Box::from_raw(raw) });
                return Err(e);
            }
        };
        tree.domain.note_created();
        // ORDERING: Release pairs with the Acquire loads in `root_node`.
        tree.domain.root.store(root.as_ptr(), Ordering::Release);
        Ok(Self { inner, _owns: PhantomData })
    }

    #[inline]
    pub(crate) fn inner(&self) -> &TreeInner<P, K> {
        // SAFETY: the handle owns a share of the tree.
        unsafe { self.inner.as_ref() }
    }

    #[inline]
    pub(crate) fn domain(&self) -> &Domain<P, K> {
        &self.inner().domain
    }

    fn root_node(&self) -> NonNull<Node<P, K>> {
        // ORDERING: Acquire pairs with the Release store in `with_config`.
        NonNull::new(self.domain().root.load(Ordering::Acquire)).expect("root is set at creation")
    }

    /// A handle to the root group.
    #[must_use]
    pub fn root(&self) -> Group<P, K> {
        let root = self.root_node();
        // SAFETY: the root is online while the tree handle exists (its base reference is
        // only dropped in `Tree::drop`), so taking a reference is legal.
        unsafe { root.as_ref() }.refs.get(self.domain().hint());
        // SAFETY: we just took the reference the handle owns.
        unsafe { Group::from_node(root) }
    }

    /// The CPU provider.
    #[must_use]
    pub fn cpus(&self) -> &P {
        &self.domain().cpus
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
        let domain = self.domain();
        let guard = domain.epoch.pin_current_thread(domain.identity());
        if domain.reclaim_with(&guard) {
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
        let domain = self.domain();
        domain.epoch.register(domain.identity())
    }

    /// Whether `guard` was pinned in this tree's epoch.
    #[must_use]
    pub fn owns_guard(&self, guard: &Guard<'_>) -> bool {
        guard.owner() == self.domain().identity()
    }

    /// Whether `participant` belongs to this tree's epoch.
    #[must_use]
    pub fn owns_participant(&self, participant: &Participant<'_>) -> bool {
        participant.owner() == self.domain().identity()
    }

    /// One reclamation round (loom models keep their concurrent sections small).
    #[cfg(all(loom, test))]
    pub(crate) fn reclaim_once(&self) {
        self.domain().reclaim_once();
    }

    /// Hands released groups to the epoch collector and helps it along; in a quiescent
    /// process they are freed before this returns. Not for use inside a global allocator.
    pub fn reclaim(&self) {
        reclaim_orphans();
        let _ = self.domain().reclaim_pumped();
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

    /// Returns every CPU's stocked units of `group`'s subtree to the counters and drops the
    /// stock references, idle CPUs included (the object stocks' entries of the subtree's
    /// `ObjGroup`s first). `None` if another drain of the unit stock was under way (this call
    /// does not wait for it). CPUs inside a stock operation at that moment are skipped.
    ///
    /// ```
    /// use chargetree::group::{GroupSpec, Tree};
    ///
    /// let tree = Tree::new();
    /// let g = tree.root().create_child(GroupSpec::new()).unwrap();
    /// let _ = g.try_charge(1).unwrap(); // one walk charged a batch: 63 more are cached
    /// g.uncharge(1);
    /// assert_eq!(g.counter().usage(), 64);
    /// assert_eq!(tree.drain_all(&g), Some(64));
    /// assert_eq!(g.counter().usage(), 0, "exact once the stocks are drained");
    /// ```
    pub fn drain_all(&self, group: &Group<P, K>) -> Option<usize> {
        group.node().domain().drain_all(Some(group.node()))
    }

    /// Returns the calling CPU's stocked units to the counters and drops its stock references
    /// (the object stock first: its whole units pass through the unit entries). Returns the
    /// units returned from the unit entries.
    pub fn drain_local(&self) -> usize {
        self.domain().drain_local()
    }

    /// Whether remote drains use `membarrier(2)`, leaving the stock fast path without any
    /// fence (else both sides use `fence(SeqCst)`).
    #[must_use]
    pub fn stock_is_asymmetric(&self) -> bool {
        self.domain().stock.slots().is_asymmetric()
    }
}

impl<P: CpuProvider, const K: usize> OwnerCell<P, K> {
    /// An empty cell for groups of `tree`.
    #[must_use]
    pub fn empty(tree: &Tree<P, K>) -> Self {
        Self::empty_for(tree.domain().identity())
    }
}

impl<P: CpuProvider, const K: usize> Drop for Tree<P, K> {
    fn drop(&mut self) {
        let domain = self.domain();
        {
            let _topology = domain.topology.lock();
            // ORDERING: Relaxed; read and written under the topology flag.
            domain.closing.store(true, Ordering::Relaxed);
        }
        // Give every cached unit, byte and stock reference back, and cache no more.
        if !domain.close_caches() {
            // The heavy barrier failed (`membarrier` refused): the stocks cannot be taken
            // from their owners safely, so they are left as they are, and so are the exit
            // hooks that give them back when their threads exit. The tree's bookkeeping must
            // then outlive every hook: it keeps one share for good (a leak of its memory,
            // never a use-after-free).
            domain.leak_share();
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
        domain.detach();
        offline::offline_root(root);
        if !domain.reclaim_pumped() {
            // A thread pinned elsewhere holds the epoch back: what is released but not yet
            // freed is left to the next reclamation point (see `orphans.rs`).
            domain.list_as_orphan();
        }
        // The allocation's own pointer (the domain is at offset 0), not one derived from the
        // reference above: the last share frees the tree through it.
        let domain = self.inner.cast::<Domain<P, K>>();
        // SAFETY: the handle's share, given up; `self` is not used after this.
        unsafe { Domain::release_owner(domain) };
        reclaim_orphans();
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for Tree<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree").field("stats", &self.stats()).finish_non_exhaustive()
    }
}
