//! [`LazyTree`]: a tree in a `static`, built on first use.

use core::fmt;
use core::mem::MaybeUninit;
use core::ops::Deref;

use super::{Tree, TreeConfig};
use crate::cpu::{CpuProvider, DefaultCpus};
use crate::stock::STOCK_SLOTS;
use crate::sync::atomic::{AtomicU8, Ordering};
use crate::sync::cell::UnsafeCell;

const EMPTY: u8 = 0;
const BUILDING: u8 = 1;
const READY: u8 = 2;

/// A [`Tree`] that lives in a `static` (for tenants that live as long as the process, such as
/// an accounting allocator's), built from `config()` by the first access and never dropped.
///
/// No allocation happens before the first access. The first access builds the tree (it
/// allocates; an accounting global allocator passes such nested allocations through
/// uncharged); concurrent first accesses wait for it. `no_std` too: the wait spins.
///
/// ```
/// use chargetree::group::{GroupSpec, LazyTree, TreeConfig};
///
/// static TENANTS: LazyTree = LazyTree::new(TreeConfig::new);
///
/// let a = TENANTS.root().create_child(GroupSpec::new().name("a").max(100)).unwrap();
/// let _ = a.try_charge(10).unwrap();
/// assert!(TENANTS.root().counter().usage() >= 10);
/// a.uncharge(10);
/// ```
pub struct LazyTree<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    state: AtomicU8,
    config: fn() -> TreeConfig<P, K>,
    tree: UnsafeCell<MaybeUninit<Tree<P, K>>>,
}

// SAFETY: `tree` is written once, by the one caller that moved `state` from EMPTY to BUILDING,
// before it publishes READY with a Release store; it is only read after an Acquire load of
// READY, and never written again (nor dropped: statics are not). `Tree` is `Send + Sync`.
unsafe impl<P: CpuProvider, const K: usize> Sync for LazyTree<P, K> {}
// SAFETY: see `Sync`; moving a `LazyTree` moves an owned `Tree` (which is `Send`), if any.
unsafe impl<P: CpuProvider, const K: usize> Send for LazyTree<P, K> {}

impl<P: CpuProvider, const K: usize> LazyTree<P, K> {
    /// A tree built from `config()` on first use.
    #[must_use]
    pub const fn new(config: fn() -> TreeConfig<P, K>) -> Self {
        Self { state: AtomicU8::new(EMPTY), config, tree: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// The tree, built now if this is the first access.
    ///
    /// # Panics
    ///
    /// As [`Tree::with_config`]; a later access then tries again.
    pub fn get(&self) -> &Tree<P, K> {
        // ORDERING: Acquire pairs with the Release store of READY below: the tree is written.
        if self.state.load(Ordering::Acquire) != READY {
            self.build();
        }
        // SAFETY: READY was seen (here or in `build`, with Acquire): the tree is initialised
        // and never written again.
        self.tree.with(|t| unsafe { (*t).assume_init_ref() })
    }

    #[cold]
    fn build(&self) {
        loop {
            // ORDERING: Acquire on success or failure: a READY seen makes the tree visible.
            match self.state.compare_exchange(EMPTY, BUILDING, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(READY) => return,
                Err(_) => crate::sync::spin_loop(), // another caller is building it
            }
        }
        /// Puts the state back if building panics, so that a later access tries again.
        struct Reset<'a>(&'a AtomicU8);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                // ORDERING: Release; nothing was published.
                self.0.store(EMPTY, Ordering::Release);
            }
        }
        let reset = Reset(&self.state);
        let tree = Tree::with_config((self.config)());
        // SAFETY: BUILDING is ours: nobody else reads or writes `tree` until READY.
        self.tree.with_mut(|t| unsafe { (*t).write(tree) });
        core::mem::forget(reset);
        // ORDERING: Release publishes the tree to the Acquire loads of READY.
        self.state.store(READY, Ordering::Release);
    }
}

impl<P: CpuProvider, const K: usize> Deref for LazyTree<P, K> {
    type Target = Tree<P, K>;

    fn deref(&self) -> &Tree<P, K> {
        self.get()
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for LazyTree<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ORDERING: Acquire, as in `get`.
        if self.state.load(Ordering::Acquire) == READY {
            f.debug_tuple("LazyTree").field(self.get()).finish()
        } else {
            f.pad("LazyTree { <not built> }")
        }
    }
}
