//! Engine tests, chapter 2: charge options and configuration. `no_fail` forces exactly the
//! amount past the limit, `no_reclaim` and `no_retry` skip what they say, the events of
//! forced and failing charges follow Linux, and absurd configuration values are clamped.
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

use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeOptions, Charged, DEFAULT_RETRIES, GroupSpec, Tree, TreeConfig};
use chargetree::stock::DEFAULT_BATCH;

/// Linux's `force` path: `no_fail` forces exactly `n` past the limit after reclaim and
/// retries, reports it in `Charged::forced`, counts it in `TreeStats::forced`, raises
/// `Event::Max` once; a no-fail charge that fits is not forced.
#[test]
fn no_fail_forces_exactly_n_past_the_limit() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, DEFAULT_RETRIES);
    let g = child(&tree.root(), named("g").max(10));
    g.counter().try_charge(8).unwrap();
    let opts = ChargeOptions::DEFAULT.no_fail();
    assert_eq!(on(0, || g.charge_with(5, opts)).map(charged), Ok((None, true)));
    assert_eq!(uc(&g), (13, 0), "exactly n, above max, nothing cached");
    assert_eq!(tree.stats().forced, 1);
    assert_eq!(calls.len(), DEFAULT_RETRIES + 2, "reclaim and retries came first");
    assert_eq!(g.events_local().max, 1);

    // With no_reclaim too: forced at once, still one max event.
    let opts = opts.no_reclaim();
    assert_eq!(on(0, || g.charge_with(2, opts)).map(charged), Ok((None, true)));
    assert_eq!(calls.len(), DEFAULT_RETRIES + 2, "no reclaim");
    assert_eq!((uc(&g), tree.stats().forced, g.events_local().max), ((15, 0), 2, 2));

    // A no-fail charge that fits is an ordinary charge.
    g.set_max(1000).unwrap();
    let c = on(0, || g.charge_with(5, ChargeOptions::DEFAULT.no_fail())).unwrap();
    assert!(!c.forced);
    assert_eq!((uc(&g), tree.stats().forced), ((15 + 64, 59), 2));

    g.counter().uncharge(15);
    on(0, || g.uncharge(5));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// `Event::Oom`'s documentation says it is raised when "a charge failed after reclaim and
/// retries (or was forced past `max`)" — and Linux raises `oom` for a no-fail charge that went
/// through its retries before it is forced (`try_charge_memcg()`'s OOM step, then its
/// `nomem` and `force` labels).
#[test]
fn a_forced_charge_raises_oom_as_documented() {
    let (tree, log, _calls) = recording_tree(DEFAULT_BATCH, 1);
    let g = child(&tree.root(), named("g").max(10));
    g.counter().try_charge(10).unwrap();
    let c = on(0, || g.charge_with(1, ChargeOptions::DEFAULT.no_fail())).unwrap();
    assert!(c.forced);
    assert_eq!(counts(g.events_local()), events(1, 1), "forced past max after reclaim and retries");
    g.counter().uncharge(11);
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// `no_reclaim`: the reclaimer is never called and nothing is drained (another CPU's entry
/// survives the failure), and no event is raised at all: Linux's non-blocking charges jump
/// to `nomem` before `MEMCG_MAX`, and never reach the OOM path.
#[test]
fn no_reclaim_neither_reclaims_nor_drains() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, DEFAULT_RETRIES);
    let g = child(&tree.root(), named("g").max(64));
    charge(1, &g, 1);
    let opts = ChargeOptions::DEFAULT.no_reclaim();
    let err = on(0, || g.charge_with(10, opts)).unwrap_err();
    assert_eq!(limit(&err), (g.id(), 64, 64, 10));
    assert_eq!(calls.len(), 0);
    assert_eq!(uc(&g), (64, 63), "not drained");
    assert_eq!(counts(g.events_local()), events(0, 0), "a non-blocking failure raises nothing");
    // A charge that fits with no_reclaim is an ordinary charge (here: a stock hit).
    assert_eq!(on(1, || g.charge_with(3, opts)), Ok(Charged::default()));
    // The default options drain and succeed.
    charge(0, &g, 10);
    assert_eq!(uc(&g), (14, 0));

    on(0, || g.uncharge(14));
    assert_all_zero(&tree);
    drop(g);
    drop(err); // a failure names its group: it holds a reference on it
    finish(tree, log);
}

/// `no_retry` (Linux's `__GFP_NORETRY`, step 12): after the reclaim, the drain and the
/// reclaim that follows it, the charge fails instead of retrying; the drain still happens.
#[test]
fn no_retry_reclaims_and_drains_but_does_not_retry() {
    let (tree, log, calls) = recording_tree(DEFAULT_BATCH, DEFAULT_RETRIES);
    let g = child(&tree.root(), named("g").max(64));
    charge(1, &g, 40);
    let err = on(0, || g.charge_with(30, ChargeOptions::DEFAULT.no_retry())).unwrap_err();
    assert_eq!(limit(&err), (g.id(), 64, 40, 30));
    assert_eq!(uc(&g), (40, 0), "drained");
    assert_eq!(calls.len(), 2, "as many reclaim calls as with max_retries(0)");
    assert!(calls.len() < DEFAULT_RETRIES + 2);
    assert_eq!(counts(g.events_local()), events(1, 1));

    on(1, || g.uncharge(40));
    assert_all_zero(&tree);
    drop(g);
    drop(err); // a failure names its group: it holds a reference on it
    finish(tree, log);
}

/// A forced non-blocking charge raises only `max` (Linux's `force:` label), a forced
/// blocking one `max` and `oom`, a failing blocking one `max` and `oom`.
#[test]
fn events_of_failing_and_forced_charges_follow_linux() {
    let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)).batch(0));
    let g = tree.root().create_child(GroupSpec::new().max(10)).unwrap();
    let _ = g.try_charge(10).unwrap();
    let forced = g.charge_with(1, ChargeOptions::DEFAULT.no_reclaim().no_fail()).unwrap();
    assert!(forced.forced);
    assert_eq!(counts(g.events_local()), (0, 0, 1, 0));
    assert!(g.charge_with(1, ChargeOptions::DEFAULT.no_reclaim()).is_err());
    assert_eq!(counts(g.events_local()), (0, 0, 1, 0));
    assert!(g.charge_with(1, ChargeOptions::DEFAULT.no_retry()).is_err());
    assert_eq!(counts(g.events_local()), (0, 0, 2, 1));
    assert!(g.charge_with(1, ChargeOptions::DEFAULT.no_fail()).unwrap().forced);
    assert_eq!(counts(g.events_local()), (0, 0, 3, 2));
    g.uncharge(12);
}

/// Every configuration value is clamped to a documented bound rather than breaking the tree
/// later: absurd batch, shard and retry counts build a working tree.
#[test]
fn absurd_configuration_values_are_clamped() {
    use chargetree::stock::MAX_BATCH;
    let config = TreeConfig::with_cpus(TestCpus::new(2))
        .batch(usize::MAX)
        .refcount_shards(usize::MAX)
        .max_retries(usize::MAX)
        .unit_bytes(usize::MAX);
    let tree = Tree::with_config(config);
    let g = tree.root().create_child(GroupSpec::new().max(MAX_BATCH * 4)).unwrap();
    on(0, || {
        let _ = g.try_charge(1).unwrap();
        assert_eq!(g.counter().usage(), MAX_BATCH, "one batch, clamped");
        g.uncharge(1);
    });
    let clone = g.clone();
    assert_eq!(g.ref_count(), 4, "two handles, the base reference and the stock entry");
    drop(clone);
    let _ = tree.drain_all(&tree.root());
    assert_eq!(tree.root().counter().usage(), 0);
    // Shards: zero is one shard, not a panic.
    let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(2)).refcount_shards(0));
    assert_eq!(tree.root().ref_count(), 2);
}
