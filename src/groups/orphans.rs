//! Trees whose [`Tree`](super::Tree) handle is gone while groups of theirs are still being
//! released: the allocator rule in the dropped-tree state.
//!
//! A last `put` may run inside a global allocator's `dealloc`, so it may only queue the node
//! it released (a lock-free push). While the tree handle exists, the tree's next
//! non-allocator operation hands the queue to the epoch collector. Once the handle is gone
//! there may never be another operation on the tree, so a release in a detached tree also
//! puts the tree on a process-wide lock-free list of *orphans* (once: a flag says whether it
//! is on the list; the list owns one share of the tree while it is). Every non-allocator
//! entry point of the crate (creating or dropping a tree, [`Tree::reclaim`](super::Tree::reclaim),
//! [`Tree::pin`](super::Tree::pin), creating a group, taking one offline, getting an
//! `ObjGroup`) and the explicit [`reclaim_orphans`] take the list and reclaim each orphan.
//! An orphan nobody reclaims stays reachable from the list until the process exits (so leak
//! checkers do not report it), and costs its groups' memory, nothing else.
//!
//! # Protocol Q (release in a detached tree vs reclamation of the orphan)
//!
//! | step | releaser (inside `publish_released`) | reclaimer ([`reclaim_orphans`]) |
//! |------|----------------------------------------|---------------------------------|
//! | 1 | push the node on the tree's released list (Release CAS) | take the whole orphan list (Acquire swap) |
//! | 2 | `queued.swap(true)` (AcqRel) | per tree: `queued.swap(false)` (AcqRel) |
//! | 3 | was `false` → take a share for the list, push the tree (Release CAS) | reclaim the tree's released lists, then give up the list's share |
//!
//! `queued` is only changed by RMWs, so they are totally ordered. If the releaser's swap
//! comes after the reclaimer's, it reads `false` and lists the tree again. If it comes
//! before, the reclaimer's swap reads the `true` it wrote and synchronises with it, so the
//! reclaimer's step 3 sees the node pushed in the releaser's step 1. Either way no released
//! node of a detached tree is stranded. The loom model is `src/tests/loom_group.rs`,
//! `detached_release_vs_orphan_reclaim`.

use core::ptr::{self, NonNull};

use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// The link a tree is listed with. Lives inside the tree's shared state.
pub(crate) struct OrphanLink {
    next: AtomicPtr<OrphanLink>,
    queued: AtomicBool,
    /// The tree this link belongs to, for `reclaim`.
    owner: AtomicPtr<()>,
    /// Reclaims the tree `owner` points at, then gives up the list's share of it.
    reclaim: unsafe fn(NonNull<()>),
}

#[cfg(not(loom))]
static ORPHANS: AtomicPtr<OrphanLink> = AtomicPtr::new(ptr::null_mut());
/// How many `reclaim_orphans` calls are working on a batch they took.
#[cfg(not(loom))]
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

#[cfg(loom)]
loom::lazy_static! {
    static ref ORPHANS: AtomicPtr<OrphanLink> = AtomicPtr::new(ptr::null_mut());
    static ref ACTIVE: AtomicUsize = AtomicUsize::new(0);
}

impl OrphanLink {
    crate::const_fn! {
        /// An unlisted link for a tree reclaimed by `reclaim`; [`OrphanLink::set_owner`]
        /// must name the tree before the link is listed.
        pub(crate) const fn new(reclaim: unsafe fn(NonNull<()>)) -> Self {
            Self {
                next: AtomicPtr::new(ptr::null_mut()),
                queued: AtomicBool::new(false),
                owner: AtomicPtr::new(ptr::null_mut()),
                reclaim,
            }
        }
    }

    /// Names the tree (its address, once it has one).
    pub(crate) fn set_owner(&self, owner: NonNull<()>) {
        // ORDERING: Relaxed; published with the tree itself (before any release can list it).
        self.owner.store(owner.as_ptr(), Ordering::Relaxed);
    }

    /// Steps 2–3 of protocol Q, releaser side: lists the tree unless it is listed. Returns
    /// `true` if the caller must give the list one share of the tree (it was not listed);
    /// the caller takes that share *before* calling [`OrphanLink::push`].
    #[must_use]
    pub(crate) fn mark(&self) -> bool {
        // ORDERING: AcqRel; see protocol Q (the reclaimer's swap synchronises with this one).
        !self.queued.swap(true, Ordering::AcqRel)
    }

    /// Pushes the link onto the orphan list (after [`OrphanLink::mark`] returned `true`).
    pub(crate) fn push(&self) {
        let me = ptr::from_ref(self).cast_mut();
        // ORDERING: Relaxed initial load; the CAS publishes.
        let mut head = ORPHANS.load(Ordering::Relaxed);
        loop {
            // ORDERING: Relaxed; published by the Release CAS below.
            self.next.store(head, Ordering::Relaxed);
            // ORDERING: Release pairs with the Acquire swap in `reclaim_orphans`.
            match ORPHANS.compare_exchange_weak(head, me, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

/// Reclaims the groups of every tree whose [`Tree`](crate::group::Tree) handle was dropped while
/// some of its groups were still referenced, and that have been released since: frees their
/// memory, and each tree's bookkeeping with its last group.
///
/// The crate calls this itself at every non-allocator entry point (creating or dropping a
/// tree, `Tree::reclaim`, `Tree::pin`, creating a group, taking one offline, getting an
/// `ObjGroup`); call it after dropping a tree's last handles if nothing else follows. Not for
/// use inside a global allocator: it pins epochs, frees memory and drops observers.
///
/// ```
/// use chargetree::group::{reclaim_orphans, GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let g = tree.root().create_child(GroupSpec::new()).unwrap();
/// drop(tree); // g keeps the tree's bookkeeping alive
/// drop(g); // may run inside an allocator: only queues
/// reclaim_orphans(); // frees g, the root and the tree's bookkeeping
/// ```
pub fn reclaim_orphans() {
    // ORDERING: SeqCst fast check (both words): pairs with the SeqCst updates below, so a
    // call that returns here saw no batch taken before it still being worked on.
    if ORPHANS.load(Ordering::SeqCst).is_null() && ACTIVE.load(Ordering::SeqCst) == 0 {
        return;
    }
    // ORDERING: SeqCst, see above: counted as active before taking a batch.
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    // ORDERING: Acquire pairs with the Release CAS in `push`: the links are initialised.
    let mut p = ORPHANS.swap(ptr::null_mut(), Ordering::Acquire);
    while let Some(link) = NonNull::new(p) {
        // SAFETY: a listed link belongs to a tree the list holds a share of, so it is alive
        // until `reclaim` below gives that share up; we own the taken list.
        let l = unsafe { link.as_ref() };
        // ORDERING: Relaxed; this list is ours.
        p = l.next.load(Ordering::Relaxed);
        // ORDERING: AcqRel; protocol Q, step 2 on the reclaimer's side.
        l.queued.swap(false, Ordering::AcqRel);
        // ORDERING: Relaxed; set before the tree could be listed, published by the CAS.
        let owner = NonNull::new(l.owner.load(Ordering::Relaxed)).expect("set at creation");
        // SAFETY: the list's share, handed to `reclaim`, which gives it up last (or lists
        // the tree again with it); `l` is not used after this.
        unsafe { (l.reclaim)(owner) };
    }
    // ORDERING: SeqCst, see the fast check.
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    // Another call may have taken orphans released before this one started: wait until it
    // is done, so that whatever was released before this call is freed when it returns
    // (unless a thread pinned elsewhere holds the epoch back: then it stays listed).
    while ACTIVE.load(Ordering::SeqCst) != 0 {
        crate::sync::yield_now();
    }
}
