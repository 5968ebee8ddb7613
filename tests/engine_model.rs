//! Engine tests, chapter 6: a property test of random operations on a small random tree
//! across impersonated CPUs, against a model of what the caller's objects hold: after every
//! step each group's usage equals the objects' charges plus the cached units of its subtree.
//!
//! The model is the crate's own [`TreeModel`] (`chargetree::model`, behind the `model`
//! feature, which the dev-dependency of the package on itself turns on for every test target
//! in the repository; the packaged crate's `cargo test` builds this file empty): topology,
//! lifecycle, the units the objects hold, forced charges, limit writes and reference bounds.
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
//! [`TreeModel`]: chargetree::model::TreeModel

#![cfg(feature = "model")]

mod support;

use support::engine::*;
use support::*;

use std::sync::{Arc, Mutex};

use chargetree::counter::LimitError;
use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeFailure, Group, GroupId, GroupSpec, Tree, TreeConfig};
use chargetree::model::TreeModel;
use proptest::prelude::*;

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

/// The model, shared with the reclaimer (which frees objects of the over-limit group's
/// subtree, like a cache shrinker would): the tree with what the caller's objects hold per
/// group (`TreeModel::held`), and the caller's handles.
#[derive(Default)]
struct Objects {
    model: TreeModel,
    handles: Vec<PGroup>,
    reclaims: usize,
}

fn cached_of(gs: &[PGroup], nodes: &[usize]) -> usize {
    nodes.iter().map(|&j| gs[j].cached_units()).sum()
}

fn check_invariants(
    tree: &Tree<TestCpus, PK>,
    gs: &[PGroup],
    objects: &Mutex<Objects>,
    batch: usize,
) -> Result<(), TestCaseError> {
    let model = objects.lock().unwrap().model.clone();
    prop_assert_eq!(model.created(), gs.len());
    for i in 0..gs.len() {
        let sub = model.subtree(i);
        let usage = gs[i].counter().usage();
        prop_assert_eq!(usage, model.held_in(i) + cached_of(gs, &sub), "S1 / I1 at group {}", i);
        let cached = gs[i].cached_units();
        prop_assert!(cached <= batch * PCPUS, "S3 at group {}: {} cached, batch {}", i, cached, batch);
        if model.forced == 0 {
            prop_assert!(usage <= gs[i].counter().max(), "I2 at group {}", i);
        }
        prop_assert_eq!(gs[i].is_online(), model.online[i], "group {} online", i);
        // References: our handle and the reclaimer's, the base while online, one per child
        // (children are held, so never freed), plus at most one per CPU whose stock caches
        // the group.
        let bounds = model.ref_bounds(i, 2, PCPUS, |_| true);
        let refs = gs[i].ref_count();
        prop_assert!(bounds.contains(&refs), "refs of {}: {} not in {:?}", i, refs, bounds);
    }
    let stats = tree.stats();
    prop_assert_eq!(stats.forced, model.forced);
    prop_assert_eq!((stats.created, stats.offlined), (model.created(), model.offlined));
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
                    let k = o.model.held[j].min(amount - freed);
                    o.handles[j].uncharge(k);
                    o.model.uncharged(j, k);
                    freed += k;
                }
            }
            freed
        }));
    }
    let tree = Tree::with_config(config);
    let mut gs: Vec<PGroup> = vec![tree.root()];
    let mut model = TreeModel::new();
    for &p in &parents {
        let g = gs[p].create_child(GroupSpec::new()).unwrap();
        prop_assert_eq!(Ok(g.id()), model.create_child(p, &[]).map(GroupId::from_index));
        gs.push(g);
    }
    for (i, (g, max)) in gs.iter().zip(&maxes).enumerate() {
        if let Some(max) = *max {
            prop_assert_eq!(g.set_max(max), model.set_max(i, max).map(drop));
        }
    }
    {
        let mut o = objects.lock().unwrap();
        o.model = model;
        o.handles = gs.clone();
    }

    for op in &ops {
        match *op {
            Op::Charge { g, cpu, n, opts } => {
                let options = options_from(opts);
                let r = on(cpu, || gs[g].charge_with(n, options));
                match r {
                    Ok(c) => {
                        let mut o = objects.lock().unwrap();
                        o.model.charged(g, n);
                        if c.forced {
                            prop_assert!(options.no_fail, "forced without no_fail");
                            o.model.forced_charge();
                        }
                        drop(o);
                        if let Some(o) = c.over_high {
                            prop_assert!(o.usage > o.high);
                        }
                    }
                    Err(ChargeFailure::Limit { group, max, usage, requested, .. }) => {
                        prop_assert!(!options.no_fail, "a no-fail charge failed");
                        prop_assert_eq!(requested, n);
                        let over = (0..gs.len()).find(|&i| gs[i].id() == group).expect("a group of the tree");
                        let under = objects.lock().unwrap().model.is_under(g, over);
                        prop_assert!(under, "{} is not an ancestor of {}", over, g);
                        prop_assert_eq!(max, gs[over].counter().max());
                        prop_assert_eq!(usage, gs[over].counter().usage());
                        prop_assert!(usage + n > max, "failed although {} + {} <= {}", usage, n, max);
                    }
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
            }
            Op::Uncharge { g, cpu, n } => {
                let n = n.min(objects.lock().unwrap().model.held[g]);
                on(cpu, || gs[g].uncharge(n));
                objects.lock().unwrap().model.uncharged(g, n);
            }
            Op::DrainLocal { cpu } => drain_local_checked(&tree, &gs, cpu, batch)?,
            Op::DrainAll { g, cpu } => {
                let sub = objects.lock().unwrap().model.subtree(g);
                let others: Vec<usize> = (0..gs.len()).filter(|j| !sub.contains(j)).collect();
                let (want, kept) = (cached_of(&gs, &sub), cached_of(&gs, &others));
                prop_assert_eq!(on(cpu, || tree.drain_all(&gs[g])), Some(want));
                prop_assert_eq!((cached_of(&gs, &sub), cached_of(&gs, &others)), (0, kept));
            }
            Op::SetMax { g, v } => {
                // The model's answer before the write: the objects' units in the subtree
                // (the write drains the stocks before it gives up, so cached units never
                // make it busy).
                let (sub, held, want) = {
                    let o = objects.lock().unwrap();
                    (o.model.subtree(g), o.model.held_in(g), o.model.set_max(g, v))
                };
                let r = gs[g].set_max(v);
                prop_assert_eq!(r, want.map(drop), "objects hold {}", held);
                match want {
                    Ok(limit) => prop_assert_eq!(gs[g].counter().max(), limit),
                    Err(e) => {
                        prop_assert!(matches!(e, LimitError::Busy { .. }), "refused with {:?}", e);
                        prop_assert_eq!(cached_of(&gs, &sub), 0, "the refused write drained the subtree");
                    }
                }
            }
            Op::Offline { g } => {
                let want = objects.lock().unwrap().model.offline(g);
                let r = gs[g].offline();
                prop_assert_eq!(r, want, "offline({})", g);
                if r.is_ok() {
                    prop_assert_eq!(gs[g].cached_units(), 0, "offline drains the group's entries");
                }
            }
        }
        check_invariants(&tree, &gs, &objects, batch)?;
    }

    // Per-CPU bound on every CPU, then everything back.
    for cpu in 0..=PCPUS {
        drain_local_checked(&tree, &gs, cpu, batch)?;
    }
    let held = objects.lock().unwrap().model.held.clone();
    for (i, (g, n)) in gs.iter().zip(held).enumerate() {
        prop_assert_eq!(g.cached_units(), 0);
        g.uncharge(n);
        objects.lock().unwrap().model.uncharged(i, n);
    }
    check_invariants(&tree, &gs, &objects, batch)?;
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
