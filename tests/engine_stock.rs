//! Engine tests, chapter 3: the per-CPU stock (Linux's `memcg_stock_pcp`). `K` direct-mapped
//! entries and what a charge evicts, one reference per occupied entry (S2), cached units
//! within the batch (S3), uncharge into the stock, `drain_local`, `drain_all` (and a drain
//! that finds another under way), and `Group::set_max`'s drain.
//!
//! Black-box tests of the charge engine and the per-CPU stock (Linux's `try_charge_memcg()`
//! and `memcg_stock_pcp` as `src/engine/` and `src/stock/units.rs` implement them), through
//! the public API only, in chapters: `engine_charge_path.rs` (the charge path),
//! `engine_options.rs` (charge options, events of forced charges, configuration bounds),
//! `engine_stock.rs` (the stock's entries, references, bound and drains),
//! `engine_high_and_walk_reclaim.rs` (over-`high` reports, `Group::walk_reclaim`),
//! `engine_robustness.rs` (a panicking reclaimer, two threads at the limit) and
//! `engine_model.rs` (the property test); helpers in `support/engine.rs` and `support/mod.rs`.
//!
//! Trees are built with `TestCpus` (each thread charges "on" whatever CPU `TestCpus::run_on`
//! names; outside `run_on` it is on no CPU and bypasses the stocks) unless a test says
//! otherwise, with a logging [`Observer`] so that every test can end by checking that each
//! group was released and freed exactly once.
//!
//! Under miri the loops and the property test shrink; the chapters pass with
//! `MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance"` (see `ci/miri.sh` for why
//! crossbeam-epoch needs both).
//!
//! [`Observer`]: chargetree::group::Observer

mod support;

use support::engine::*;
use support::*;

use std::sync::{Arc, Mutex, OnceLock, Weak};

use chargetree::counter::LimitError;
use chargetree::cpu::TestCpus;
use chargetree::group::{Group, GroupId, GroupSpec, Observer, Tree, TreeConfig, reclaim_orphans};

/// Where this crate places entries: a CPU's stock is a direct-mapped table of `K` entries, a
/// group's entry chosen by its slot in the tree's arena. A fresh tree hands out slots densely
/// in creation order (the root takes slot 0), so any `K` groups created one after another sit
/// in distinct entries, and a charge evicts only the group in its own entry, returning the
/// victim's units to its counters and its reference. (Linux's 7-entry stock evicts
/// round-robin, the 2026 `drain_idx` fix; see the README's deviations.)
#[test]
fn a_group_evicts_only_the_group_in_its_entry() {
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::<_, 4>::with_cpus_and_slots(TestCpus::new(2)).observer(Obs(log.clone())),
    );
    let root = tree.root();
    // Slots 1..=7: entries 1, 2, 3, 0, 1, 2, 3.
    let gs: Vec<Group<TestCpus, 4>> = (0..7).map(|_| child(&root, GroupSpec::new())).collect();
    let mut held = [0usize; 7];
    for (i, g) in gs[..4].iter().enumerate() {
        charge(0, g, 1);
        held[i] += 1;
        assert_eq!((uc(g), g.ref_count()), ((64, 63), 3), "base + handle + entry");
    }
    assert_eq!(
        gs.iter().filter(|g| g.cached_units() > 0).count(),
        4,
        "4 consecutive groups fit in 4 entries"
    );
    for (charged, evicted) in [(4, 0), (5, 1), (0, 4), (1, 5), (6, 2)] {
        let others: Vec<usize> =
            (0..7).filter(|&j| j != charged && j != evicted).map(|j| gs[j].cached_units()).collect();
        charge(0, &gs[charged], 1);
        held[charged] += 1;
        let v = &gs[evicted];
        assert_eq!(v.cached_units(), 0, "charging {charged} evicted {evicted}");
        assert_eq!(v.ref_count(), 2, "the entry's reference went with it");
        assert_eq!(v.counter().usage(), held[evicted], "its units went back");
        assert_eq!(gs[charged].ref_count(), 3);
        let after: Vec<usize> =
            (0..7).filter(|&j| j != charged && j != evicted).map(|j| gs[j].cached_units()).collect();
        assert_eq!(after, others, "no other entry moved");
        let cached = gs.iter().filter(|g| g.cached_units() > 0).count();
        assert_eq!(cached, 4, "still K entries");
    }
    // Another CPU's stock is separate: no eviction on CPU 0.
    charge(1, &gs[2], 1);
    held[2] += 1;
    assert_eq!(gs.iter().filter(|g| g.cached_units() > 0).count(), 5);
    let total: usize = gs.iter().map(|g| g.counter().usage()).sum();
    assert_eq!(root.counter().usage(), total);

    for (g, n) in gs.iter().zip(held) {
        g.uncharge(n);
    }
    assert_all_zero(&tree);
    drop((gs, root));
    finish(tree, log);
}

/// S2: every occupied entry owns one reference. An offline group charged again is cached again
/// (offline groups can still be charged) and pinned by the entry after its last handle is
/// gone; `drain_all` takes the entry and releases it.
#[test]
fn each_occupied_entry_holds_one_reference() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let g = child(&root, named("g"));
    let id = g.id();
    assert_eq!(g.ref_count(), 2, "base + handle");
    charge(0, &g, 1);
    assert_eq!(g.ref_count(), 3);
    charge(0, &g, 1);
    assert_eq!(g.ref_count(), 3, "same entry, same reference");
    charge(1, &g, 1);
    assert_eq!(g.ref_count(), 4, "one per CPU that caches it");
    assert_eq!(on(0, || tree.drain_local()), 62);
    assert_eq!(g.ref_count(), 3);

    // Offline drains the stocks (css_offline → drain_all_stock).
    g.offline().unwrap();
    assert_eq!((g.ref_count(), g.cached_units()), (1, 0));
    // Charging the dying group caches it again and pins it.
    charge(1, &g, 1);
    assert_eq!((g.ref_count(), uc(&g)), (2, (67, 63)));
    on(1, || g.uncharge(4)); // all objects, into the entry (excess to the counters)
    assert_eq!(uc(&g), (64, 64));
    drop(g);
    tree.reclaim();
    assert_eq!(log.released(id), 0, "the entry still holds the offline group");
    assert_eq!(root.counter().usage(), 64);

    assert_eq!(tree.drain_all(&root), Some(64));
    assert_eq!(log.released(id), 1, "released when drain_all took the entry");
    tree.reclaim();
    assert_eq!(log.freed(id), 1);
    assert_eq!(root.counter().usage(), 0);
    drop(root);
    finish(tree, log);
}

/// Handles may outlive their tree and "their counters keep working" (`Tree` docs), and then
/// the groups are freed once the last handle has gone (at the next reclamation point). Charging such a handle through the engine
/// must not leave it pinned by a stock entry that nothing can drain any more (the tree's
/// `drain_all` / `drain_local` need the tree, and the group is already offline).
#[test]
fn charging_a_handle_that_outlived_its_tree_does_not_leak() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), named("g"));
    let id = g.id();
    drop(tree);
    charge(0, &g, 1);
    on(0, || g.uncharge(1));
    assert_eq!(g.ref_count(), 1, "only this handle: no stock entry for a group of a dropped tree");
    drop(g);
    // The last drop may be inside an allocator: it only queues; any non-allocator call frees.
    reclaim_orphans();
    assert_eq!((log.released(id), log.freed(id)), (1, 1), "the last handle frees the group");
    assert_eq!(Arc::strong_count(&log), 1, "and the tree's bookkeeping");
    log.check();
}

/// S3: an entry never holds more than the batch; an uncharge into a full entry sends the
/// excess to the counters (the library keeps the entry instead of draining it).
#[test]
fn cached_units_never_exceed_the_batch() {
    let (config, log) = config(2);
    let tree = Tree::with_config(config.batch(8));
    let g = child(&tree.root(), named("g"));
    charge(0, &g, 1);
    assert_eq!(uc(&g), (8, 7));
    charge(0, &g, 20);
    assert_eq!(uc(&g), (28, 7));
    on(0, || g.uncharge(1));
    assert_eq!(uc(&g), (28, 8), "full");
    on(0, || g.uncharge(5));
    assert_eq!(uc(&g), (23, 8), "5 more: the excess went to the counters");
    on(0, || g.uncharge(8));
    assert_eq!(uc(&g), (15, 8));
    on(0, || g.uncharge(7));
    assert_eq!(uc(&g), (8, 8));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// The library's uncharge: into this CPU's stock when it caches the group, else straight to
/// the counters (another CPU, or no CPU at all).
#[test]
fn uncharge_goes_to_the_stock_only_where_the_group_is_cached() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let g = child(&root, named("g"));
    charge(0, &g, 10);
    assert_eq!(uc(&g), (64, 54));
    on(1, || g.uncharge(5));
    assert_eq!(uc(&g), (59, 54), "CPU 1 does not cache g");
    assert_eq!(g.ref_count(), 3, "and does not start to");
    g.uncharge(3);
    assert_eq!(uc(&g), (56, 54), "no CPU: the counters");
    on(0, || g.uncharge(2));
    assert_eq!(uc(&g), (56, 56), "CPU 0 caches g: into the entry");
    assert_eq!(root.counter().usage(), 56);
    assert_all_zero(&tree);
    drop((g, root));
    finish(tree, log);
}

/// `Tree::drain_local` returns this CPU's units (and references) and nothing else.
#[test]
fn drain_local_returns_this_cpus_units() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, named("a"));
    let b = child(&root, named("b"));
    charge(0, &a, 1);
    charge(0, &b, 2);
    charge(1, &a, 3);
    assert_eq!((a.cached_units(), b.cached_units()), (63 + 61, 62));
    assert_eq!(tree.drain_local(), 0, "no CPU: nothing to drain");
    assert_eq!(on(0, || tree.drain_local()), 63 + 62);
    assert_eq!((uc(&a), uc(&b)), ((4 + 61, 61), (2, 0)));
    assert_eq!((a.ref_count(), b.ref_count()), (3, 2), "CPU 1 still holds a");
    assert_eq!(on(0, || tree.drain_local()), 0);
    assert_eq!(on(1, || tree.drain_local()), 61);
    assert_eq!((uc(&a), a.ref_count()), ((4, 0), 2));
    a.uncharge(4);
    b.uncharge(2);
    assert_all_zero(&tree);
    drop((a, b, root));
    finish(tree, log);
}

/// `Tree::drain_all(group)` takes the entries of `group`'s subtree from every CPU, idle ones
/// included, leaves other groups' entries alone, and returns the units it took.
#[test]
fn drain_all_takes_the_subtree_from_idle_cpus() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, named("a"));
    let b = child(&a, named("b"));
    let c = child(&a, named("c"));
    let d = child(&root, named("d"));
    charge(1, &b, 1);
    charge(1, &c, 2);
    charge(1, &d, 3);
    charge(0, &b, 4);
    assert_eq!(a.counter().usage(), 64 * 3);
    // Called from CPU 0 and from no CPU: CPU 1 is idle either way.
    assert_eq!(on(0, || tree.drain_all(&a)), Some(63 + 62 + 60));
    assert_eq!([uc(&a), uc(&b), uc(&c)], [(7, 0), (5, 0), (2, 0)]);
    assert_eq!((b.ref_count(), c.ref_count()), (2, 2), "the references went too");
    assert_eq!((uc(&d), d.ref_count()), ((64, 61), 3), "d is not under a");
    assert_eq!(tree.drain_all(&a), Some(0));
    assert_eq!(tree.drain_all(&root), Some(61));
    assert_eq!(root.counter().usage(), 10);
    b.uncharge(5);
    c.uncharge(2);
    d.uncharge(3);
    assert_all_zero(&tree);
    drop((a, b, c, d, root));
    finish(tree, log);
}

/// An observer that, when a group is released, tries a drain of the whole tree: the release
/// runs inside `drain_all` (the entry's reference was the last one), so it must find the
/// drain under way and return `None` at once rather than wait or drain twice.
///
/// (This breaks the `Observer` contract — "must not call back into the tree" — on purpose:
/// it is the one deterministic way to have two drains overlap, and the nested call only
/// looks at the drain flag.)
struct NestedDrain {
    tree: OnceLock<Weak<Tree<TestCpus>>>,
    seen: Mutex<Vec<Option<usize>>>,
}

struct NestedObs(Arc<NestedDrain>);

impl Observer for NestedObs {
    fn released(&self, _id: GroupId) {
        if let Some(tree) = self.0.tree.get().and_then(Weak::upgrade) {
            let r = tree.drain_all(&tree.root());
            self.0.seen.lock().unwrap().push(r);
        }
    }
}

#[test]
fn a_drain_that_finds_another_under_way_returns_none() {
    let nested = Arc::new(NestedDrain { tree: OnceLock::new(), seen: Mutex::new(Vec::new()) });
    let tree = Arc::new(Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(2)).observer(NestedObs(nested.clone())),
    ));
    nested.tree.set(Arc::downgrade(&tree)).unwrap();
    let root = tree.root();
    let g = child(&root, named("g"));
    let h = child(&root, named("h"));
    charge(1, &h, 1);
    g.offline().unwrap();
    charge(1, &g, 1);
    on(1, || g.uncharge(1));
    drop(g); // only CPU 1's entry holds g now
    assert!(nested.seen.lock().unwrap().is_empty());

    assert_eq!(tree.drain_all(&root), Some(64 + 63), "the outer drain counts every unit it took");
    assert_eq!(*nested.seen.lock().unwrap(), vec![None], "the nested drain did not wait or drain");
    assert_eq!(uc(&h), (1, 0));
    assert_eq!(tree.drain_all(&root), Some(0), "the drain flag was released");
    h.uncharge(1);
    assert_all_zero(&tree);
    drop((h, root));
    drop(tree);
    assert_eq!(Arc::strong_count(&nested), 1, "the observer was dropped with the tree");
}

/// `Group::set_max` below a usage that only stocks hold drains them (as Linux's
/// `memory_max_write()` calls `drain_all_stock()`) and succeeds (also for an ancestor's limit
/// over a descendant's entries); below what objects hold it returns `LimitError::Busy` (after
/// draining) and changes nothing else.
#[test]
fn set_max_drains_stocks_and_is_busy_only_when_objects_hold_the_usage() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let g = child(&root, named("g"));
    charge(1, &g, 1);
    assert_eq!(uc(&g), (64, 63));
    assert_eq!(g.set_max(10), Ok(()));
    assert_eq!((g.counter().max(), uc(&g), g.ref_count()), (10, (1, 0), 2));

    let p = child(&root, named("p"));
    let c = child(&p, named("c"));
    charge(0, &c, 2);
    assert_eq!(p.set_max(5), Ok(()));
    assert_eq!((uc(&c), p.counter().usage()), ((2, 0), 2));

    let big = child(&root, named("big"));
    charge(0, &big, 50);
    charge(1, &big, 1);
    assert_eq!(uc(&big), (128, 14 + 63));
    assert_eq!(big.set_max(20), Err(LimitError::Busy { usage: 51, limit: 20 }));
    assert_eq!((big.counter().max(), uc(&big)), (chargetree::COUNTER_MAX, (51, 0)));
    assert_eq!(big.set_max(51), Ok(()));
    assert!(big.try_charge(1).is_err());

    g.uncharge(1);
    c.uncharge(2);
    big.uncharge(51);
    assert_all_zero(&tree);
    drop((g, p, c, big, root));
    finish(tree, log);
}
