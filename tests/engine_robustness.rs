//! Engine tests, chapter 5: robustness. A reclaimer that panics leaves every counter, stock
//! and reference count balanced; two threads at the limit with a reclaim hook, on
//! `ThreadCpus`, stay balanced.
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

use support::Rng;
use support::engine::*;
use support::*;

use core::panic::AssertUnwindSafe;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::panic::catch_unwind;
use std::sync::{Arc, Mutex};
use std::thread;

use chargetree::cpu::{CpuProvider, TestCpus, ThreadCpus};
use chargetree::group::{ChargeFailure, Group, Tree, TreeConfig};

// ---------------------------------------------------------------------------------------------
// 2. A reclaimer that panics
// ---------------------------------------------------------------------------------------------

/// Every observable that must balance, per group: usage, cached units, references.
fn snapshot<P: CpuProvider, const K: usize>(gs: &[&Group<P, K>]) -> Vec<(usize, usize, usize)> {
    gs.iter().map(|g| (g.counter().usage(), g.cached_units(), g.ref_count())).collect()
}

/// DESIGN rule 5: a reclaim hook that panics leaves every counter, stock entry and reference
/// count as it was before the charge (the over-limit handle the engine made for the hook is
/// dropped by the unwind), whether the charged group's limit or an ancestor's refused; the
/// tree keeps working afterwards and is freed completely.
#[test]
fn a_panicking_reclaimer_leaves_everything_balanced() {
    for limit_on_parent in [false, true] {
        let panic_now = Arc::new(AtomicBool::new(true));
        let pn = panic_now.clone();
        let (config, log) = config(2);
        let tree = Tree::with_config(config.reclaimer(FnReclaimer(move |_: &Group<TestCpus>, _| {
            if pn.load(Ordering::Relaxed) {
                panic!("reclaimer gave up");
            }
            0
        })));
        let root = tree.root();
        let (pmax, gmax) = if limit_on_parent { (150, chargetree::COUNTER_MAX) } else { (1000, 150) };
        let p = child(&root, named("p").max(pmax));
        let g = child(&p, named("g").max(gmax));
        let s = child(&root, named("s"));
        charge(1, &g, 1);
        charge(1, &s, 5);
        charge(0, &g, 20);
        let all = [&root, &p, &g, &s];
        let before = snapshot(&all);
        assert_eq!(g.cached_units(), 63 + 44);

        // 50 misses CPU 0's 44 and does not fit (128 + 50 > 150).
        let r = catch_unwind(AssertUnwindSafe(|| on(0, || g.try_charge(50))));
        assert!(r.is_err(), "the panic reached the caller");
        assert_eq!(snapshot(&all), before, "counters, stocks and references as before the charge");
        let over = if limit_on_parent { &p } else { &g };
        assert_eq!(counts(over.events_local()), events(1, 0), "max raised before the hook; no oom");

        // The tree still works: the same charge drains CPU 1 and succeeds.
        panic_now.store(false, Ordering::Relaxed);
        assert_eq!(on(0, || g.try_charge(50)).map(|c| c.forced), Ok(false));
        assert_eq!(uc(&g), (71, 0));
        on(1, || g.uncharge(71));
        on(1, || s.uncharge(5));
        assert_all_zero(&tree);
        assert_eq!(snapshot(&all).iter().map(|x| x.2).collect::<Vec<_>>(), vec![4, 3, 2, 2]);
        drop((root, p, g, s));
        finish(tree, log);
    }
}
// ---------------------------------------------------------------------------------------------
// 4. Two threads at the limit, with a reclaim hook, on ThreadCpus
// ---------------------------------------------------------------------------------------------

/// Two threads charge and uncharge the same group under a tight limit (its parent's is
/// tighter still at times) with the default `ThreadCpus`; the reclaim hook frees objects from
/// a pool it shares with them. Charges fail only by naming the group or its parent, and in
/// the end everything balances and every group is freed exactly once.
#[test]
fn two_threads_at_the_limit_with_a_reclaim_hook_stay_balanced() {
    type Pool = Mutex<Vec<(Group<ThreadCpus>, usize)>>;
    let pool: Arc<Pool> = Arc::new(Mutex::new(Vec::new()));
    let reclaims = Arc::new(AtomicUsize::new(0));
    let (hook_pool, hook_calls) = (pool.clone(), reclaims.clone());
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(TreeConfig::new().observer(Obs(log.clone())).reclaimer(FnReclaimer(
        move |over: &Group<ThreadCpus>, amount: usize| {
            hook_calls.fetch_add(1, Ordering::Relaxed);
            let mut freed = 0;
            let mut pool = hook_pool.lock().unwrap();
            while freed < amount {
                let Some(i) = pool.iter().position(|(g, _)| g.is_descendant_of(over)) else { break };
                let (g, n) = pool.swap_remove(i);
                g.uncharge(n);
                freed += n;
            }
            freed
        },
    )));
    let root = tree.root();
    let p = child(&root, named("p").max(150));
    let g = child(&p, named("g").max(100));
    let iterations = scaled(3000, 40);

    let (successes, failures) = thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let (pool, g, p) = (&pool, &g, &p);
                s.spawn(move || {
                    let mut rng = Rng::new(t + 1);
                    let (mut ok, mut failed) = (0, 0);
                    for _ in 0..iterations {
                        let n = 1 + rng.below(30);
                        match g.try_charge(n) {
                            Ok(c) => {
                                assert!(!c.forced);
                                ok += 1;
                                pool.lock().unwrap().push((g.clone(), n));
                            }
                            Err(ChargeFailure::Limit { group, requested, .. }) => {
                                assert!(group == g.id() || group == p.id(), "{group}");
                                assert_eq!(requested, n);
                                failed += 1;
                            }
                            Err(e) => panic!("{e}"),
                        }
                        if rng.below(3) == 0 {
                            let object = pool.lock().unwrap().pop();
                            if let Some((h, n)) = object {
                                h.uncharge(n);
                            }
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    assert_eq!(successes + failures, 2 * iterations);
    assert!(successes > 0);
    // Objects are freed about a third as often as they are charged: the limit is hit.
    assert!(reclaims.load(Ordering::Relaxed) > 0, "the reclaim hook ran");
    assert!(g.counter().usage() <= 100 && p.counter().usage() <= 150, "quiescent: within the limits");

    // Give every object back, then every cached unit (the workers' slots are idle now).
    let objects = core::mem::take(&mut *pool.lock().unwrap());
    let held: usize = objects.iter().map(|o| o.1).sum();
    assert_eq!(g.counter().usage(), held + g.cached_units());
    for (h, n) in objects {
        h.uncharge(n);
    }
    assert_all_zero(&tree);
    assert_eq!(root.counter().usage(), 0);
    assert_eq!(g.ref_count(), 2, "no stock entry left");
    drop((g, p, root));
    finish(tree, log);
}
