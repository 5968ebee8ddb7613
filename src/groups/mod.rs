//! The group layer (layer 3, above the counter and the stock): a group's node (its counter,
//! its reference count, its links and its lifecycle), the [`Group`] handle and its borrowed
//! form [`GroupRef`], owner cells, events, names, and the domain (`domain.rs`), the part of a
//! tree the group layer owns. It knows nothing of the charge engine, the object layer or the
//! tree above it; they add their methods to [`Group`] in their own modules, and reach their
//! own per-tree state through the domain. The public docs are those of
//! [`chargetree::group`](crate::group).

pub(crate) mod domain;
mod events;
pub(crate) mod name;
pub(crate) mod node;
pub(crate) mod orphans;
pub(crate) mod owner;
pub(crate) mod refcount;

pub use domain::Observer;
pub use events::{Event, EventCounts};
pub use name::GroupName;
pub use orphans::reclaim_orphans;
pub use owner::{MoveError, OwnerCell};

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::counter::{COUNTER_MAX, Counter, LimitError};
use crate::cpu::{CpuProvider, DefaultCpus};
use crate::epoch::Guard;
use crate::stock::STOCK_SLOTS;
use crate::sync::atomic::Ordering;
use node::Node;

/// A group's identifier, unique within its tree and never reused. Ids are dense: the root
/// is 0 and each successful [`Group::create_child`] takes the next number (a refused one
/// takes none), so the ids ever handed out are exactly `0..`[`TreeStats::created`](crate::group::TreeStats::created), and an
/// observer may index a table by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(usize);

impl GroupId {
    /// The id as a number: `0` for the root, then `1, 2, …` in creation order (dense, see
    /// above), so a table indexed by it needs no hashing.
    #[must_use]
    pub const fn index(self) -> usize {
        self.0
    }

    /// The id with index `index` (for tests and tables keyed by index; an id made up this
    /// way names whatever group was created `index`-th in some tree, if any).
    #[must_use]
    pub const fn from_index(index: usize) -> Self {
        Self(index)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Limits, protection and name of a new group, for [`Group::create_child`]. Every value is in
/// the tree's units; `usize::MAX` means "no limit".
///
/// ```
/// use chargetree::group::{GroupSpec, Tree};
/// use chargetree::counter::parse_amount;
///
/// let tree = Tree::new(); // units of 4 KiB pages
/// let spec = GroupSpec::new()
///     .name("tenant-a")
///     .max(parse_amount("1G", 4096).unwrap())
///     .high(parse_amount("768M", 4096).unwrap())
///     .low(parse_amount("256M", 4096).unwrap());
/// let a = tree.root().create_child(spec).unwrap();
/// assert_eq!((a.counter().max(), a.counter().low()), (262_144, 65_536));
/// ```
#[derive(Clone, Debug)]
pub struct GroupSpec<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) max: usize,
    pub(crate) high: usize,
    pub(crate) min: usize,
    pub(crate) low: usize,
    pub(crate) protection: bool,
    pub(crate) failcnt: bool,
}

impl Default for GroupSpec<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GroupSpec<'a> {
    /// No name, no limits, no protection; protection tracking and fail counting on.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            name: None,
            max: COUNTER_MAX,
            high: COUNTER_MAX,
            min: 0,
            low: 0,
            protection: true,
            failcnt: true,
        }
    }
    /// A name, for display.
    #[must_use]
    pub const fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }
    /// The hard limit.
    #[must_use]
    pub const fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }
    /// The throttling threshold.
    #[must_use]
    pub const fn high(mut self, high: usize) -> Self {
        self.high = high;
        self
    }
    /// Hard protection.
    #[must_use]
    pub const fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }
    /// Soft protection.
    #[must_use]
    pub const fn low(mut self, low: usize) -> Self {
        self.low = low;
        self
    }
    /// Whether the counter keeps protected-usage sums (default on).
    #[must_use]
    pub const fn track_protection(mut self, on: bool) -> Self {
        self.protection = on;
        self
    }
    /// Whether the counter counts failed charges (default on).
    #[must_use]
    pub const fn track_failcnt(mut self, on: bool) -> Self {
        self.failcnt = on;
        self
    }

    /// Checks that every value is representable.
    pub fn validate(&self) -> Result<(), LimitError> {
        for value in [self.max, self.high, self.min, self.low] {
            crate::counter::check_value(value)?;
        }
        Ok(())
    }
}

/// Why a group operation was refused. Nothing changed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupError {
    /// The parent is offline: it takes no new children.
    ParentOffline,
    /// The group is already offline.
    Offline,
    /// The group still has online children; offline them first.
    HasOnlineChildren {
        /// How many.
        online_children: usize,
    },
    /// The root goes offline only when its tree is dropped.
    Root,
    /// A limit in the spec is not representable.
    Limit(LimitError),
    /// The tree is being dropped: it takes no new groups.
    TreeClosed,
    /// The allocator refused the memory for the new group (Linux's `mkdir` returns
    /// `ENOMEM`): nothing was created, nothing is left allocated, no id was taken.
    OutOfMemory,
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::ParentOffline => f.write_str("the parent group is offline"),
            GroupError::Offline => f.write_str("the group is already offline"),
            GroupError::HasOnlineChildren { online_children } => {
                write!(f, "the group has {online_children} online children")
            }
            GroupError::Root => f.write_str("the root group cannot be taken offline"),
            GroupError::Limit(e) => write!(f, "invalid limit: {e}"),
            GroupError::TreeClosed => f.write_str("the tree is being dropped"),
            GroupError::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

impl core::error::Error for GroupError {}

/// A handle to a group: one reference. Clone is `css_get`, drop is `css_put`.
///
/// `Send + Sync`; cheap to clone (one atomic add on a per-CPU shard while the group is
/// online). The group lives while a handle (or a child, an `ObjGroup`, an owner cell, a
/// stock entry) references it; once offline and unreferenced it is freed.
///
/// ```
/// use chargetree::group::{GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let job = tree.root().create_child(GroupSpec::new().name("job").max(100)).unwrap();
/// let for_worker = job.clone(); // another reference, for another thread
/// std::thread::spawn(move || {
///     let _ = for_worker.try_charge(10).unwrap();
///     for_worker.uncharge(10);
/// })
/// .join()
/// .unwrap();
/// job.offline().unwrap(); // no new children; freed once the last handle is gone
/// ```
pub struct Group<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    node: NonNull<Node<P, K>>,
    _owns: PhantomData<Node<P, K>>,
}

// SAFETY: the node's shared state is atomics, or guarded by the tree's topology flag; the
// handle only owns a reference, which any thread may drop.
unsafe impl<P: CpuProvider, const K: usize> Send for Group<P, K> {}
// SAFETY: see `Send`; `&Group` only allows shared-state operations.
unsafe impl<P: CpuProvider, const K: usize> Sync for Group<P, K> {}

impl<P: CpuProvider, const K: usize> Group<P, K> {
    /// Wraps a node whose reference the caller gives to the handle.
    ///
    /// # Safety
    ///
    /// The caller owns one reference on `node` and transfers it.
    #[inline]
    pub(crate) unsafe fn from_node(node: NonNull<Node<P, K>>) -> Self {
        Self { node, _owns: PhantomData }
    }

    /// Gives up the handle without dropping its reference.
    #[inline]
    pub(crate) fn into_node(self) -> NonNull<Node<P, K>> {
        let node = self.node;
        core::mem::forget(self);
        node
    }

    #[inline]
    pub(crate) fn node(&self) -> &Node<P, K> {
        // SAFETY: the handle owns a reference, so the node is alive.
        unsafe { self.node.as_ref() }
    }

    #[inline]
    pub(crate) fn node_ptr(&self) -> NonNull<Node<P, K>> {
        self.node
    }

    /// The group's counter: charge, uncharge, limits, protection, peaks.
    ///
    /// Borrowed from this handle, and so are the counters reached from it
    /// ([`Counter::parent`], [`ChargeError::Limit`](crate::counter::ChargeError::Limit)'s
    /// `at`): the handle's reference keeps the group's node and, through it, every ancestor
    /// alive, and nothing else is guaranteed to. Clone the handle (or take
    /// [`Group::parent`]) to keep a group beyond this borrow.
    ///
    /// ```compile_fail
    /// use chargetree::group::{GroupSpec, Tree};
    ///
    /// let tree = Tree::new();
    /// let escaped = {
    ///     let child = tree.root().create_child(GroupSpec::new()).unwrap();
    ///     child.counter().parent().unwrap() // error: `child` does not live long enough
    /// };
    /// drop(tree);
    /// let _ = escaped.usage();
    /// ```
    #[inline]
    #[must_use]
    pub fn counter(&self) -> &Counter<'_> {
        &self.node().counter
    }

    /// The group's id.
    #[must_use]
    pub fn id(&self) -> GroupId {
        self.node().id
    }

    /// The group's name, if it was given one.
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        self.node().name()
    }

    /// Whether the group is online.
    #[must_use]
    pub fn is_online(&self) -> bool {
        self.node().is_online()
    }

    /// Whether this is the root of its tree.
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.node().parent.is_none()
    }

    /// The parent group.
    #[must_use]
    pub fn parent(&self) -> Option<Group<P, K>> {
        let parent = self.node().parent?;
        // SAFETY: this node owns a reference on its parent, so the parent's count is
        // non-zero and a plain get is legal (css_get rule).
        unsafe { parent.as_ref() }.refs.get(self.node().hint());
        // SAFETY: the reference just taken is the handle's.
        Some(unsafe { Group::from_node(parent) })
    }

    /// Whether both handles refer to the same group.
    #[must_use]
    pub fn ptr_eq(&self, other: &Group<P, K>) -> bool {
        self.node == other.node
    }

    /// Whether `ancestor` is this group or one of its ancestors.
    #[must_use]
    pub fn is_descendant_of(&self, ancestor: &Group<P, K>) -> bool {
        self.node().is_descendant_of(ancestor.node())
    }

    /// The number of references (a racy statistic while the group is online).
    #[must_use]
    pub fn ref_count(&self) -> usize {
        self.node().refs.count()
    }

    /// Creates an online child with `spec`'s limits. Refused if this group is offline.
    pub fn create_child(&self, spec: GroupSpec<'_>) -> Result<Group<P, K>, GroupError> {
        reclaim_orphans();
        let tree = self.node().domain();
        // Two references: the base (online membership) and the returned handle. The id is
        // assigned below, once the creation cannot be refused any more, so ids stay dense.
        // SAFETY: the domain outlives the node; the child is given a reference on this group
        // below (before it can be reached), which `Node::free` drops.
        let child =
            unsafe { Node::alloc(self.node().domain, Some(self.node), GroupId(usize::MAX), &spec, 2) }?;

        {
            let _topology = tree.topology.lock();
            // ORDERING: Relaxed; `closing` is written under the topology flag we hold.
            let refused = if tree.closing.load(Ordering::Relaxed) {
                Some(GroupError::TreeClosed)
            } else if !self.node().is_online() {
                Some(GroupError::ParentOffline)
            } else {
                None
            };
            if let Some(e) = refused {
                drop(_topology);
                // SAFETY: never linked or shared; allocated by `Node::alloc`.
                unsafe { Node::discard(child) };
                return Err(e);
            }
            // Ids are taken under the flag and only by creations that succeed: the groups of
            // a tree are numbered 0, 1, 2, … in creation order, with no holes.
            // SAFETY: the child is not shared yet; nobody else reads its id.
            unsafe { (*child.as_ptr()).id = tree.next_id() };
            // The child's reference on its parent. We hold one, so get is legal.
            self.node().refs.get(self.node().hint());
            // SAFETY: topology flag held; the child is new and unlinked.
            unsafe { Node::link(child) };
        }
        tree.note_created();
        // SAFETY: one of the two initial references is the handle's.
        Ok(unsafe { Group::from_node(child) })
    }

    /// Raises `event` on this group (local count) and its ancestors (hierarchical count).
    pub fn raise_event(&self, event: Event) {
        self.node().raise(event);
    }

    /// Events raised on this group itself (`memory.events.local`).
    #[must_use]
    pub fn events_local(&self) -> EventCounts {
        self.node().events.local()
    }

    /// Events raised on this group or its descendants (`memory.events`).
    #[must_use]
    pub fn events(&self) -> EventCounts {
        self.node().events.hierarchical()
    }

    /// The first child (in creation order, newest first) whose `tryget` succeeds.
    #[must_use]
    pub fn first_child(&self) -> Option<Group<P, K>> {
        let tree = self.node().domain();
        let _topology = tree.topology.lock();
        // SAFETY: topology flag held.
        let mut p = self.node().topo.with(|t| unsafe { (*t).first_child });
        self.first_tryget_from(&mut p)
    }

    /// The next sibling whose `tryget` succeeds.
    #[must_use]
    pub fn next_sibling(&self) -> Option<Group<P, K>> {
        let tree = self.node().domain();
        let _topology = tree.topology.lock();
        // SAFETY: topology flag held; this node is alive (we hold it) hence linked.
        let mut p = self.node().topo.with(|t| unsafe { (*t).next });
        self.first_tryget_from(&mut p)
    }

    /// Walks siblings from `*p` until a tryget succeeds. Topology flag must be held.
    fn first_tryget_from(&self, p: &mut *mut Node<P, K>) -> Option<Group<P, K>> {
        let hint = self.node().hint();
        while let Some(n) = NonNull::new(*p) {
            // SAFETY: linked nodes are alive until freed, and freeing unlinks under the
            // topology flag, which the caller holds.
            let node = unsafe { n.as_ref() };
            if node.refs.tryget(hint) {
                // SAFETY: the reference just taken is the handle's.
                return Some(unsafe { Group::from_node(n) });
            }
            // SAFETY: topology flag held.
            *p = node.topo.with(|t| unsafe { (*t).next });
        }
        None
    }

    /// The children, each as a handle (allocates a `Vec`).
    #[must_use]
    pub fn children(&self) -> alloc_crate::vec::Vec<Group<P, K>> {
        let mut out = alloc_crate::vec::Vec::new();
        let mut c = self.first_child();
        while let Some(g) = c {
            c = g.next_sibling();
            out.push(g);
        }
        out
    }

    /// The pre-order successor of this group within the subtree of `root` (Linux's
    /// `css_next_descendant_pre`), or `None` at the end. Allocation-free: a subtree walk
    /// holds one handle at a time.
    #[must_use]
    pub fn next_pre(&self, root: &Group<P, K>) -> Option<Group<P, K>> {
        if let Some(c) = self.first_child() {
            return Some(c);
        }
        let mut pos = self.clone();
        loop {
            if pos.ptr_eq(root) {
                return None;
            }
            if let Some(s) = pos.next_sibling() {
                return Some(s);
            }
            pos = pos.parent()?;
        }
    }
}

impl<P: CpuProvider, const K: usize> Clone for Group<P, K> {
    #[inline]
    fn clone(&self) -> Self {
        self.node().refs.get(self.node().hint());
        // SAFETY: the reference just taken is the new handle's.
        unsafe { Group::from_node(self.node) }
    }
}

impl<P: CpuProvider, const K: usize> Drop for Group<P, K> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the handle owns one reference and gives it up.
        unsafe { Node::put(self.node) };
    }
}

impl<P: CpuProvider, const K: usize> PartialEq for Group<P, K> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}
impl<P: CpuProvider, const K: usize> Eq for Group<P, K> {}

impl<P: CpuProvider, const K: usize> fmt::Debug for Group<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("online", &self.is_online())
            .field("counter", self.counter())
            .finish()
    }
}

/// A group pointer borrowed under an epoch guard: dereferenceable while the guard lives,
/// but owning nothing. Turn it into a [`Group`] with [`tryget`](GroupRef::tryget) or
/// [`tryget_online`](GroupRef::tryget_online).
pub struct GroupRef<'g, P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    node: NonNull<Node<P, K>>,
    _guard: PhantomData<&'g Node<P, K>>,
}

impl<P: CpuProvider, const K: usize> Clone for GroupRef<'_, P, K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: CpuProvider, const K: usize> Copy for GroupRef<'_, P, K> {}

impl<'g, P: CpuProvider, const K: usize> GroupRef<'g, P, K> {
    /// # Safety
    ///
    /// `node` was loaded from a place that owned a reference on it, under `guard`, so its
    /// memory stays valid for `'g` (it can only be freed after the guard is dropped).
    #[inline]
    pub(crate) unsafe fn new(node: NonNull<Node<P, K>>, _guard: &'g Guard<'_>) -> Self {
        Self { node, _guard: PhantomData }
    }

    #[inline]
    fn node(&self) -> &'g Node<P, K> {
        // SAFETY: valid for 'g by construction (see `new`).
        unsafe { &*self.node.as_ptr() }
    }

    /// The group's counter (readable even if the group was released meanwhile), borrowed
    /// for the guard's lifetime like the `GroupRef` itself: the node and its ancestors are
    /// not freed before the guard is dropped.
    #[must_use]
    pub fn counter(&self) -> &'g Counter<'g> {
        &self.node().counter
    }

    /// The group's id.
    #[must_use]
    pub fn id(&self) -> GroupId {
        self.node().id
    }

    /// Whether the group is online.
    #[must_use]
    pub fn is_online(&self) -> bool {
        self.node().is_online()
    }

    /// A handle, unless the group's count already reached zero (`css_tryget`).
    #[must_use]
    pub fn tryget(&self) -> Option<Group<P, K>> {
        let node = self.node();
        if node.refs.tryget(node.hint()) {
            // SAFETY: the reference just taken is the handle's.
            Some(unsafe { Group::from_node(self.node) })
        } else {
            None
        }
    }

    /// A handle, unless the group is offline (`css_tryget_online`): for lookups whose
    /// result will be charged in the future.
    #[must_use]
    pub fn tryget_online(&self) -> Option<Group<P, K>> {
        let node = self.node();
        if node.refs.tryget_live(node.hint()) {
            // SAFETY: the reference just taken is the handle's.
            Some(unsafe { Group::from_node(self.node) })
        } else {
            None
        }
    }

    /// Whether this is the same group as `group`.
    #[must_use]
    pub fn is(&self, group: &Group<P, K>) -> bool {
        self.node == group.node
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for GroupRef<'_, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupRef").field("id", &self.id()).field("online", &self.is_online()).finish()
    }
}
