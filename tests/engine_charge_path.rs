//! Engine tests, chapter 1: the charge path (Linux's `try_charge_memcg()`). Fast path (a stock
//! hit touches no counter), a miss and its batch, zero and oversized amounts, the retry with
//! exactly the amount, the lowest failing ancestor and its events, the reclaim hook, the drain
//! of the failing subtree before failing, bounded retries, and a batch too large to charge.
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

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chargetree::cpu::TestCpus;
use chargetree::group::{
    ChargeFailure, Charged, DEFAULT_RETRIES, EventCounts, Group, GroupSpec, Tree, TreeConfig,
};
use chargetree::stock::DEFAULT_BATCH;

// ---------------------------------------------------------------------------------------------
// 1. The charge path and the stock
// ---------------------------------------------------------------------------------------------

/// The fast path (S5): a stock hit takes units from this CPU's entry and touches no counter
/// (usage and peak unchanged, cached units go down); another CPU's stock is separate.
#[test]
fn a_stock_hit_touches_no_counter() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let g = child(&root, named("g"));
    assert_eq!(on(0, || g.try_charge(1)), Ok(Charged::default()));
    assert_eq!(uc(&g), (DEFAULT_BATCH, DEFAULT_BATCH - 1), "one walk charged a whole batch");
    let (failcnt, peak) = (g.counter().failcnt(), g.counter().peak());

    assert_eq!(on(0, || g.try_charge(10)), Ok(Charged::default()));
    assert_eq!(uc(&g), (64, 53), "the hit came from the stock");
    assert_eq!(root.counter().usage(), 64, "no ancestor touched");
    assert_eq!((g.counter().failcnt(), g.counter().peak()), (failcnt, peak));

    // The entry can be emptied exactly.
    charge(0, &g, 53);
    assert_eq!(uc(&g), (64, 0));
    // CPU 1 has its own stock: a miss there charges a new batch.
    charge(1, &g, 10);
    assert_eq!(uc(&g), (128, 54));
    // No CPU at all: no stock, exactly n.
    charge(NO_CPU, &g, 5);
    assert_eq!(uc(&g), (133, 54));

    g.uncharge(1 + 10 + 53 + 10 + 5);
    assert_all_zero(&tree);
    drop((g, root));
    finish(tree, log);
}

/// A miss and Linux's `done_restock`: a miss charges `max(batch, n)` and gives `batch − n` to
/// this CPU's stock (added to what the entry still holds); `TreeConfig::batch` sets the batch
/// and 0 disables the stocks.
#[test]
fn a_miss_charges_a_batch_and_refills_the_rest() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), named("g"));
    charge(0, &g, 10);
    assert_eq!(uc(&g), (64, 54));
    charge(0, &g, 60);
    assert_eq!(uc(&g), (128, 58), "54 were too few: a new batch, 64 − 60 added to the entry");
    charge(0, &g, 64);
    assert_eq!(uc(&g), (192, 58), "n == batch: nothing left over to refill");
    on(0, || g.uncharge(10 + 60 + 64));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);

    for (batch, n, want) in [(8, 3, (8, 5)), (1, 1, (1, 0)), (0, 3, (3, 0))] {
        let (config, log) = config(2);
        let tree = Tree::with_config(config.batch(batch));
        let g = child(&tree.root(), named("g"));
        charge(0, &g, n);
        assert_eq!(uc(&g), want, "batch {batch}, n {n}");
        on(0, || g.uncharge(n));
        assert_all_zero(&tree);
        drop(g);
        finish(tree, log);
    }
}

/// `n = 0` is a no-op in effect. A zero charge has nothing to hand out, so it should neither
/// pre-charge a batch into the stock nor report (and raise) over-`high`.
#[test]
fn a_zero_charge_is_a_no_op() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), named("g").high(10));
    assert_eq!(on(0, || g.try_charge(0)), Ok(Charged::default()));
    assert_eq!((uc(&g), g.events_local()), ((0, 0), EventCounts::default()));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// `n > batch` bypasses the stock both ways: charged exactly, nothing cached, and uncharged
/// straight from the counters even where the group is cached.
#[test]
fn amounts_above_the_batch_bypass_the_stock() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), named("g"));
    charge(0, &g, 1);
    assert_eq!(uc(&g), (64, 63));
    charge(0, &g, 100);
    assert_eq!(uc(&g), (164, 63), "exactly 100, the entry untouched");
    charge(0, &g, 65);
    assert_eq!(uc(&g), (229, 63));
    on(0, || g.uncharge(165));
    assert_eq!(uc(&g), (64, 63), "uncharged from the counters, not into the entry");
    on(0, || g.uncharge(1));
    assert_eq!(uc(&g), (64, 64));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// When the batch does not fit, the engine retries with exactly `n` before any reclaim
/// (max 100, usage 50, charge 1 with batch 64 succeeds and caches nothing), also when it is
/// an ancestor's limit that refuses the batch.
#[test]
fn a_batch_that_does_not_fit_is_retried_with_exactly_n() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, DEFAULT_RETRIES);
    let root = tree.root();
    let g = child(&root, named("g").max(100));
    g.counter().try_charge(50).unwrap();
    assert_eq!(on(0, || g.try_charge(1)), Ok(Charged::default()));
    assert_eq!(uc(&g), (51, 0));
    assert_eq!(
        g.counter().failcnt(),
        0,
        "a charge that succeeded (after its batch did not fit) counts no failure"
    );
    assert_eq!((calls.len(), g.events_local()), (0, EventCounts::default()), "no reclaim, no event");
    // Up to the limit exactly.
    charge(0, &g, 49);
    assert_eq!(uc(&g), (100, 0));

    // The same below a limited parent.
    let p = child(&root, named("p").max(100));
    let c = child(&p, named("c"));
    p.counter().try_charge(50).unwrap();
    charge(1, &c, 30);
    assert_eq!((uc(&c), p.counter().usage()), ((30, 0), 80));
    assert_eq!((calls.len(), p.events_local()), (0, EventCounts::default()));

    g.counter().uncharge(100);
    p.counter().uncharge(50);
    on(1, || c.uncharge(30));
    assert_all_zero(&tree);
    drop((g, p, c, root));
    finish(tree, log);
}

/// The failure names the lowest ancestor-or-self whose `max` refused, with its limit and
/// usage; nothing stays charged; `Event::Max` and `Event::Oom` go to that group (local) and
/// its ancestors (hierarchical), not to the charged group.
#[test]
fn a_failure_names_the_lowest_failing_ancestor() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, 2);
    let root = tree.root();
    let a = child(&root, named("a").max(50));
    let b = child(&a, named("b").max(50));
    let c = child(&b, named("c"));
    c.counter().try_charge(45).unwrap();

    // Both a and b would refuse: b is the lowest.
    let err = on(0, || c.try_charge(10)).unwrap_err();
    assert_eq!(limit(&err), (b.id(), 50, 45, 10));
    assert!(err.to_string().contains(&b.id().to_string()), "{err}");
    assert_eq!([uc(&a), uc(&b), uc(&c)], [(45, 0); 3], "nothing stays charged");
    assert_eq!(counts(b.events_local()), events(1, 1));
    assert_eq!((a.events_local(), c.events_local()), (EventCounts::default(), EventCounts::default()));
    assert_eq!((counts(a.events()), counts(root.events())), (events(1, 1), events(1, 1)), "hierarchical");
    assert!(calls.all().iter().all(|&call| call == (b.id(), 10)), "{:?}", calls.all());

    drop(err);

    // Only a refuses now.
    b.set_max(1000).unwrap();
    calls.clear();
    let err = on(0, || c.try_charge(10)).unwrap_err();
    assert_eq!(limit(&err), (a.id(), 50, 45, 10));
    assert_eq!((counts(a.events_local()), counts(b.events_local())), (events(1, 1), events(1, 1)));
    assert_eq!(counts(root.events()), events(2, 2));
    assert!(!calls.all().is_empty() && calls.all().iter().all(|&call| call == (a.id(), 10)));

    c.counter().uncharge(45);
    assert_all_zero(&tree);
    drop((a, b, c, root));
    drop(err); // a failure names its group: it holds a reference on it
    finish(tree, log);
}

/// The events of a failing charge: `Event::Max` is raised once per failing charge however many
/// reclaim rounds it takes, `Event::Oom` once when it finally fails, and not at all when
/// reclaim lets it succeed.
#[test]
fn max_is_raised_once_per_failing_charge_and_oom_on_final_failure() {
    let succeed = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, n) = (succeed.clone(), calls.clone());
    let (config, log) = config(2);
    let tree = Tree::with_config(config.reclaimer(FnReclaimer(move |g: &Group<TestCpus>, amount: usize| {
        n.fetch_add(1, Ordering::Relaxed);
        if s.load(Ordering::Relaxed) {
            g.counter().uncharge(amount);
            amount
        } else {
            0
        }
    })));
    let g = child(&tree.root(), named("g").max(10));
    g.counter().try_charge(10).unwrap();

    assert!(on(0, || g.try_charge(1)).is_err());
    assert_eq!(calls.load(Ordering::Relaxed), DEFAULT_RETRIES + 2, "many reclaim rounds...");
    assert_eq!(counts(g.events_local()), events(1, 1), "...one max event, one oom event");
    assert!(on(1, || g.try_charge(3)).is_err());
    assert_eq!(counts(g.events_local()), events(2, 2));

    // The reclaimer frees what is asked (it gives up part of the objects' 10): success.
    succeed.store(true, Ordering::Relaxed);
    assert_eq!(on(0, || g.try_charge(4)), Ok(Charged::default()));
    assert_eq!(counts(g.events_local()), events(3, 2), "the limit was hit: max, but no oom");
    assert_eq!(uc(&g), (10, 0));

    g.counter().uncharge(10);
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// The reclaimer is called with the over-limit group (the charged group, or the ancestor whose
/// limit refused) and the amount the charge needs (`n`, not the batch).
#[test]
fn the_reclaimer_gets_the_over_limit_group_and_the_requested_amount() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, 0);
    let root = tree.root();
    let p = child(&root, named("p").max(200));
    let g = child(&p, named("g").max(100));
    g.counter().try_charge(90).unwrap();

    assert!(on(0, || g.try_charge(20)).is_err());
    let seen = calls.all();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|&call| call == (g.id(), 20)), "{seen:?}");

    // Now the parent refuses.
    let s = child(&p, named("s"));
    s.counter().try_charge(105).unwrap();
    calls.clear();
    assert!(on(0, || g.try_charge(6)).is_err());
    let seen = calls.all();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|&call| call == (p.id(), 6)), "{seen:?}");

    g.counter().uncharge(90);
    s.counter().uncharge(105);
    assert_all_zero(&tree);
    drop((g, s, p, root));
    finish(tree, log);
}

/// A reclaimer that frees enough makes the charge succeed right away (one call), without
/// stocks to muddy the numbers.
#[test]
fn a_reclaimer_that_frees_enough_makes_the_charge_succeed() {
    // Objects of 10 units each, owned by the reclaimer's pool.
    let pool: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Calls::default());
    let (p2, c2) = (pool.clone(), calls.clone());
    let (config, log) = config(2);
    let tree =
        Tree::with_config(config.batch(0).reclaimer(FnReclaimer(move |g: &Group<TestCpus>, amount| {
            c2.push(g.id(), amount);
            let mut pool = p2.lock().unwrap();
            let mut freed = 0;
            while freed < amount {
                let Some(n) = pool.pop() else { break };
                g.uncharge(n);
                freed += n;
            }
            freed
        })));
    let g = child(&tree.root(), named("g").max(100));
    for _ in 0..10 {
        charge(0, &g, 10);
        pool.lock().unwrap().push(10);
    }
    assert_eq!(on(0, || g.try_charge(25)), Ok(Charged::default()));
    assert_eq!(calls.all(), vec![(g.id(), 25)], "one call was enough");
    assert_eq!((uc(&g), pool.lock().unwrap().len()), ((95, 0), 7));
    assert_eq!(counts(g.events_local()), events(1, 0));

    g.uncharge(95);
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// The library's uncharge goes to this CPU's stock when the group is cached there, so what a
/// reclaimer frees on the charging CPU may land in the stock instead of the margin; the drain
/// of the failing subtree that follows returns it and the charge succeeds.
#[test]
fn units_a_reclaimer_parks_in_this_cpus_stock_are_recovered_by_the_drain() {
    let pool: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Calls::default());
    let (p2, c2) = (pool.clone(), calls.clone());
    let (config, log) = config(2);
    let tree = Tree::with_config(config.reclaimer(FnReclaimer(move |g: &Group<TestCpus>, amount| {
        c2.push(g.id(), amount);
        let n = p2.lock().unwrap().pop().unwrap_or(0);
        g.uncharge(n);
        n
    })));
    let g = child(&tree.root(), named("g").max(128));
    for _ in 0..2 {
        charge(0, &g, 60);
        pool.lock().unwrap().push(60);
    }
    assert_eq!(uc(&g), (128, 8));
    assert_eq!(on(0, || g.try_charge(30)), Ok(Charged::default()));
    assert_eq!(calls.len(), 1);
    assert_eq!(uc(&g), (90, 0), "the parked 64 came back through the drain");

    on(0, || g.uncharge(90));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// Before failing, the failing group's subtree is drained on every CPU (after one reclaim
/// call): units another CPU cached are returned and the charge succeeds; a charge that fails
/// even so leaves the subtree drained and other subtrees' entries alone.
#[test]
fn the_failing_subtree_is_drained_on_every_cpu_before_failing() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, DEFAULT_RETRIES);
    let root = tree.root();
    let g = child(&root, named("g").max(64));
    let s = child(&root, named("s"));
    charge(1, &g, 1);
    charge(1, &s, 1);
    assert_eq!((uc(&g), uc(&s)), ((64, 63), (64, 63)));

    assert_eq!(on(0, || g.try_charge(10)), Ok(Charged::default()));
    assert_eq!(uc(&g), (11, 0), "CPU 1's 63 were returned, then 10 charged");
    assert_eq!(calls.len(), 1, "one reclaim, then the drain");
    assert_eq!(counts(g.events_local()), events(1, 0));
    assert_eq!(uc(&s), (64, 63), "s is not in the failing subtree");

    g.set_max(128).unwrap();
    charge(1, &g, 1); // CPU 1 caches g again
    assert_eq!(uc(&g), (75, 63));
    let err = on(0, || g.try_charge(120)).unwrap_err();
    assert_eq!(limit(&err), (g.id(), 128, 12, 120));
    assert_eq!(uc(&g), (12, 0), "drained although it failed");
    assert_eq!(uc(&s), (64, 63));

    on(1, || g.uncharge(12));
    on(1, || s.uncharge(1));
    assert_all_zero(&tree);
    drop((g, s, root));
    drop(err); // a failure names its group: it holds a reference on it
    finish(tree, log);
}

/// Retries are bounded by `TreeConfig::max_retries` (Linux's `MAX_RECLAIM_RETRIES`). The
/// reclaimer is called once before the drain, once after it, and once per retry.
#[test]
fn retries_are_bounded() {
    let mut counts = Vec::new();
    for retries in [0, 3, DEFAULT_RETRIES] {
        let (tree, log, calls) = recording_tree(DEFAULT_BATCH, retries);
        let g = child(&tree.root(), named("g").max(10));
        g.counter().try_charge(10).unwrap();
        let err = on(0, || g.try_charge(1)).unwrap_err();
        assert!(matches!(err, ChargeFailure::Limit { .. }));
        assert_eq!(calls.len(), retries + 2, "max_retries({retries})");
        counts.push(calls.len());
        g.counter().uncharge(10);
        drop(g);
        drop(err); // a failure names its group: it holds a reference on it
        finish(tree, log);
    }
    assert_eq!(counts[1] - counts[0], 3, "each retry costs exactly one more reclaim");
}

/// A batch that cannot be charged falls back to the exact amount: even a batch far above
/// what any counter can hold (clamped by the configuration) never turns a small charge into
/// `TooLarge`.
#[test]
fn a_huge_batch_falls_back_to_the_exact_amount() {
    let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)).batch(usize::MAX));
    let g = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
    on(0, || {
        assert!(g.try_charge(1).is_ok());
        assert_eq!(g.counter().usage() - g.cached_units(), 1);
        g.uncharge(1);
    });
    let _ = tree.drain_all(&tree.root());
    assert_eq!(tree.root().counter().usage(), 0);
}
