//! Loom models of the group protocols: K (refcount kill vs get/put), O (owner cell: last
//! put vs tryget, free vs a pinned reader) and the move vs offline race.
//!
//! Run with `RUSTFLAGS="--cfg loom --cfg crossbeam_loom"` (see `ci/loom.sh`): crossbeam-epoch
//! then runs on loom's atomics too, so grace periods are part of the model.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use crate::cpu::TestCpus;
use crate::group::{GroupId, GroupSpec, Observer, OwnerCell, Tree, TreeConfig};
use crate::groups::refcount::TestCount;

/// Counts releases and frees of one watched group, and flags its free.
#[derive(Default)]
struct Watch {
    target: AtomicUsize,
    released: AtomicUsize,
    freed: AtomicUsize,
    freed_flag: AtomicBool,
}

struct WatchObserver(Arc<Watch>);

impl Observer for WatchObserver {
    fn released(&self, id: GroupId) {
        if id.index() == self.0.target.load(Ordering::Relaxed) {
            self.0.released.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn freed(&self, id: GroupId) {
        if id.index() == self.0.target.load(Ordering::Relaxed) {
            self.0.freed.fetch_add(1, Ordering::Relaxed);
            self.0.freed_flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Group operations touch many atomics (tree setup and teardown, epoch pinning), so the
/// per-execution branch budget is raised; the preemption bound (`LOOM_MAX_PREEMPTIONS`, 2
/// in CI) still bounds the exploration.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

fn tree_with_watch() -> (Tree<TestCpus>, Arc<Watch>) {
    let watch = Arc::new(Watch::default());
    let config =
        TreeConfig::with_cpus(TestCpus::new(2)).refcount_shards(2).observer(WatchObserver(watch.clone()));
    (Tree::with_config(config), watch)
}

/// Protocol K: references taken and dropped on different shards while the owner kills the
/// count. Exactly one party observes the release, and the count is never seen at zero
/// early (a second release or an underflow would trip the assertions).
#[test]
fn refcount_kill_vs_get_put() {
    model(|| {
        let rc = Arc::new(TestCount::new(2, 2)); // base + one handle
        let releases = Arc::new(AtomicUsize::new(0));
        let (rc2, rel2) = (rc.clone(), releases.clone());
        let t = thread::spawn(move || {
            // The handle's owner clones on shard 0, drops the clone on shard 1, then drops
            // its own reference.
            rc2.get(0);
            if rc2.put(1) {
                rel2.fetch_add(1, Ordering::Relaxed);
            }
            if rc2.put(0) {
                rel2.fetch_add(1, Ordering::Relaxed);
            }
        });
        if rc.kill() {
            releases.fetch_add(1, Ordering::Relaxed);
        }
        t.join().unwrap();
        assert_eq!(releases.load(Ordering::Relaxed), 1, "released exactly once");
        assert_eq!(rc.count(), 0);
        assert!(!rc.tryget(0), "no resurrection after release");
    });
}

/// Protocol O: a reader with only a borrowed pointer (loaded from an owner cell under a
/// guard) races the last put. `tryget` either wins (and the group is released when the
/// reader drops its handle) or fails; the group is released exactly once either way.
#[test]
fn last_put_vs_tryget_from_cell() {
    model(|| {
        let (tree, watch) = tree_with_watch();
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        watch.target.store(g.id().index(), Ordering::Relaxed);
        g.offline().unwrap(); // base reference gone: the cell will hold the last one
        let cell = Arc::new(OwnerCell::new(g));
        let tree = Arc::new(tree);
        let participant = tree.register();

        let (cell2, watch2) = (cell.clone(), watch.clone());
        let t = thread::spawn(move || {
            drop(cell2.take()); // the last put, unless the reader holds a handle
            let _ = &watch2;
        });
        let guard = participant.pin();
        let got = cell.load(&guard).and_then(|r| r.tryget());
        if let Some(h) = &got {
            assert_eq!(h.counter().usage(), 0, "a handle from tryget is usable");
        }
        drop(got);
        drop(guard);
        t.join().unwrap();

        assert_eq!(watch.released.load(Ordering::Relaxed), 1, "released exactly once");
        drop(participant);
        drop(tree);
        assert_eq!(
            watch.freed.load(Ordering::Relaxed),
            1,
            "freed exactly once, by the tree drop at the latest"
        );
    });
}

/// Protocol O, free side: a reader pinned before the last put may dereference the pointer
/// until it unpins, even while another thread releases the group and runs reclamation.
#[test]
fn free_vs_pinned_reader() {
    model(|| {
        let (tree, watch) = tree_with_watch();
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        watch.target.store(g.id().index(), Ordering::Relaxed);
        g.offline().unwrap();
        let cell = Arc::new(OwnerCell::new(g));
        let tree = Arc::new(tree);
        let reader = tree.register();

        let (cell2, tree2) = (cell.clone(), tree.clone());
        let t = thread::spawn(move || {
            drop(cell2.take());
            tree2.reclaim_once(); // hands the node to the collector and flushes
        });
        {
            let guard = reader.pin();
            if let Some(r) = cell.load(&guard) {
                // Still pinned: the node must not have been freed, whatever the other
                // thread did since the load.
                let _ = r.counter().usage();
                assert!(!watch.freed_flag.load(Ordering::SeqCst), "freed under a pinned reader");
            }
        }
        t.join().unwrap();
        drop(reader);
        drop(tree);
        assert_eq!(watch.freed.load(Ordering::Relaxed), 1);
    });
}

/// The seed's question, as a model: thread A moves an object's charge from `from` to `to`
/// while thread B takes `from` offline and drops the last outside handle. `from` is released
/// exactly once, only when no reference remains, and every counter balances.
#[test]
fn move_vs_offline() {
    model(|| {
        let (tree, watch) = tree_with_watch();
        let root = tree.root();
        let from = root.create_child(GroupSpec::new()).unwrap();
        let to = root.create_child(GroupSpec::new()).unwrap();
        watch.target.store(from.id().index(), Ordering::Relaxed);
        from.counter().try_charge(1).unwrap();
        let cell = Arc::new(OwnerCell::new(from.clone()));

        let t = thread::spawn(move || {
            from.offline().unwrap();
            drop(from); // the last handle outside the cell
        });
        let moved = cell.move_charge(&to, 1).is_ok();
        t.join().unwrap();

        assert!(moved, "nothing else touches the cell, so the move cannot race");
        assert_eq!(root.counter().usage(), 1);
        assert_eq!(to.counter().usage(), 1);
        assert_eq!(watch.released.load(Ordering::Relaxed), 1, "`from` released exactly once");
        drop(cell.take());
        to.counter().uncharge(1);
        assert_eq!(root.counter().usage(), 0);
        drop((to, root, cell));
        drop(tree);
        assert_eq!(watch.freed.load(Ordering::Relaxed), 1);
    });
}

/// Protocol Q and the detach (`is_detached` vs `Tree::drop`): the tree handle is dropped on
/// one thread while another drops the last handle of a group. Whichever way they interleave,
/// the group is released once, nothing inside the last put frees it when the tree is
/// already detached (it is queued, and the tree listed as an orphan), and one reclamation
/// of the orphans afterwards frees it and the tree's bookkeeping.
#[test]
fn detached_release_vs_orphan_reclaim() {
    model(|| {
        let (tree, watch) = tree_with_watch();
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        watch.target.store(g.id().index(), Ordering::Relaxed);
        let t = thread::spawn(move || drop(g));
        drop(tree);
        t.join().unwrap();
        crate::group::reclaim_orphans();
        assert_eq!(watch.released.load(Ordering::Relaxed), 1, "released once");
        assert_eq!(watch.freed.load(Ordering::Relaxed), 1, "freed once, by the tree or the orphan list");
        assert_eq!(Arc::strong_count(&watch), 1, "the tree's bookkeeping (and observer) is freed");
    });
}
