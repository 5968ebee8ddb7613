//! Helpers of the group chapters (`tests/group_*.rs`): trees with a logging observer, settling
//! reclamation, lifecycle counts.
//!
//! Under miri the loops shrink (`scaled`), and the chapters pass with
//! `MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-stacked-borrows"` (use-after-free,
//! data races and leaks are still checked). They cannot run with `-Zmiri-strict-provenance`:
//! crossbeam-epoch 0.9.21 casts integers to pointers (`atomic.rs:204`) on the first pin. Nor
//! under an aliasing model: Stacked Borrows rejects crossbeam-epoch's `List` iteration, and
//! Tree Borrows rejects `Local::finalize` dropping the last `Collector` reference while
//! `&self` is live (crossbeam-rs/crossbeam#545). Every tree's collector hits the second one,
//! because the thread-local participant cache outlives the tree.

use super::{Log, Obs};

use std::sync::Arc;

use chargetree::cpu::{CpuProvider, TestCpus, ThreadCpus};
use chargetree::group::{Group, GroupId, GroupSpec, OwnerCell, Tree, TreeConfig, TreeStats};

/// A tree with four impersonated CPUs and a logging observer.
pub(crate) fn test_tree() -> (Tree<TestCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    let config = TreeConfig::with_cpus(TestCpus::new(4)).observer(Obs(log.clone()));
    (Tree::with_config(config), log)
}

/// A tree with the default CPU provider (one slot per thread) and a logging observer.
pub(crate) fn thread_tree() -> (Tree<ThreadCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    (Tree::with_config(TreeConfig::new().observer(Obs(log.clone()))), log)
}

/// Reclaims until nothing more is freed (a released chain may need one round per level).
pub(crate) fn settle<P: CpuProvider>(tree: &Tree<P>) {
    for _ in 0..64 {
        let before = tree.stats();
        tree.reclaim();
        let after = tree.stats();
        if after.freed == after.released && after == before {
            return;
        }
    }
}

/// Moves whatever `Tree::pin` on this thread handed to the thread's own epoch bag to the
/// collector, so that `Tree::reclaim` on another thread can free it (see
/// `groups_handed_over_by_pin_on_an_idle_thread_are_freed_by_reclaim`). Called at the end of
/// worker threads: the thread-local bag is otherwise only flushed by the thread's TLS
/// destructors, which may run after `join` returns.
pub(crate) fn flush_thread<P: CpuProvider>(tree: &Tree<P>) {
    tree.pin().flush();
}

pub(crate) fn child<P: CpuProvider>(parent: &Group<P>, name: &str) -> Group<P> {
    parent.create_child(GroupSpec::new().name(name)).unwrap()
}

/// `(created, offlined, released, freed)`, to compare with [`lifecycle`].
pub(crate) fn stats(
    created: usize,
    offlined: usize,
    released: usize,
    freed: usize,
) -> (usize, usize, usize, usize) {
    (created, offlined, released, freed)
}

/// The lifecycle counts of a tree's stats.
pub(crate) fn lifecycle(s: TreeStats) -> (usize, usize, usize, usize) {
    (s.created, s.offlined, s.released, s.freed)
}

/// The id of the group `cell` points at, if any (under a guard of `tree`).
pub(crate) fn cell_id<P: CpuProvider>(tree: &Tree<P>, cell: &OwnerCell<P>) -> Option<GroupId> {
    let guard = tree.pin();
    cell.load(&guard).map(|r| r.id())
}

/// The names of `gs`, in order (`?` for an unnamed group).
pub(crate) fn names<P: CpuProvider>(gs: &[Group<P>]) -> Vec<String> {
    gs.iter().map(|g| g.name().unwrap_or("?").to_string()).collect()
}

/// Objects: an owner cell and the amount charged for it.
pub(crate) type Objs<P> = Vec<(OwnerCell<P>, usize)>;
