//! Black-box tests of the charge engine and the per-CPU stock (Linux's `try_charge_memcg()` and
//! `memcg_stock_pcp` as `src/engine.rs` and `src/stock/mod.rs` implement them), through the
//! public API only.
//!
//! 1. One test per rule of the charge path and the stock: fast path, batching, retry with
//!    the exact amount, the failing ancestor, events, the reclaim hook, drain before failing,
//!    bounded retries, charge options, `K` entries with round-robin eviction, the stock's
//!    references (S2) and bound (S3), uncharge into the stock, `drain_local`, `drain_all`,
//!    `Group::set_max`, over-`high` reports, and `Group::walk_reclaim`'s protection policy.
//! 2. A reclaimer that panics leaves every counter, stock and reference count balanced.
//! 3. A property test of random operations on a small random tree across impersonated CPUs,
//!    against a model of what the caller's objects hold: after every step each group's usage
//!    equals the objects' charges plus the cached units of its subtree.
//! 4. A two-thread stress test at the limit with a reclaim hook, on `ThreadCpus`.
//!
//! Trees are built with `TestCpus` (each thread charges "on" whatever CPU `TestCpus::run_on`
//! names; outside `run_on` it is on no CPU and bypasses the stocks) unless a test says
//! otherwise, with a logging [`Observer`] so that every test can end by checking that each
//! group was released and freed exactly once.
//!
//! Under miri the loops and the property test shrink; the file passes with
//! `MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance"` (see `ci/miri.sh` for why
//! crossbeam-epoch needs both).

extern crate alloc;

use alloc::sync::{Arc, Weak};
use core::panic::AssertUnwindSafe;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::collections::HashSet;
use std::panic::catch_unwind;
use std::sync::{Mutex, OnceLock};
use std::thread;

use chargetree::counter::LimitError;
use chargetree::cpu::{CpuProvider, TestCpus, ThreadCpus};
use chargetree::group::{
    ChargeFailure, ChargeOptions, Charged, DEFAULT_RETRIES, EventCounts, Group, GroupError, GroupId,
    GroupSpec, Observer, OverHigh, ReclaimWalk, Reclaimer, Tree, TreeConfig, reclaim_orphans,
};
use chargetree::stock::DEFAULT_BATCH;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Iterations of the loops and threaded tests (small under miri).
const fn scaled(n: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { n }
}

/// A CPU index `TestCpus` maps to "no CPU" (the stocks are bypassed).
const NO_CPU: usize = usize::MAX;

/// Runs `f` on impersonated CPU `cpu`.
fn on<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    // SAFETY: the tests here never run two threads on one impersonated CPU at once (each
    // thread of a threaded test is given a CPU of its own).
    unsafe { TestCpus::run_on(cpu, f) }
}

/// Charges `n` to `g` on CPU `cpu`; the charge must succeed (an over-`high` report is
/// ignored).
#[track_caller]
fn charge<P: CpuProvider, const K: usize>(cpu: usize, g: &Group<P, K>, n: usize) {
    let r = on(cpu, || g.try_charge(n));
    assert!(r.is_ok(), "charge {n} on CPU {cpu}: {r:?}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Released,
    Freed,
}

/// Everything the observer saw, in order.
#[derive(Debug, Default)]
struct Log {
    events: Mutex<Vec<(Ev, GroupId)>>,
}

impl Log {
    fn push(&self, ev: Ev, id: GroupId) {
        self.events.lock().unwrap().push((ev, id));
    }

    fn count(&self, ev: Ev, id: GroupId) -> usize {
        self.events.lock().unwrap().iter().filter(|&&e| e == (ev, id)).count()
    }

    fn released(&self, id: GroupId) -> usize {
        self.count(Ev::Released, id)
    }

    fn freed(&self, id: GroupId) -> usize {
        self.count(Ev::Freed, id)
    }

    fn total(&self, ev: Ev) -> usize {
        self.events.lock().unwrap().iter().filter(|e| e.0 == ev).count()
    }

    /// No group released or freed twice; every free comes after its release.
    #[track_caller]
    fn check(&self) {
        let events = self.events.lock().unwrap();
        let mut released = HashSet::new();
        let mut freed = HashSet::new();
        for &(ev, id) in events.iter() {
            match ev {
                Ev::Released => assert!(released.insert(id), "{id} released twice: {events:?}"),
                Ev::Freed => {
                    assert!(released.contains(&id), "{id} freed before its release: {events:?}");
                    assert!(freed.insert(id), "{id} freed twice: {events:?}");
                }
            }
        }
    }
}

struct Obs(Arc<Log>);

impl Observer for Obs {
    fn released(&self, id: GroupId) {
        self.0.push(Ev::Released, id);
    }
    fn freed(&self, id: GroupId) {
        self.0.push(Ev::Freed, id);
    }
}

/// A configuration with `cpus` impersonated CPUs, the default stock (8 entries, batch 64)
/// and a logging observer.
fn config(cpus: usize) -> (TreeConfig<TestCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    (TreeConfig::with_cpus(TestCpus::new(cpus)).observer(Obs(log.clone())), log)
}

/// A tree with two impersonated CPUs and the default stock.
fn test_tree() -> (Tree<TestCpus>, Arc<Log>) {
    let (config, log) = config(2);
    (Tree::with_config(config), log)
}

fn child<P: CpuProvider, const K: usize>(parent: &Group<P, K>, spec: GroupSpec<'_>) -> Group<P, K> {
    parent.create_child(spec).unwrap()
}

fn named(name: &str) -> GroupSpec<'_> {
    GroupSpec::new().name(name)
}

/// `(usage, cached units)` of a group.
fn uc<P: CpuProvider, const K: usize>(g: &Group<P, K>) -> (usize, usize) {
    (g.counter().usage(), g.cached_units())
}

/// Drains every stock, then checks that every group of the tree is at zero.
#[track_caller]
fn assert_all_zero<P: CpuProvider, const K: usize>(tree: &Tree<P, K>) {
    assert!(tree.drain_all(&tree.root()).is_some(), "no other drain is running");
    for g in tree.groups() {
        assert_eq!(uc(&g), (0, 0), "group {} is balanced", g.id());
    }
}

/// Drops the tree (the caller has dropped its handles) and checks that every group it ever
/// created was released and freed exactly once, and that the tree's bookkeeping is gone.
#[track_caller]
fn finish<P: CpuProvider, const K: usize>(tree: Tree<P, K>, log: Arc<Log>) {
    let created = tree.stats().created;
    drop(tree);
    assert_eq!(log.total(Ev::Released), created, "every group released");
    assert_eq!(log.total(Ev::Freed), created, "every group freed");
    log.check();
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping (and observer) was freed");
}

/// A reclaimer made of a closure.
struct FnReclaimer<F>(F);

impl<P: CpuProvider, const K: usize, F> Reclaimer<P, K> for FnReclaimer<F>
where
    F: Fn(&Group<P, K>, usize) -> usize + Send + Sync + 'static,
{
    fn reclaim(&self, group: &Group<P, K>, amount: usize) -> usize {
        (self.0)(group, amount)
    }
}

/// The calls a reclaimer saw: `(group, amount)`.
#[derive(Debug, Default)]
struct Calls(Mutex<Vec<(GroupId, usize)>>);

impl Calls {
    fn push(&self, id: GroupId, amount: usize) {
        self.0.lock().unwrap().push((id, amount));
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn all(&self) -> Vec<(GroupId, usize)> {
        self.0.lock().unwrap().clone()
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A reclaimer that records its calls and frees nothing.
fn recorder<P: CpuProvider, const K: usize>(calls: &Arc<Calls>) -> impl Reclaimer<P, K> + 'static {
    let calls = calls.clone();
    FnReclaimer(move |g: &Group<P, K>, amount: usize| {
        calls.push(g.id(), amount);
        0
    })
}

/// A tree with two impersonated CPUs, `batch`, `retries` and a recording reclaimer.
fn recording_tree(batch: usize, retries: usize) -> (Tree<TestCpus>, Arc<Log>, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let (config, log) = config(2);
    let tree = Tree::with_config(config.batch(batch).max_retries(retries).reclaimer(recorder(&calls)));
    (tree, log, calls)
}

fn events(max: usize, oom: usize) -> (usize, usize, usize, usize) {
    (0, 0, max, oom)
}

/// `(low, high, max, oom)` of a snapshot, to compare with [`events`].
fn counts(e: EventCounts) -> (usize, usize, usize, usize) {
    (e.low, e.high, e.max, e.oom)
}

/// `(group, max, usage, requested)` of a `Limit` failure.
#[track_caller]
fn limit(e: &ChargeFailure) -> (GroupId, usize, usize, usize) {
    match e {
        ChargeFailure::Limit { group, max, usage, requested, .. } => (*group, *max, *usage, *requested),
        other => panic!("not a Limit failure: {other:?}"),
    }
}

/// Charge options from the bits of `b` (no_fail, no_reclaim, no_retry).
fn options_from(b: u8) -> ChargeOptions {
    let mut o = ChargeOptions::DEFAULT;
    if b & 1 != 0 {
        o = o.no_fail();
    }
    if b & 2 != 0 {
        o = o.no_reclaim();
    }
    if b & 4 != 0 {
        o = o.no_retry();
    }
    o
}

/// `(reclaimed, visited, skipped_min, skipped_low, low_pass)` of a reclaim walk.
fn walked(w: ReclaimWalk) -> (usize, usize, usize, usize, bool) {
    (w.reclaimed, w.visited, w.skipped_min, w.skipped_low, w.low_pass)
}

/// `(over_high, forced)` of a charge.
fn charged(c: Charged) -> (Option<(GroupId, usize, usize)>, bool) {
    (c.over_high.map(high), c.forced)
}

/// `(group, usage, high)` of an over-`high` report.
fn high(o: OverHigh) -> (GroupId, usize, usize) {
    (o.group, o.usage, o.high)
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The charge path (§2.2) and the stock (§3)
// ---------------------------------------------------------------------------------------------

/// §2.2 step 1 / §3.4 S5: a stock hit takes units from this CPU's entry and touches no
/// counter (usage and peak unchanged, cached units go down); another CPU's stock is separate.
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

/// §2.2 steps 2 and done_restock: a miss charges `max(batch, n)` and gives `batch − n` to
/// this CPU's stock (added to what the entry still holds); `TreeConfig::batch` sets the
/// batch and 0 disables the stocks.
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

/// §1.14: `n = 0` is a no-op in effect. A zero charge has nothing to hand out, so it should
/// neither pre-charge a batch into the stock nor report (and raise) over-`high`.
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

/// §2.8 / §3.2: `n > batch` bypasses the stock both ways: charged exactly, nothing cached,
/// and uncharged straight from the counters even where the group is cached.
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

/// §2.2 step 4: when the batch does not fit, the engine retries with exactly `n` before any
/// reclaim (max 100, usage 50, charge 1 with batch 64 succeeds and caches nothing), also when
/// it is an ancestor's limit that refuses the batch.
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

/// §2.7 C4: the failure names the lowest ancestor-or-self whose `max` refused, with its
/// limit and usage; nothing stays charged; `Event::Max` and `Event::Oom` go to that group
/// (local) and its ancestors (hierarchical), not to the charged group.
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

/// §2.2 step 8 and the final failure: `Event::Max` is raised once per failing charge however
/// many reclaim rounds it takes, `Event::Oom` once when it finally fails, and not at all when
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

/// §2.2 step 9: the reclaimer is called with the over-limit group (the charged group, or the
/// ancestor whose limit refused) and the amount the charge needs (`n`, not the batch).
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

/// §2.2 step 10: a reclaimer that frees enough makes the charge succeed right away (one
/// call), without stocks to muddy the numbers.
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
/// reclaimer frees on the charging CPU may land in the stock instead of the margin; the
/// drain that follows (§2.2 step 11) returns it and the charge succeeds.
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

/// §2.2 step 11: before failing, the failing group's subtree is drained on every CPU (after
/// one reclaim call): units another CPU cached are returned and the charge succeeds; a charge
/// that fails even so leaves the subtree drained and other subtrees' entries alone.
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

/// §2.2 step 14: retries are bounded by `TreeConfig::max_retries`. The reclaimer is called
/// once before the drain, once after it, and once per retry.
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

/// §2.2 force: `no_fail` forces exactly `n` past the limit after reclaim and retries,
/// reports it in `Charged::forced`, counts it in `TreeStats::forced`, raises `Event::Max`
/// once; a no-fail charge that fits is not forced.
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
/// retries (or was forced past `max`)" — and Linux raises `oom` for a no-fail charge that
/// went through its retries before it is forced (§2.2 step 17, then `nomem` → `force`).
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

/// §3.2, as this crate places entries: a CPU's stock is a direct-mapped table of `K`
/// entries, a group's entry chosen by its slot in the tree's arena. A fresh tree hands out
/// slots densely in creation order (the root takes slot 0), so any `K` groups created one
/// after another sit in distinct entries, and a charge evicts only the group in its own
/// entry, returning the victim's units to its counters and its reference. (Linux's 7-entry
/// stock evicts round-robin, the 2026 `drain_idx` fix; see the README's deviations.)
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

/// §3.3 / S2: every occupied entry owns one reference. An offline group charged again is
/// cached again (§2.8) and pinned by the entry after its last handle is gone; `drain_all`
/// takes the entry and releases it.
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

/// §3.4 S3: an entry never holds more than the batch; an uncharge into a full entry sends
/// the excess to the counters (the library keeps the entry instead of draining it).
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

/// §2.5 / §3.5: `Group::set_max` below a usage that only stocks hold drains them and
/// succeeds (also for an ancestor's limit over a descendant's entries); below what objects
/// hold it returns `LimitError::Busy` (after draining) and changes nothing else.
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

/// §2.2 done_restock, library-shaped: a charge that walked the counters and left a group
/// above its `high` succeeds and names the lowest such group with its usage, `high` and
/// excess, raising `Event::High` on every group of the path that is over (Linux's
/// `reclaim_high` walks all of them).
#[test]
fn over_high_is_reported_with_the_lowest_over_high_group() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, named("p").high(100));
    let g = child(&p, named("g").high(50));
    let c = on(0, || g.try_charge(60)).unwrap();
    assert_eq!(charged(c), (Some((g.id(), 64, 50)), false));
    assert_eq!(c.over_high.unwrap().excess(), 14, "the batch counts: usage includes the cached units");
    assert_eq!((g.events_local().high, p.events_local().high, p.events().high), (1, 0, 1));

    // Only the ancestor is over: it is named.
    let q = child(&root, named("q").high(30));
    let h = child(&q, named("h"));
    let c = on(1, || h.try_charge(20)).unwrap();
    assert_eq!(c.over_high.map(high), Some((q.id(), 64, 30)));
    assert_eq!((q.events_local().high, h.events_local().high), (1, 0));

    // Both: the lowest is named, both raise the event.
    let c = on(1, || g.try_charge(40)).unwrap();
    assert_eq!(c.over_high.map(|o| o.group), Some(g.id()));
    assert_eq!((g.events_local().high, p.events_local().high), (2, 1));

    on(0, || g.uncharge(100));
    on(1, || h.uncharge(20));
    assert_all_zero(&tree);
    drop((p, g, q, h, root));
    finish(tree, log);
}

/// §2.2 step 1: stock hits are not checked against `high` (documented): the units were
/// counted when the batch was charged.
#[test]
fn stock_hits_are_not_checked_against_high() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), named("g").high(10));
    assert!(on(0, || g.try_charge(20)).unwrap().over_high.is_some());
    assert_eq!(g.events_local().high, 1);
    assert_eq!(on(0, || g.try_charge(30)), Ok(Charged::default()), "a hit: not reported");
    assert_eq!((uc(&g), g.events_local().high), ((64, 14), 1));
    on(0, || g.uncharge(50));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// The kernel selftest tree (`test_memcg_min`): the reclaim target `t` has a child `b` with
/// min 50 and children c, d, e, f declaring 75, 25, 0, 500 with usage 50, 50, 50, 0. `b`
/// gets its declared 50 (a child of the target); its overcommitted children share it in
/// proportion to their protected usage (c: 50·50/75 = 33, d: 25·50/75 = 16), e gets none.
/// None is within its effective min at first, so all are visited. Reclaiming each leaf down
/// to its effective min until nothing more comes converges, as in the selftest, to b ≈ 50
/// split between c and d with c above d, e and f empty; then b, c and d are skipped.
#[test]
fn walk_reclaim_kernel_selftest_min_tree() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let t = child(&root, named("t"));
    let b = child(&t, named("b").min(50));
    let leaves: Vec<Group<TestCpus>> = [("c", 75, 50), ("d", 25, 50), ("e", 0, 50), ("f", 500, 0)]
        .into_iter()
        .map(|(name, min, usage)| {
            let g = child(&b, named(name).min(min));
            g.counter().try_charge(usage).unwrap();
            g
        })
        .collect();
    let [c, d, e, f] = &leaves[..] else { unreachable!() };

    // A visitor that frees nothing: the effective values of one walk.
    let mut visited = Vec::new();
    let walk = t.walk_reclaim(1000, false, |g, _| {
        visited.push(g.id());
        0
    });
    assert_eq!(walked(walk), (0, 5, 0, 0, false));
    let want: HashSet<GroupId> = [&t, &b, c, d, e].iter().map(|g| g.id()).collect();
    assert_eq!(visited.iter().copied().collect::<HashSet<_>>(), want, "f has no usage");
    assert_eq!(visited[0], t.id(), "pre-order from the target");
    let emin = |g: &Group<TestCpus>| g.counter().effective_min();
    assert_eq!((emin(&b), emin(c), emin(d), emin(e)), (50, 33, 16, 0));

    // Reclaim each leaf down to its effective min until a walk frees nothing.
    let ids: HashSet<GroupId> = leaves.iter().map(|g| g.id()).collect();
    let mut last = ReclaimWalk::default();
    for round in 0.. {
        assert!(round < 200, "converges");
        last = t.walk_reclaim(1000, false, |g, wanted| {
            if !ids.contains(&g.id()) {
                return 0;
            }
            let free = (g.counter().usage() - g.counter().effective_min()).min(wanted);
            g.uncharge(free);
            free
        });
        if last.reclaimed == 0 {
            break;
        }
    }
    let (uc_, ud) = (c.counter().usage(), d.counter().usage());
    assert!((45..=50).contains(&b.counter().usage()), "b ≈ its min: c {uc_}, d {ud}");
    assert!(uc_ > ud && ud > 0, "c {uc_}, d {ud}");
    assert_eq!((e.counter().usage(), f.counter().usage()), (0, 0));
    assert_eq!((last.visited, last.skipped_min, last.skipped_low), (1, 3, 0), "only t is left: {last:?}");
    assert_eq!(b.events().low, 0);

    c.uncharge(uc_);
    d.uncharge(ud);
    assert_all_zero(&tree);
    drop((leaves, t, b, root));
    finish(tree, log);
}

/// §1.12: a group within its effective `low` is skipped on the first pass and reclaimed on a
/// second pass, raising `Event::Low`, only when the first pass fell short; groups within
/// their effective `min` are skipped on both passes.
#[test]
fn walk_reclaim_low_protection_needs_a_second_pass() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let t = child(&root, named("t"));
    let a = child(&t, named("a").low(45));
    // Created last, so visited first (children are walked newest first).
    let u = child(&a, named("u"));
    let l = child(&a, named("l").low(100));
    l.counter().try_charge(40).unwrap();
    u.counter().try_charge(30).unwrap();
    let leaves: HashSet<GroupId> = [l.id(), u.id()].into_iter().collect();
    let mut log_visits = Vec::new();
    let mut visitor = |g: &Group<TestCpus>, wanted: usize| {
        log_visits.push(g.id());
        if !leaves.contains(&g.id()) {
            return 0;
        }
        let free = g.counter().usage().min(wanted);
        g.uncharge(free);
        free
    };

    // Enough unprotected memory: l is skipped and keeps its low event count at zero.
    let walk = t.walk_reclaim(20, false, &mut visitor);
    assert_eq!(walked(walk), (20, 3, 0, 1, false));
    assert_eq!((l.counter().usage(), u.counter().usage()), (40, 10));
    assert_eq!((l.events_local().low, t.events().low), (0, 0));
    assert_eq!((l.counter().effective_low(), a.counter().effective_low()), (40, 45));

    // Not enough: a second pass takes from l and raises its low event. Once the first pass
    // emptied u, a's usage (40) fell within its own low (45): the second pass finds a
    // low-protected too, reclaims from it (nothing local) and raises its low event, as
    // Linux does.
    let walk = t.walk_reclaim(100, false, &mut visitor);
    assert_eq!((walk.reclaimed, walk.skipped_low, walk.low_pass), (50, 1, true));
    assert_eq!((l.counter().usage(), u.counter().usage()), (0, 0));
    assert_eq!((l.events_local().low, a.events_local().low, u.events_local().low), (1, 1, 0));
    assert_eq!((a.events().low, t.events().low, t.events_local().low), (2, 2, 0));
    let second: Vec<GroupId> = log_visits[3..].to_vec();
    let pos = |id| second.iter().position(|&x| x == id);
    assert_eq!(second.iter().filter(|&&x| x == l.id()).count(), 1, "{second:?}");
    assert!(pos(u.id()).unwrap() < pos(l.id()).unwrap(), "l only after the unprotected u");

    // A group within its effective min is never visited, even when the walk falls short.
    let m = child(&a, named("m").min(100));
    a.counter().set_min(100).unwrap();
    m.counter().try_charge(10).unwrap();
    l.counter().try_charge(10).unwrap();
    let mut visits = Vec::new();
    let walk = t.walk_reclaim(100, false, |g, _| {
        visits.push(g.id());
        0
    });
    assert!(walk.low_pass && walk.skipped_min >= 1, "{walk:?}");
    assert!(!visits.contains(&m.id()), "m is within its effective min");
    assert!(visits.contains(&l.id()), "l is only low-protected");
    assert_eq!((m.events_local().low, l.events_local().low, a.events_local().low), (0, 2, 1));

    m.uncharge(10);
    l.uncharge(10);
    assert_all_zero(&tree);
    drop((t, a, l, u, m, root));
    finish(tree, log);
}

/// §1.12: the reclaim target's own protection is ignored (it does not shield itself), while
/// the same group is protected from a walk rooted above it.
#[test]
fn walk_reclaim_ignores_the_targets_own_protection() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let t = child(&root, named("t"));
    let g = child(&t, named("g").min(1000).low(1000));
    g.counter().try_charge(40).unwrap();
    let gid = g.id();
    let free_all = |x: &Group<TestCpus>, wanted: usize| {
        if x.id() != gid {
            return 0;
        }
        let free = x.counter().usage().min(wanted);
        x.uncharge(free);
        free
    };
    let walk = t.walk_reclaim(10, false, free_all);
    assert_eq!((walk.reclaimed, walk.skipped_min), (0, 1), "g is protected below t: {walk:?}");
    let walk = g.walk_reclaim(10, false, free_all);
    assert_eq!(walked(walk), (10, 1, 0, 0, false));
    assert_eq!((g.counter().usage(), g.events_local().low), (30, 0));
    g.uncharge(30);
    assert_all_zero(&tree);
    drop((t, g, root));
    finish(tree, log);
}

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
// 3. Property test: random operations against a model of the objects' charges
// ---------------------------------------------------------------------------------------------

/// Impersonated CPUs of the property test; CPU index `PCPUS` means "no CPU".
const PCPUS: usize = 3;
/// Stock entries per CPU in the property test: small, so that eviction is common.
const PK: usize = 2;

type PGroup = Group<TestCpus, PK>;

#[derive(Clone, Debug)]
enum Op {
    Charge { g: usize, cpu: usize, n: usize, opts: u8 },
    Uncharge { g: usize, cpu: usize, n: usize },
    DrainLocal { cpu: usize },
    DrainAll { g: usize, cpu: usize },
    SetMax { g: usize, v: usize },
    Offline { g: usize },
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    let g = 0..nodes;
    let cpu = 0..=PCPUS;
    let amount = prop_oneof![8 => 0usize..=20, 1 => 20usize..=80];
    prop_oneof![
        6 => (g.clone(), cpu.clone(), amount, 0u8..8).prop_map(|(g, cpu, n, opts)| Op::Charge { g, cpu, n, opts }),
        4 => (g.clone(), cpu.clone(), 0usize..=80).prop_map(|(g, cpu, n)| Op::Uncharge { g, cpu, n }),
        1 => cpu.clone().prop_map(|cpu| Op::DrainLocal { cpu }),
        1 => (g.clone(), cpu).prop_map(|(g, cpu)| Op::DrainAll { g, cpu }),
        2 => (g.clone(), 0usize..=160).prop_map(|(g, v)| Op::SetMax { g, v }),
        1 => g.prop_map(|g| Op::Offline { g }),
    ]
}

/// A case: parents (node i + 1's parent is among 0..=i), each node's initial max (`None`:
/// unlimited), the batch, whether a reclaimer frees objects, and the operations.
type Case = (Vec<usize>, Vec<Option<usize>>, usize, bool, Vec<Op>);

fn case() -> impl Strategy<Value = Case> {
    let ops = if cfg!(miri) { 1..16 } else { 1..60 };
    (1usize..6).prop_flat_map(move |len| {
        let parents = (1..len).map(|i| 0..i).collect::<Vec<_>>();
        let maxes = proptest::collection::vec(proptest::option::weighted(0.5, 0usize..=150), len);
        let batch = proptest::sample::select(vec![0usize, 1, 3, 8, 16, 64]);
        (parents, maxes, batch, any::<bool>(), proptest::collection::vec(op(len), ops.clone()))
    })
}

/// What the caller's objects hold per group, shared with the reclaimer (which frees objects
/// of the over-limit group's subtree, like a cache shrinker would).
#[derive(Default)]
struct Objects {
    held: Vec<usize>,
    handles: Vec<PGroup>,
    reclaims: usize,
}

struct Model {
    parents: Vec<Option<usize>>,
    online: Vec<bool>,
    forced: usize,
    forced_any: bool,
}

impl Model {
    fn subtree(&self, i: usize) -> Vec<usize> {
        (0..self.parents.len()).filter(|&j| self.is_under(j, i)).collect()
    }
    fn is_under(&self, mut j: usize, i: usize) -> bool {
        loop {
            if j == i {
                return true;
            }
            match self.parents[j] {
                Some(p) => j = p,
                None => return false,
            }
        }
    }
}

fn cached_of(gs: &[PGroup], nodes: &[usize]) -> usize {
    nodes.iter().map(|&j| gs[j].cached_units()).sum()
}

fn check_invariants(
    tree: &Tree<TestCpus, PK>,
    gs: &[PGroup],
    model: &Model,
    objects: &Mutex<Objects>,
    batch: usize,
) -> Result<(), TestCaseError> {
    let held = objects.lock().unwrap().held.clone();
    for i in 0..gs.len() {
        let sub = model.subtree(i);
        let objs: usize = sub.iter().map(|&j| held[j]).sum();
        let usage = gs[i].counter().usage();
        prop_assert_eq!(usage, objs + cached_of(gs, &sub), "S1 / I1 at group {}", i);
        let cached = gs[i].cached_units();
        prop_assert!(cached <= batch * PCPUS, "S3 at group {}: {} cached, batch {}", i, cached, batch);
        if !model.forced_any {
            prop_assert!(usage <= gs[i].counter().max(), "I2 at group {}", i);
        }
        // References: our handle and the reclaimer's, the base while online, one per child
        // (children are held, so never freed), plus at most one per CPU whose stock caches
        // the group.
        let children = (0..gs.len()).filter(|&j| model.parents[j] == Some(i)).count();
        let least = 2 + usize::from(model.online[i]) + children;
        let refs = gs[i].ref_count();
        prop_assert!((least..=least + PCPUS).contains(&refs), "refs of {}: {} vs {}", i, refs, least);
    }
    prop_assert_eq!(tree.stats().forced, model.forced);
    Ok(())
}

/// Drains `cpu` and checks per group that it held at most a batch there (S3 per CPU) and
/// that the return value counts what was taken.
fn drain_local_checked(
    tree: &Tree<TestCpus, PK>,
    gs: &[PGroup],
    cpu: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let before: Vec<usize> = gs.iter().map(|g| g.cached_units()).collect();
    let returned = on(cpu, || tree.drain_local());
    let mut sum = 0;
    for (i, g) in gs.iter().enumerate() {
        let taken = before[i] - g.cached_units();
        prop_assert!(taken <= batch, "group {} had {} on CPU {}, batch {}", i, taken, cpu, batch);
        sum += taken;
    }
    prop_assert_eq!(returned, sum);
    if cpu >= PCPUS {
        prop_assert_eq!(returned, 0);
    }
    Ok(())
}

#[allow(clippy::too_many_lines)]
fn run_case((parents, maxes, batch, reclaim, ops): Case) -> Result<(), TestCaseError> {
    let objects = Arc::new(Mutex::new(Objects::default()));
    let log = Arc::new(Log::default());
    let mut config = TreeConfig::<_, PK>::with_cpus_and_slots(TestCpus::new(PCPUS))
        .batch(batch)
        .max_retries(2)
        .observer(Obs(log.clone()));
    if reclaim {
        let objs = objects.clone();
        config = config.reclaimer(FnReclaimer(move |over: &PGroup, amount: usize| {
            let mut o = objs.lock().unwrap();
            o.reclaims += 1;
            let mut freed = 0;
            for j in 0..o.handles.len() {
                if freed >= amount {
                    break;
                }
                if o.handles[j].is_descendant_of(over) {
                    let k = o.held[j].min(amount - freed);
                    o.handles[j].uncharge(k);
                    o.held[j] -= k;
                    freed += k;
                }
            }
            freed
        }));
    }
    let tree = Tree::with_config(config);
    let mut gs: Vec<PGroup> = vec![tree.root()];
    let mut model = Model { parents: vec![None], online: vec![true], forced: 0, forced_any: false };
    for &p in &parents {
        let g = gs[p].create_child(GroupSpec::new()).unwrap();
        gs.push(g);
        model.parents.push(Some(p));
        model.online.push(true);
    }
    for (g, max) in gs.iter().zip(&maxes) {
        if let Some(max) = *max {
            g.set_max(max).unwrap();
        }
    }
    {
        let mut o = objects.lock().unwrap();
        o.held = vec![0; gs.len()];
        o.handles = gs.clone();
    }

    for op in &ops {
        match *op {
            Op::Charge { g, cpu, n, opts } => {
                let options = options_from(opts);
                let r = on(cpu, || gs[g].charge_with(n, options));
                match r {
                    Ok(c) => {
                        objects.lock().unwrap().held[g] += n;
                        if c.forced {
                            prop_assert!(options.no_fail, "forced without no_fail");
                            model.forced += 1;
                            model.forced_any = true;
                        }
                        if let Some(o) = c.over_high {
                            prop_assert!(o.usage > o.high);
                        }
                    }
                    Err(ChargeFailure::Limit { group, max, usage, requested, .. }) => {
                        prop_assert!(!options.no_fail, "a no-fail charge failed");
                        prop_assert_eq!(requested, n);
                        let over = (0..gs.len()).find(|&i| gs[i].id() == group).expect("a group of the tree");
                        prop_assert!(model.is_under(g, over), "{} is not an ancestor of {}", over, g);
                        prop_assert_eq!(max, gs[over].counter().max());
                        prop_assert_eq!(usage, gs[over].counter().usage());
                        prop_assert!(usage + n > max, "failed although {} + {} <= {}", usage, n, max);
                    }
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
            }
            Op::Uncharge { g, cpu, n } => {
                let n = n.min(objects.lock().unwrap().held[g]);
                on(cpu, || gs[g].uncharge(n));
                objects.lock().unwrap().held[g] -= n;
            }
            Op::DrainLocal { cpu } => drain_local_checked(&tree, &gs, cpu, batch)?,
            Op::DrainAll { g, cpu } => {
                let sub = model.subtree(g);
                let others: Vec<usize> = (0..gs.len()).filter(|j| !sub.contains(j)).collect();
                let (want, kept) = (cached_of(&gs, &sub), cached_of(&gs, &others));
                prop_assert_eq!(on(cpu, || tree.drain_all(&gs[g])), Some(want));
                prop_assert_eq!((cached_of(&gs, &sub), cached_of(&gs, &others)), (0, kept));
            }
            Op::SetMax { g, v } => {
                let sub = model.subtree(g);
                let held: usize = {
                    let o = objects.lock().unwrap();
                    sub.iter().map(|&j| o.held[j]).sum()
                };
                let r = gs[g].set_max(v);
                if held <= v {
                    prop_assert_eq!(r, Ok(()), "objects hold {}", held);
                    prop_assert_eq!(gs[g].counter().max(), v);
                } else {
                    prop_assert_eq!(r, Err(LimitError::Busy { usage: held, limit: v }));
                    prop_assert_eq!(cached_of(&gs, &sub), 0, "the refused write drained the subtree");
                }
            }
            Op::Offline { g } => {
                let online_children =
                    (0..gs.len()).filter(|&j| model.parents[j] == Some(g) && model.online[j]).count();
                let r = gs[g].offline();
                if g == 0 {
                    prop_assert_eq!(r, Err(GroupError::Root));
                } else if !model.online[g] {
                    prop_assert_eq!(r, Err(GroupError::Offline));
                } else if online_children > 0 {
                    prop_assert_eq!(r, Err(GroupError::HasOnlineChildren { online_children }));
                } else {
                    prop_assert_eq!(r, Ok(()));
                    model.online[g] = false;
                    prop_assert_eq!(gs[g].cached_units(), 0, "offline drains the group's entries");
                }
            }
        }
        check_invariants(&tree, &gs, &model, &objects, batch)?;
    }

    // Per-CPU bound on every CPU, then everything back.
    for cpu in 0..=PCPUS {
        drain_local_checked(&tree, &gs, cpu, batch)?;
    }
    let held = core::mem::take(&mut objects.lock().unwrap().held);
    for (g, n) in gs.iter().zip(held) {
        prop_assert_eq!(g.cached_units(), 0);
        g.uncharge(n);
    }
    for g in &gs {
        prop_assert_eq!(g.counter().usage(), 0, "group {} balances", g.id());
    }
    objects.lock().unwrap().handles.clear();
    drop(gs);
    let created = tree.stats().created;
    drop(tree);
    prop_assert_eq!((log.total(Ev::Released), log.total(Ev::Freed)), (created, created));
    log.check();
    Ok(())
}

fn cases() -> u32 {
    if cfg!(miri) { 6 } else { 256 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// After every step, for every group: usage = Σ objects' charges + Σ cached units in its
    /// subtree; cached units within the batch per CPU; usage ≤ max unless a charge was
    /// forced; references within [handles + base + children, + CPUs]; failures and limit
    /// writes refused only when the numbers say so.
    #[test]
    fn engine_matches_the_object_model(case in case()) {
        run_case(case)?;
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

/// The trust review's case: parent `high` 10, child `high` 20, the child charges 30 (stocks
/// off, so the counters see exactly 30): both are over, both raise `high`, once each.
#[test]
fn every_over_high_level_raises_its_own_high_event() {
    let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)).batch(0));
    let parent = tree.root().create_child(GroupSpec::new().high(10)).unwrap();
    let child = parent.create_child(GroupSpec::new().high(20)).unwrap();
    let c = child.try_charge(30).unwrap();
    assert_eq!(c.over_high.map(high), Some((child.id(), 30, 20)));
    assert_eq!((child.events_local().high, parent.events_local().high), (1, 1));
    assert_eq!((parent.events().high, tree.root().events().high), (2, 2));
    child.uncharge(30);
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
