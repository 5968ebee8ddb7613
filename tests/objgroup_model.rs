//! Object-group tests, chapter 6: O1 after random sequences, and a property test of random
//! byte charges, uncharges of live objects, drains and leaf offlines across impersonated
//! CPUs, against a byte-level model of the object stocks: after every step each
//! `ObjGroup`'s cached and parked bytes match the model, O1 holds, and each group's usage is
//! what the model's units say (so `usage × unit` ≥ its live bytes).
//!
//! The model is the crate's own (`chargetree::model`, behind the `model` feature, which the
//! dev-dependency of the package on itself turns on for every test target in the repository;
//! the packaged crate's `cargo test` runs section 2 only): [`TreeModel`] for the topology
//! and the lifecycle, [`ObjModel`] in its exact mode for the `ObjGroup`s, their units, parked
//! and live bytes, reparenting and the per-CPU object stocks byte by byte.
//!
//! Black-box tests of byte-granular object charging and reparenting (Linux's `obj_cgroup` as
//! `src/obj/mod.rs` and the object stock in `src/obj/stock.rs` implement them), through the
//! public API only, in chapters: `objgroup_scenarios.rs` (the scenarios),
//! `objgroup_charge_and_drain.rs` (the charge and uncharge paths, drains),
//! `objgroup_release_and_reparenting.rs` (release, lazy creation and lookup, reparenting),
//! `objgroup_object_refs.rs` (objects' references and spares), `objgroup_edge_cases.rs`,
//! `objgroup_model.rs` (O1 after random sequences, the property test) and
//! `objgroup_threads.rs` (threads, and trees dropped under them); helpers in
//! `support/objgroup.rs` and `support/mod.rs`.
//!
//! Tests that found defects in `src/` say so in their docs; those defects are fixed.
//!
//! Trees use `TestCpus` (each thread charges "on" whatever CPU `TestCpus::run_on` names;
//! outside `run_on` it is on no CPU and bypasses the stocks) and a logging [`Observer`]. Most
//! rule tests use units of 100 bytes and no unit stock (`batch(0)`), so that every unit is
//! visible in the counters.
//!
//! Under miri the loops and the property test shrink; the chapters pass with
//! `MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance"` (see `ci/miri.sh`).
//!
//! [`Observer`]: chargetree::group::Observer
//! [`TreeModel`]: chargetree::model::TreeModel
//! [`ObjModel`]: chargetree::model::ObjModel

mod support;

use support::Rng;
use support::objgroup::*;
use support::*;

use std::sync::Arc;

use chargetree::cpu::TestCpus;
use chargetree::group::{Group, Tree, TreeConfig};
use chargetree::objgroup::ObjGroup;
// Section 3 only (the property test): the models are behind the `model` feature (file docs).
#[cfg(feature = "model")]
use chargetree::group::{GroupId, GroupSpec};
#[cfg(feature = "model")]
use chargetree::model::{ObjModel, TreeModel};
#[cfg(feature = "model")]
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// 2. Rules: O1 after random sequences
// ---------------------------------------------------------------------------------------------

/// O1 at quiescence after every step of a random sequence of byte charges, uncharges of live
/// objects, local and remote drains on two CPUs and none, with a unit stock of 3 and units of
/// 16 bytes; parked bytes never reach a unit.
#[test]
fn o1_holds_at_quiescence_after_random_sequences() {
    const U: usize = 16;
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(2)).unit_bytes(U).batch(3).observer(Obs(log.clone())),
    );
    let root = tree.root();
    let gs: Vec<Group<TestCpus>> = (0..3).map(|_| child(&root)).collect();
    let os: Vec<ObjGroup<TestCpus>> = gs.iter().map(|g| g.obj_group().unwrap()).collect();
    let mut objects: Vec<(usize, usize)> = Vec::new();
    let mut rng = Rng::new(7);
    for _ in 0..scaled(4000, 150) {
        let cpu = [0, 1, NO_CPU][rng.below(3)];
        match rng.below(10) {
            0..=4 => {
                let (i, n) = (rng.below(gs.len()), rng.below(3 * U));
                charge(cpu, &os[i], n);
                objects.push((i, n));
            }
            5..=7 if !objects.is_empty() => {
                let (i, n) = objects.swap_remove(rng.below(objects.len()));
                uncharge(cpu, &os[i], n);
            }
            8 => {
                on(cpu, || tree.drain_local());
            }
            _ => {
                let target = if rng.below(2) == 0 { root.clone() } else { gs[rng.below(gs.len())].clone() };
                assert!(on(cpu, || tree.drain_all(&target)).is_some());
            }
        }
        for (i, (g, o)) in gs.iter().zip(&os).enumerate() {
            let live: usize = objects.iter().filter(|x| x.0 == i).map(|x| x.1).sum();
            assert_o1(g, o, live, U);
            assert!(o.parked_bytes() < U);
            assert!(g.cached_units() <= 3 * 2);
        }
    }
    for (i, n) in objects.drain(..) {
        uncharge(0, &os[i], n);
    }
    assert!(tree.drain_all(&root).is_some());
    for (g, o) in gs.iter().zip(&os) {
        assert_eq!((usage(g), bytes(o)), (0, (0, 0)));
    }
    assert_eq!(usage(&root), 0);
    drop((os, gs, root));
    finish(tree, log);
}
// ---------------------------------------------------------------------------------------------
// 3. Property test: random byte operations against a byte-level model
// ---------------------------------------------------------------------------------------------

/// Stock entries per CPU for the unit stock (small, so that eviction happens).
#[cfg(feature = "model")]
const PK: usize = 2;

#[cfg(feature = "model")]
type PGroup = Group<TestCpus, PK>;

#[cfg(feature = "model")]
type PObj = ObjGroup<TestCpus, PK>;

#[derive(Clone, Debug)]
#[cfg(feature = "model")]
enum POp {
    /// Charges an object of `size` bytes through `g.obj_group()`.
    Charge {
        g: usize,
        cpu: usize,
        size: usize,
    },
    /// Uncharges the live object `pick % live` (if any).
    Uncharge {
        pick: usize,
        cpu: usize,
    },
    DrainLocal {
        cpu: usize,
    },
    DrainAll {
        g: usize,
        cpu: usize,
    },
    /// Takes `g` offline (refused unless it is an online non-root leaf).
    Offline {
        g: usize,
    },
}

/// CPU indices the operations name: `0..3`, of which those `>= cpus` are "no CPU".
#[cfg(feature = "model")]
const POP_CPUS: usize = 4;

#[cfg(feature = "model")]
fn pop(nodes: usize, unit: usize) -> impl Strategy<Value = POp> {
    let g = 0..nodes;
    let cpu = 0..POP_CPUS;
    let size = prop_oneof![6 => 0..=unit, 3 => unit..=3 * unit, 1 => Just(0usize)];
    prop_oneof![
        8 => (g.clone(), cpu.clone(), size).prop_map(|(g, cpu, size)| POp::Charge { g, cpu, size }),
        6 => (any::<usize>(), cpu.clone()).prop_map(|(pick, cpu)| POp::Uncharge { pick, cpu }),
        1 => cpu.clone().prop_map(|cpu| POp::DrainLocal { cpu }),
        1 => (g.clone(), cpu).prop_map(|(g, cpu)| POp::DrainAll { g, cpu }),
        1 => g.prop_map(|g| POp::Offline { g }),
    ]
}

/// A case: parents (node i + 1's parent is among 0..=i), CPUs (2 or 3), bytes per unit, the
/// unit-stock batch, and the operations.
#[cfg(feature = "model")]
type PCase = (Vec<usize>, usize, usize, usize, Vec<POp>);

#[cfg(feature = "model")]
fn pcase() -> impl Strategy<Value = PCase> {
    let ops = if cfg!(miri) { 1..12 } else { 1..80 };
    (1usize..6, prop_oneof![Just(16usize), Just(100)]).prop_flat_map(move |(len, unit)| {
        let parents = (1..len).map(|i| 0..i).collect::<Vec<_>>();
        (
            parents,
            2usize..=3,
            Just(unit),
            proptest::sample::select(vec![0usize, 1, 3, 8]),
            proptest::collection::vec(pop(len, unit), ops.clone()),
        )
    })
}

/// A live object of the caller: `size` bytes charged through `ObjModel::objgroups[obj]`
/// while that charged group `charged_to`, holding a handle of it as real objects hold a
/// reference.
#[cfg(feature = "model")]
struct Live {
    obj: usize,
    size: usize,
    charged_to: usize,
    handle: PObj,
}

/// The crate's models of the tree and of its object layer (exact mode: every byte charge
/// succeeds, there are no limits), the caller's handle of each `ObjGroup` of `obj` (same
/// index) and the caller's live objects.
#[cfg(feature = "model")]
struct PModel {
    tree: TreeModel,
    obj: ObjModel,
    handles: Vec<PObj>,
    live: Vec<Live>,
}

#[cfg(feature = "model")]
fn check_model(tree: &Tree<TestCpus, PK>, gs: &[PGroup], m: &PModel) -> Result<(), TestCaseError> {
    let unit = m.obj.unit;
    prop_assert_eq!(m.handles.len(), m.obj.objgroups.len());
    for (i, (o, handle)) in m.obj.objgroups.iter().zip(&m.handles).enumerate() {
        let cached = m.obj.cached(i);
        let live: usize = m.live.iter().filter(|l| l.obj == i).map(|l| l.size).sum();
        prop_assert_eq!(o.live, live as u128, "live bytes of ObjGroup {}", i);
        prop_assert_eq!(handle.cached_bytes(), cached, "cached bytes of ObjGroup {}", i);
        prop_assert_eq!(handle.parked_bytes(), o.parked, "parked bytes of ObjGroup {}", i);
        prop_assert!(o.parked < unit, "ObjGroup {} parks a whole unit", i);
        prop_assert!(handle.group().ptr_eq(&gs[o.owner]), "ObjGroup {} charges group {}", i, o.owner);
        // O1 (the model's units are checked against the counters below).
        prop_assert_eq!(o.units * unit, live + cached + o.parked, "O1 of ObjGroup {}", i);
    }
    for (i, g) in gs.iter().enumerate() {
        let sub = m.tree.subtree(i);
        let stocked: i128 = sub.iter().map(|&j| gs[j].cached_units() as i128).sum();
        let expected = m.tree.held_in(i) as i128 + m.obj.charged_in(&m.tree, i) + stocked;
        let usage = g.counter().usage();
        prop_assert_eq!(usage as i128, expected, "usage of group {}", i);
        let live: usize = m.live.iter().filter(|l| sub.contains(&l.charged_to)).map(|l| l.size).sum();
        prop_assert!(usage * unit >= live, "group {}: {} units for {} live bytes", i, usage, live);
        prop_assert_eq!(g.counter().underflows(), 0, "group {} never clamps", i);
        prop_assert_eq!(g.is_online(), m.tree.online[i], "group {} online", i);
    }
    let stats = tree.stats();
    prop_assert_eq!(stats.objgroups_created, m.obj.objgroups.len());
    prop_assert_eq!((stats.objgroups_freed, stats.stray_bytes), (0, 0));
    prop_assert_eq!((stats.created, stats.offlined), (m.tree.created(), m.tree.offlined));
    Ok(())
}

#[allow(clippy::too_many_lines)]
#[cfg(feature = "model")]
fn run_pcase((parents, cpus, unit, batch, ops): PCase) -> Result<(), TestCaseError> {
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::<_, PK>::with_cpus_and_slots(TestCpus::new(cpus))
            .unit_bytes(unit)
            .batch(batch)
            .observer(Obs(log.clone())),
    );
    let mut gs: Vec<PGroup> = vec![tree.root()];
    let mut m = PModel {
        tree: TreeModel::new(),
        obj: ObjModel::new(unit, cpus),
        handles: Vec::new(),
        live: Vec::new(),
    };
    for &p in &parents {
        let g = gs[p].create_child(GroupSpec::new()).unwrap();
        prop_assert_eq!(Ok(g.id()), m.tree.create_child(p, &[]).map(GroupId::from_index));
        gs.push(g);
    }

    for op in &ops {
        match *op {
            POp::Charge { g, cpu, size } => {
                let handle = gs[g].obj_group().unwrap();
                let home = m.tree.obj_group_owner(g);
                let (o, created) = m.obj.obj_group(&m.tree, g);
                prop_assert_eq!((m.obj.objgroups[o].home, m.obj.objgroups[o].owner), (home, home));
                if created {
                    prop_assert!(!m.handles.iter().any(|x| x.ptr_eq(&handle)), "a new ObjGroup");
                    prop_assert_eq!(o, m.handles.len());
                    m.handles.push(handle.clone());
                } else {
                    prop_assert!(handle.ptr_eq(&m.handles[o]), "group {}'s ObjGroup", g);
                }
                prop_assert!(handle.group().ptr_eq(&gs[home]));
                let r = on(cpu, || handle.charge_bytes(size));
                prop_assert!(r.is_ok(), "charge {} bytes: {:?}", size, r);
                m.obj.charge(m.obj.slot(cpu), o, size);
                m.live.push(Live { obj: o, size, charged_to: home, handle });
            }
            POp::Uncharge { pick, cpu } => {
                if !m.live.is_empty() {
                    let l = m.live.swap_remove(pick % m.live.len());
                    on(cpu, || l.handle.uncharge_bytes(l.size));
                    m.obj.uncharge(m.obj.slot(cpu), l.obj, l.size);
                }
            }
            POp::DrainLocal { cpu } => {
                on(cpu, || tree.drain_local());
                if let Some(c) = m.obj.slot(cpu) {
                    m.obj.drain_cpu(c);
                }
            }
            POp::DrainAll { g, cpu } => {
                prop_assert!(on(cpu, || tree.drain_all(&gs[g])).is_some());
                m.obj.drain_subtree(&m.tree, g);
            }
            POp::Offline { g } => {
                let want = m.tree.offline(g);
                let r = gs[g].offline();
                prop_assert_eq!(r, want, "offline({})", g);
                if r.is_ok() {
                    m.obj.reparent(&m.tree, g);
                }
            }
        }
        check_model(&tree, &gs, &m)?;
    }

    // Free every object, rotating over the CPUs (and none), then drain everything.
    let live = core::mem::take(&mut m.live);
    for (k, l) in live.into_iter().enumerate() {
        let cpu = k % (cpus + 1);
        on(cpu, || l.handle.uncharge_bytes(l.size));
        m.obj.uncharge(m.obj.slot(cpu), l.obj, l.size);
    }
    check_model(&tree, &gs, &m)?;
    for cpu in 0..cpus {
        on(cpu, || tree.drain_local());
        m.obj.drain_cpu(cpu);
    }
    prop_assert!(tree.drain_all(&gs[0]).is_some());
    m.obj.drain_subtree(&m.tree, 0);
    check_model(&tree, &gs, &m)?;
    for (i, o) in m.obj.objgroups.iter().enumerate() {
        prop_assert_eq!((o.units, o.parked, o.live), (0, 0, 0), "ObjGroup {} holds nothing", i);
    }
    for (i, g) in gs.iter().enumerate() {
        prop_assert_eq!(g.cached_units(), 0);
        if m.tree.online[i] {
            let why = if (0..gs.len()).any(|r| !m.tree.online[r] && m.tree.is_under(r, i)) {
                "an ancestor of a removed group"
            } else {
                "online"
            };
            prop_assert_eq!(g.counter().usage(), 0, "group {} ({}) is back at zero", i, why);
        } else {
            // O3: the residue is what was charged under it and uncharged from its parent.
            let residue = m.obj.charged_in(&m.tree, i);
            prop_assert!(residue >= 0);
            prop_assert_eq!(g.counter().usage() as i128, residue, "residue of removed group {}", i);
        }
    }

    // Released: every ObjGroup whose home went offline, once its handles are gone.
    let dead = m.obj.objgroups.iter().filter(|o| !m.tree.online[o.home]).count();
    m.handles.clear();
    tree.reclaim();
    let stats = tree.stats();
    prop_assert_eq!((stats.objgroups_freed, stats.stray_bytes), (dead, 0));
    drop(gs);
    let created = tree.stats().created;
    drop(tree);
    prop_assert_eq!((log.total(Ev::Released), log.total(Ev::Freed)), (created, created));
    log.check();
    prop_assert_eq!(Arc::strong_count(&log), 1, "every ObjGroup and the tree's bookkeeping were freed");
    Ok(())
}

#[cfg(feature = "model")]
fn cases() -> u32 {
    if cfg!(miri) { 4 } else { 256 }
}

#[cfg(feature = "model")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// After every step: each ObjGroup's cached and parked bytes are the model's, parked bytes
    /// stay below a unit, O1 holds, each ObjGroup charges the group the model says, and each
    /// group's usage is the model's units plus the unit-stock cache of its subtree (hence
    /// usage × unit ≥ the live bytes charged in its subtree). At the end every online group,
    /// removed groups' ancestors included, is back at zero, removed groups keep exactly their
    /// residue, and everything is freed exactly once.
    #[test]
    fn byte_charging_matches_the_byte_model(case in pcase()) {
        run_pcase(case)?;
    }
}
