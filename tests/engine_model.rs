//! Engine tests, chapter 6: a property test of random operations on a small random tree
//! across impersonated CPUs, against a model of what the caller's objects hold: after every
//! step each group's usage equals the objects' charges plus the cached units of its subtree.
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

use std::sync::{Arc, Mutex};

use chargetree::counter::LimitError;
use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeFailure, Group, GroupError, GroupSpec, Tree, TreeConfig};
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
