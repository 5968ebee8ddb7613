//! Helpers of the engine chapters (`tests/engine_*.rs`): trees with impersonated CPUs and a
//! logging observer, reclaimers made of closures and recording ones, and the tuples the
//! tests compare charge failures, events, reclaim walks and over-`high` reports with.

use super::{Log, Obs, on};

use std::sync::{Arc, Mutex};

use chargetree::cpu::{CpuProvider, TestCpus};
use chargetree::group::{
    ChargeFailure, ChargeOptions, Charged, EventCounts, Group, GroupId, GroupSpec, OverHigh, ReclaimWalk,
    Reclaimer, Tree, TreeConfig,
};

/// Charges `n` to `g` on CPU `cpu`; the charge must succeed (an over-`high` report is
/// ignored).
#[track_caller]
pub(crate) fn charge<P: CpuProvider, const K: usize>(cpu: usize, g: &Group<P, K>, n: usize) {
    let r = on(cpu, || g.try_charge(n));
    assert!(r.is_ok(), "charge {n} on CPU {cpu}: {r:?}");
}

/// A configuration with `cpus` impersonated CPUs, the default stock (64 entries, batch 64)
/// and a logging observer.
pub(crate) fn config(cpus: usize) -> (TreeConfig<TestCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    (TreeConfig::with_cpus(TestCpus::new(cpus)).observer(Obs(log.clone())), log)
}

/// A tree with two impersonated CPUs and the default stock.
pub(crate) fn test_tree() -> (Tree<TestCpus>, Arc<Log>) {
    let (config, log) = config(2);
    (Tree::with_config(config), log)
}

pub(crate) fn child<P: CpuProvider, const K: usize>(
    parent: &Group<P, K>,
    spec: GroupSpec<'_>,
) -> Group<P, K> {
    parent.create_child(spec).unwrap()
}

pub(crate) fn named(name: &str) -> GroupSpec<'_> {
    GroupSpec::new().name(name)
}

/// `(usage, cached units)` of a group.
pub(crate) fn uc<P: CpuProvider, const K: usize>(g: &Group<P, K>) -> (usize, usize) {
    (g.counter().usage(), g.cached_units())
}

/// Drains every stock, then checks that every group of the tree is at zero.
#[track_caller]
pub(crate) fn assert_all_zero<P: CpuProvider, const K: usize>(tree: &Tree<P, K>) {
    assert!(tree.drain_all(&tree.root()).is_some(), "no other drain is running");
    for g in tree.groups() {
        assert_eq!(uc(&g), (0, 0), "group {} is balanced", g.id());
    }
}

/// A reclaimer made of a closure.
pub(crate) struct FnReclaimer<F>(pub(crate) F);

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
pub(crate) struct Calls(pub(crate) Mutex<Vec<(GroupId, usize)>>);

impl Calls {
    pub(crate) fn push(&self, id: GroupId, amount: usize) {
        self.0.lock().unwrap().push((id, amount));
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub(crate) fn all(&self) -> Vec<(GroupId, usize)> {
        self.0.lock().unwrap().clone()
    }
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A reclaimer that records its calls and frees nothing.
pub(crate) fn recorder<P: CpuProvider, const K: usize>(calls: &Arc<Calls>) -> impl Reclaimer<P, K> + 'static {
    let calls = calls.clone();
    FnReclaimer(move |g: &Group<P, K>, amount: usize| {
        calls.push(g.id(), amount);
        0
    })
}

/// A tree with two impersonated CPUs, `batch`, `retries` and a recording reclaimer.
pub(crate) fn recording_tree(batch: usize, retries: usize) -> (Tree<TestCpus>, Arc<Log>, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let (config, log) = config(2);
    let tree = Tree::with_config(config.batch(batch).max_retries(retries).reclaimer(recorder(&calls)));
    (tree, log, calls)
}

pub(crate) fn events(max: usize, oom: usize) -> (usize, usize, usize, usize) {
    (0, 0, max, oom)
}

/// `(low, high, max, oom)` of a snapshot, to compare with [`events`].
pub(crate) fn counts(e: EventCounts) -> (usize, usize, usize, usize) {
    (e.low, e.high, e.max, e.oom)
}

/// `(group, max, usage, requested)` of a `Limit` failure.
#[track_caller]
pub(crate) fn limit(e: &ChargeFailure) -> (GroupId, usize, usize, usize) {
    match e {
        ChargeFailure::Limit { group, max, usage, requested, .. } => (*group, *max, *usage, *requested),
        other => panic!("not a Limit failure: {other:?}"),
    }
}

/// Charge options from the bits of `b` (no_fail, no_reclaim, no_retry).
pub(crate) fn options_from(b: u8) -> ChargeOptions {
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
pub(crate) fn walked(w: ReclaimWalk) -> (usize, usize, usize, usize, bool) {
    (w.reclaimed, w.visited, w.skipped_min, w.skipped_low, w.low_pass)
}

/// `(over_high, forced)` of a charge.
pub(crate) fn charged(c: Charged) -> (Option<(GroupId, usize, usize)>, bool) {
    (c.over_high.map(high), c.forced)
}

/// `(group, usage, high)` of an over-`high` report.
pub(crate) fn high(o: OverHigh) -> (GroupId, usize, usize) {
    (o.group, o.usage, o.high)
}
