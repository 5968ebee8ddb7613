//! Epoch-based reclamation: the only module that names `crossbeam-epoch`.
//!
//! A group's memory is freed only after (a) its reference count reached zero and (b) every
//! reader that was pinned at that moment has unpinned: Linux's "release, then free after an
//! RCU grace period". Readers that load a group pointer from a shared place (an
//! [`OwnerCell`](crate::group::OwnerCell), a remote stock slot) do so under a [`Guard`], may
//! dereference it for the guard's lifetime, and turn it into an owned handle only with
//! `tryget`.
//!
//! # Pinning
//!
//! * With `std`, [`Tree::pin`](crate::group::Tree::pin) pins the current thread: each thread
//!   gets a participant of the tree's collector on first use, kept in a small thread-local
//!   cache.
//! * Without `std` (or to avoid thread-locals), the embedder registers one [`Participant`]
//!   per CPU or execution context with [`Tree::register`](crate::group::Tree::register) and
//!   pins through it. A participant is `!Send` and `!Sync`: it must be used by one context
//!   at a time.
//!
//! # What never pins
//!
//! Pinning may collect garbage, and collecting may allocate (crossbeam pushes sealed bags
//! onto a queue) and run deferred destructors. So nothing an allocator reaches (charge,
//! uncharge, stock operations, handle clone/drop, byte charging) pins: those paths hold
//! owned references instead of guards, and a released group is only *queued* there
//! (without allocating); it is handed to the collector by the next non-allocator operation
//! on the tree (group creation, offline, [`Tree::reclaim`](crate::group::Tree::reclaim),
//! `Tree::pin`, dropping the tree).

use alloc_crate::boxed::Box;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;

use crate::sync::atomic::{AtomicPtr, Ordering};

use crossbeam_epoch as cb;

/// A pinned epoch: while it lives, no group whose pointer was loaded under it is freed.
///
/// Obtained from [`Tree::pin`](crate::group::Tree::pin) (with `std`) or
/// [`Participant::pin`]. It borrows its tree (`'t`), so the tree outlives it and its
/// identity cannot be taken over by a new tree while it exists. Guards of one tree cannot
/// protect reads of another tree's groups; the APIs that take a guard check this and panic
/// on a mismatch.
pub struct Guard<'t> {
    inner: cb::Guard,
    /// Identity (address) of the tree whose epoch this is. Compared, never dereferenced.
    owner: usize,
    _tree: PhantomData<&'t ()>,
}

impl Guard<'_> {
    /// The identity of the tree this guard was pinned in (an address, never dereferenced).
    #[inline]
    pub(crate) fn owner(&self) -> usize {
        self.owner
    }

    /// Moves this thread's deferred work to the collector and tries to advance the epoch,
    /// so that garbage queued so far can be freed sooner.
    pub fn flush(&self) {
        self.inner.flush();
    }

    /// Defers `f` until no thread pinned now (or earlier) is still pinned.
    ///
    /// # Safety
    ///
    /// `f` must be safe to run on any thread, at any later time, as crossbeam's
    /// `Guard::defer_unchecked` requires: whatever it touches must stay valid until it runs.
    /// It should capture at most three words, so that deferring it does not allocate a box.
    pub(crate) unsafe fn defer<F: FnOnce() + Send>(&self, f: F) {
        // SAFETY: forwarded to the caller: `f` touches only memory that stays valid until it
        // runs (the node it frees is unreachable and owned by the deferred call).
        unsafe { self.inner.defer_unchecked(f) };
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Guard { .. }")
    }
}

/// One participant in a tree's epoch: what a CPU or thread pins through.
///
/// `!Send` and `!Sync` (crossbeam's `LocalHandle`): keep one per execution context. It
/// borrows its tree, so the tree cannot be dropped (and its identity reused) while it lives:
///
/// ```compile_fail
/// let tree = chargetree::group::Tree::new();
/// let participant = tree.register();
/// drop(tree); // error: `tree` is borrowed by `participant`
/// let _guard = participant.pin();
/// ```
pub struct Participant<'t> {
    // Field order matters: the handle is dropped before the collector clone, so crossbeam's
    // `Local::finalize` never drops the last `Collector` while it still runs on the `Local`
    // (crossbeam-rs/crossbeam#545, which miri's Tree Borrows reports).
    handle: cb::LocalHandle,
    _collector: cb::Collector,
    owner: usize,
    _tree: PhantomData<&'t ()>,
}

impl<'t> Participant<'t> {
    /// Pins this participant. Nested pins are allowed and cheap.
    #[must_use]
    pub fn pin(&self) -> Guard<'t> {
        Guard { inner: self.handle.pin(), owner: self.owner, _tree: PhantomData }
    }

    /// The identity of the tree this participant belongs to.
    #[inline]
    pub(crate) fn owner(&self) -> usize {
        self.owner
    }
}

impl fmt::Debug for Participant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Participant { .. }")
    }
}

/// A tree's collector, created on first use: crossbeam allocates it infallibly, and a tree
/// is created fallibly (`Tree::try_with_config`), so the collector waits for the first pin
/// or reclamation, which are never on an allocator path and may allocate anyway.
pub(crate) struct Epoch {
    collector: AtomicPtr<cb::Collector>,
}

impl Epoch {
    crate::const_fn! {
        pub(crate) const fn new() -> Self {
            Self { collector: AtomicPtr::new(ptr::null_mut()) }
        }
    }

    /// The collector, created by the first caller.
    fn collector(&self) -> &cb::Collector {
        // ORDERING: Acquire pairs with the AcqRel CAS below: the collector is initialised.
        let mut p = self.collector.load(Ordering::Acquire);
        if p.is_null() {
            let mine = Box::into_raw(Box::new(cb::Collector::new()));
            // ORDERING: AcqRel: Release publishes ours, Acquire takes another creator's.
            match self.collector.compare_exchange(ptr::null_mut(), mine, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => p = mine,
                Err(theirs) => {
                    // SAFETY: ours, never shared.
                    drop(unsafe { Box::from_raw(mine) });
                    p = theirs;
                }
            }
        }
        // SAFETY: set once, never changed, freed only in `Drop` (which has `&mut self`).
        unsafe { &*p }
    }

    /// A new participant (allocates its registration) of the tree identified by `owner`.
    pub(crate) fn register<'t>(&'t self, owner: usize) -> Participant<'t> {
        let collector = self.collector();
        Participant { handle: collector.register(), _collector: collector.clone(), owner, _tree: PhantomData }
    }

    /// Pins the current thread through a thread-local participant of this collector.
    #[cfg(all(feature = "std", not(loom)))]
    pub(crate) fn pin_current_thread<'t>(&'t self, owner: usize) -> Guard<'t> {
        Guard { inner: tls::pin(self.collector()), owner, _tree: PhantomData }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // ORDERING: Acquire, as in `collector` (we have `&mut self`: nobody races).
        let p = self.collector.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: created by `collector` with `Box::into_raw`, dropped once, here.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Epoch { .. }")
    }
}

#[cfg(all(feature = "std", not(loom)))]
mod tls {
    use core::cell::RefCell;

    use arrayvec::ArrayVec;
    use crossbeam_epoch as cb;

    /// How many trees a thread keeps a participant for; the least recently used is dropped
    /// (unregistered) beyond that. A participant holds its collector alive, so the cache
    /// also bounds how long a dropped tree's collector lingers on an idle thread.
    const CACHED: usize = 8;

    /// A cached participant. Field order: the handle drops before the collector clone (see
    /// `Participant`).
    struct Cached {
        handle: cb::LocalHandle,
        _collector: cb::Collector,
    }

    std::thread_local! {
        static HANDLES: RefCell<ArrayVec<Cached, CACHED>> = const { RefCell::new(ArrayVec::new_const()) };
    }

    pub(super) fn pin(collector: &cb::Collector) -> cb::Guard {
        HANDLES
            .try_with(|cell| {
                let mut handles = cell.borrow_mut();
                let found = handles.iter().position(|h| h.handle.collector() == collector);
                let i = match found {
                    Some(i) => i,
                    None => {
                        if handles.is_full() {
                            // Evict the least recently used (the front).
                            handles.remove(0);
                        }
                        handles.push(Cached { handle: collector.register(), _collector: collector.clone() });
                        handles.len() - 1
                    }
                };
                // Move to the back: most recently used.
                if i + 1 != handles.len() {
                    let h = handles.remove(i);
                    handles.push(h);
                }
                handles.last().expect("just pushed").handle.pin()
            })
            // During thread teardown the cache is gone: pin through a fresh participant. The
            // guard keeps the participant's registration alive until it is dropped.
            .unwrap_or_else(|_| collector.register().pin())
    }
}
