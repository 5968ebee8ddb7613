//! Object-group tests, chapter 6: O1 after random sequences, and a property test of random
//! byte charges, uncharges of live objects, drains and leaf offlines across impersonated
//! CPUs, against a byte-level model of the object stocks: after every step each
//! `ObjGroup`'s cached and parked bytes match the model, O1 holds, and each group's usage is
//! what the model's units say (so `usage × unit` ≥ its live bytes).
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

mod support;

use support::Rng;
use support::objgroup::*;
use support::*;

use std::sync::Arc;

use chargetree::cpu::TestCpus;
use chargetree::group::{Group, GroupError, GroupSpec, Tree, TreeConfig};
use chargetree::objgroup::ObjGroup;
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
const PK: usize = 2;

type PGroup = Group<TestCpus, PK>;

type PObj = ObjGroup<TestCpus, PK>;

#[derive(Clone, Debug)]
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
const POP_CPUS: usize = 4;

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
type PCase = (Vec<usize>, usize, usize, usize, Vec<POp>);

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

/// One `ObjGroup` as the model sees it.
struct MObj {
    handle: PObj,
    /// The group it was created for.
    home: usize,
    /// The group it charges now.
    owner: usize,
    /// Units charged through it and not yet returned.
    units: usize,
    /// Bytes parked in it.
    parked: usize,
}

/// A live object: charged through `objs[obj]` while that charged `charged_to`.
struct MLive {
    obj: usize,
    size: usize,
    charged_to: usize,
    handle: PObj,
}

/// The byte-level model: §4.4–§4.6 as the library implements them (Linux's rules, except
/// that parked bytes forming a whole unit are returned at once).
struct PModel {
    unit: usize,
    cpus: usize,
    parents: Vec<Option<usize>>,
    online: Vec<bool>,
    /// Each group's own active `ObjGroup` (an index into `objs`).
    own: Vec<Option<usize>>,
    objs: Vec<MObj>,
    /// Per CPU: the cached `ObjGroup` and its bytes.
    stocks: Vec<Option<(usize, usize)>>,
    /// Per group: units charged to it minus units uncharged from it (by whoever owned the
    /// `ObjGroup` at that moment); negative on a parent that took a dead child's uncharges.
    local: Vec<i64>,
    live: Vec<MLive>,
}

impl PModel {
    fn slot(&self, cpu: usize) -> Option<usize> {
        (cpu < self.cpus).then_some(cpu)
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

    fn subtree(&self, i: usize) -> Vec<usize> {
        (0..self.parents.len()).filter(|&j| self.is_under(j, i)).collect()
    }

    fn add_units(&mut self, o: usize, n: usize) {
        self.objs[o].units += n;
        self.local[self.objs[o].owner] += n as i64;
    }

    fn sub_units(&mut self, o: usize, n: usize) {
        assert!(self.objs[o].units >= n, "model: ObjGroup {o} returns more units than it charged");
        self.objs[o].units -= n;
        self.local[self.objs[o].owner] -= n as i64;
    }

    /// `ObjNode::flush_bytes`.
    fn flush(&mut self, o: usize, bytes: usize) {
        let unit = self.unit;
        let mut units = bytes / unit;
        let m = &mut self.objs[o];
        m.parked += bytes % unit;
        units += m.parked / unit;
        m.parked %= unit;
        self.sub_units(o, units);
    }

    /// `Stocks::refill_obj`.
    fn refill(&mut self, cpu: Option<usize>, o: usize, bytes: usize, allow_uncharge: bool) {
        let Some(c) = cpu else { return self.flush(o, bytes) };
        let (have, old, allow) = match self.stocks[c] {
            Some((x, b)) if x == o => (b, None, allow_uncharge),
            old => (core::mem::take(&mut self.objs[o].parked), old, true),
        };
        let total = have + bytes;
        let (keep, out) =
            if allow && total > self.unit { (total % self.unit, total / self.unit) } else { (total, 0) };
        self.stocks[c] = Some((o, keep));
        if let Some((x, b)) = old {
            self.flush(x, b);
        }
        self.sub_units(o, out);
    }

    /// `ObjGroup::charge_bytes`.
    fn charge(&mut self, cpu: Option<usize>, o: usize, size: usize) {
        if let Some(c) = cpu {
            if let Some((x, b)) = self.stocks[c] {
                if x == o && b >= size {
                    self.stocks[c] = Some((o, b - size));
                    return;
                }
            }
        }
        let units = size.div_ceil(self.unit);
        self.add_units(o, units);
        let rem = units * self.unit - size;
        if rem > 0 {
            self.refill(cpu, o, rem, false);
        }
    }

    fn drain_cpu(&mut self, c: usize) {
        if let Some((x, b)) = self.stocks[c].take() {
            self.flush(x, b);
        }
    }

    /// The group whose own `ObjGroup` `g.obj_group()` hands out.
    fn lookup(&self, mut g: usize) -> usize {
        while !self.online[g] {
            g = self.parents[g].expect("the root stays online");
        }
        g
    }
}

fn check_model(tree: &Tree<TestCpus, PK>, gs: &[PGroup], m: &PModel) -> Result<(), TestCaseError> {
    let unit = m.unit;
    for (i, o) in m.objs.iter().enumerate() {
        let cached: usize = m.stocks.iter().flatten().filter(|s| s.0 == i).map(|s| s.1).sum();
        let live: usize = m.live.iter().filter(|l| l.obj == i).map(|l| l.size).sum();
        prop_assert_eq!(o.handle.cached_bytes(), cached, "cached bytes of ObjGroup {}", i);
        prop_assert_eq!(o.handle.parked_bytes(), o.parked, "parked bytes of ObjGroup {}", i);
        prop_assert!(o.parked < unit, "ObjGroup {} parks a whole unit", i);
        prop_assert!(o.handle.group().ptr_eq(&gs[o.owner]), "ObjGroup {} charges group {}", i, o.owner);
        // O1 (the model's units are checked against the counters below).
        prop_assert_eq!(o.units * unit, live + cached + o.parked, "O1 of ObjGroup {}", i);
    }
    for (i, g) in gs.iter().enumerate() {
        let sub = m.subtree(i);
        let expected: i64 = sub.iter().map(|&j| m.local[j] + gs[j].cached_units() as i64).sum();
        let usage = g.counter().usage();
        prop_assert_eq!(usage as i64, expected, "usage of group {}", i);
        let live: usize = m.live.iter().filter(|l| sub.contains(&l.charged_to)).map(|l| l.size).sum();
        prop_assert!(usage * unit >= live, "group {}: {} units for {} live bytes", i, usage, live);
        prop_assert_eq!(g.counter().underflows(), 0, "group {} never clamps", i);
    }
    let stats = tree.stats();
    prop_assert_eq!(stats.objgroups_created, m.objs.len());
    prop_assert_eq!((stats.objgroups_freed, stats.stray_bytes), (0, 0));
    Ok(())
}

#[allow(clippy::too_many_lines)]
fn run_pcase((parents, cpus, unit, batch, ops): PCase) -> Result<(), TestCaseError> {
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::<_, PK>::with_cpus_and_slots(TestCpus::new(cpus))
            .unit_bytes(unit)
            .batch(batch)
            .observer(Obs(log.clone())),
    );
    let mut gs: Vec<PGroup> = vec![tree.root()];
    for &p in &parents {
        gs.push(gs[p].create_child(GroupSpec::new()).unwrap());
    }
    let n = gs.len();
    let mut m = PModel {
        unit,
        cpus,
        parents: core::iter::once(None).chain(parents.iter().map(|&p| Some(p))).collect(),
        online: vec![true; n],
        own: vec![None; n],
        objs: Vec::new(),
        stocks: vec![None; cpus],
        local: vec![0; n],
        live: Vec::new(),
    };
    let mut removed = Vec::new();

    for op in &ops {
        match *op {
            POp::Charge { g, cpu, size } => {
                let handle = gs[g].obj_group().unwrap();
                let home = m.lookup(g);
                let o = match m.own[home] {
                    Some(o) => {
                        prop_assert!(handle.ptr_eq(&m.objs[o].handle), "group {}'s ObjGroup", g);
                        o
                    }
                    None => {
                        prop_assert!(!m.objs.iter().any(|x| x.handle.ptr_eq(&handle)), "a new ObjGroup");
                        m.objs.push(MObj { handle: handle.clone(), home, owner: home, units: 0, parked: 0 });
                        m.own[home] = Some(m.objs.len() - 1);
                        m.objs.len() - 1
                    }
                };
                prop_assert!(handle.group().ptr_eq(&gs[home]));
                let r = on(cpu, || handle.charge_bytes(size));
                prop_assert!(r.is_ok(), "charge {} bytes: {:?}", size, r);
                m.charge(m.slot(cpu), o, size);
                m.live.push(MLive { obj: o, size, charged_to: home, handle });
            }
            POp::Uncharge { pick, cpu } => {
                if !m.live.is_empty() {
                    let l = m.live.swap_remove(pick % m.live.len());
                    on(cpu, || l.handle.uncharge_bytes(l.size));
                    m.refill(m.slot(cpu), l.obj, l.size, true);
                }
            }
            POp::DrainLocal { cpu } => {
                on(cpu, || tree.drain_local());
                if let Some(c) = m.slot(cpu) {
                    m.drain_cpu(c);
                }
            }
            POp::DrainAll { g, cpu } => {
                prop_assert!(on(cpu, || tree.drain_all(&gs[g])).is_some());
                for c in 0..cpus {
                    if let Some((x, _)) = m.stocks[c] {
                        if m.is_under(m.objs[x].owner, g) {
                            m.drain_cpu(c);
                        }
                    }
                }
            }
            POp::Offline { g } => {
                let online_children = (0..n).filter(|&j| m.parents[j] == Some(g) && m.online[j]).count();
                let r = gs[g].offline();
                if g == 0 {
                    prop_assert_eq!(r, Err(GroupError::Root));
                } else if !m.online[g] {
                    prop_assert_eq!(r, Err(GroupError::Offline));
                } else if online_children > 0 {
                    prop_assert_eq!(r, Err(GroupError::HasOnlineChildren { online_children }));
                } else {
                    prop_assert_eq!(r, Ok(()));
                    let parent = m.parents[g].unwrap();
                    m.online[g] = false;
                    m.own[g] = None;
                    for o in &mut m.objs {
                        if o.owner == g {
                            o.owner = parent;
                        }
                    }
                    removed.push(g);
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
        m.refill(m.slot(cpu), l.obj, l.size, true);
    }
    check_model(&tree, &gs, &m)?;
    for cpu in 0..cpus {
        on(cpu, || tree.drain_local());
        m.drain_cpu(cpu);
    }
    prop_assert!(tree.drain_all(&gs[0]).is_some());
    check_model(&tree, &gs, &m)?;
    for (i, o) in m.objs.iter().enumerate() {
        prop_assert_eq!((o.units, o.parked), (0, 0), "ObjGroup {} holds nothing", i);
    }
    for (i, g) in gs.iter().enumerate() {
        prop_assert_eq!(g.cached_units(), 0);
        if m.online[i] {
            let why = if removed.iter().any(|&r| m.is_under(r, i)) {
                "an ancestor of a removed group"
            } else {
                "online"
            };
            prop_assert_eq!(g.counter().usage(), 0, "group {} ({}) is back at zero", i, why);
        } else {
            // O3: the residue is what was charged under it and uncharged from its parent.
            let residue: i64 = m.subtree(i).iter().map(|&j| m.local[j]).sum();
            prop_assert!(residue >= 0);
            prop_assert_eq!(g.counter().usage() as i64, residue, "residue of removed group {}", i);
        }
    }

    // Released: every ObjGroup whose home went offline, once its handles are gone.
    let dead = m.objs.iter().filter(|o| !m.online[o.home]).count();
    m.objs.clear();
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

fn cases() -> u32 {
    if cfg!(miri) { 4 } else { 256 }
}

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
