//! In-crate tests that need private access or loom (sharded-slab's `src/tests/` layout):
//! loom models under `cfg(loom)`, property tests against [`crate::model`] otherwise.

#[cfg(all(not(loom), feature = "std"))]
mod footprint;
#[cfg(loom)]
mod loom_counter;
#[cfg(all(loom, crossbeam_loom, feature = "alloc"))]
mod loom_group;
#[cfg(all(loom, crossbeam_loom, feature = "alloc"))]
mod loom_objgroup;
#[cfg(all(loom, crossbeam_loom, feature = "alloc"))]
mod loom_stock;
#[cfg(not(loom))]
mod properties;

use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;

use crate::counter::Counter;

/// Runs `f` with this (loom) thread on impersonated CPU `cpu`.
#[cfg(loom)]
#[cfg_attr(not(all(crossbeam_loom, feature = "alloc")), allow(dead_code))]
pub(crate) fn on<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    // SAFETY: the models never have two threads inside `on` with the same CPU at the same
    // time: each concurrent section names at most one thread per CPU (drainers and
    // reclaimers run on none).
    unsafe { crate::cpu::TestCpus::run_on(cpu, f) }
}

/// A tree of heap-allocated counters with `'static` parent references, freed children-first
/// when dropped. Tests only: it lets random tree shapes be built without self-references.
pub(crate) struct Forest {
    nodes: Vec<*mut Counter<'static>>,
}

// SAFETY: the forest only hands out shared references to `Counter`s, which are `Sync`; the
// raw pointers are owned boxes freed once, in `Drop`, when no reference can remain (every
// reference borrows the forest).
unsafe impl Send for Forest {}
// SAFETY: see `Send`.
unsafe impl Sync for Forest {}

impl Forest {
    pub(crate) fn new() -> Self {
        Self { nodes: Vec::new() }
    }

    /// Adds a counter under node `parent` (or a top counter) and returns its index.
    pub(crate) fn add(&mut self, parent: Option<usize>) -> usize {
        let parent: Option<&'static Counter<'static>> = parent.map(|i| {
            // SAFETY: node `i` is a live box owned by this forest; it is freed only in
            // `Drop`, after every node created below it (reverse order), so the `'static`
            // reference stored in the child never dangles while the child exists.
            unsafe { &*self.nodes[i] }
        });
        self.nodes.push(Box::into_raw(Box::new(Counter::new(parent))));
        self.nodes.len() - 1
    }

    pub(crate) fn get(&self, i: usize) -> &Counter<'static> {
        // SAFETY: a live box owned by the forest; the returned borrow ends before `Drop`.
        unsafe { &*self.nodes[i] }
    }

    #[cfg_attr(loom, allow(dead_code))] // the loom models index nodes they created
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

impl Drop for Forest {
    fn drop(&mut self) {
        for &p in self.nodes.iter().rev() {
            // SAFETY: each pointer came from `Box::into_raw` and is freed exactly once here;
            // children (later indices) go first, so no live counter refers to a freed parent.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
