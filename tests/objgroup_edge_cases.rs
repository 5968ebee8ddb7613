//! Object-group tests, chapter 5: edge cases. Size 0, a unit of 0 bytes, absurd byte counts
//! and units, an over-uncharge found by a drain, and `ObjGroup`s outliving their tree.
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

use support::objgroup::*;
use support::*;

use core::panic::AssertUnwindSafe;
use std::panic::catch_unwind;
use std::sync::Arc;

use chargetree::COUNTER_MAX;
use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeFailure, Charged, Tree, TreeConfig, reclaim_orphans};

// ---------------------------------------------------------------------------------------------
// 2. Rules: edge cases
// ---------------------------------------------------------------------------------------------

/// `size = 0`: served by the stock if it caches the `ObjGroup`, else a charge of 0 units that
/// changes nothing (not even which `ObjGroup` the stock caches). Uncharging 0 moves no unit.
#[test]
fn a_zero_byte_charge_or_uncharge_is_a_no_op() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let (g, h) = (child(&root), child(&root));
    let (o, oh) = (g.obj_group().unwrap(), h.obj_group().unwrap());
    charge(0, &o, 30);
    charge(1, &oh, 60);
    let state = || (usage(&g), usage(&h), bytes(&o), bytes(&oh));
    let expected = (1, 1, (70, 0), (40, 0));
    assert_eq!(state(), expected);
    for cpu in [0, 1, NO_CPU] {
        assert_eq!(on(cpu, || o.charge_bytes(0)), Ok(Charged::default()), "CPU {cpu}");
        assert_eq!(state(), expected, "CPU {cpu}");
    }
    for cpu in [0, 1, NO_CPU] {
        uncharge(cpu, &o, 0);
        uncharge(cpu, &oh, 0);
        assert_eq!((usage(&g), usage(&h)), (1, 1), "CPU {cpu}");
        assert_o1(&g, &o, 30, UNIT);
        assert_o1(&h, &oh, 60, UNIT);
    }
    uncharge(0, &o, 30);
    uncharge(1, &oh, 60);
    assert!(tree.drain_all(&root).is_some());
    assert_eq!((usage(&g), usage(&h), usage(&root)), (0, 0, 0));
    drop((o, oh, g, h, root));
    finish(tree, log);
}

/// `unit_bytes(0)` is treated as 1: bytes are units, and nothing is ever parked.
#[test]
fn a_unit_of_zero_bytes_is_one_byte() {
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(1)).unit_bytes(0).batch(0).observer(Obs(log.clone())),
    );
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    charge(0, &o, 5);
    assert_eq!((usage(&g), bytes(&o)), (5, (0, 0)));
    uncharge(0, &o, 5);
    assert_eq!((usage(&g), bytes(&o)), (0, (0, 0)), "5 bytes = 5 whole units, returned");
    drop((o, g));
    finish(tree, log);
}

/// Absurd byte counts: charges whose units do not fit the counters are refused whole; an
/// uncharge of `usize::MAX` bytes reaches the counters without a panic, which clamp the group
/// at zero and count it; siblings and ancestors lose only what the group held; no counter
/// wraps; the junk left in the stock is bounded and ends up counted as stray bytes.
#[test]
fn absurd_byte_counts_neither_panic_nor_wrap() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let p = child(&root);
    let (g, s, h) = (child(&p), child(&p), child(&p));
    let (o, os, oh) = (g.obj_group().unwrap(), s.obj_group().unwrap(), h.obj_group().unwrap());
    charge(1, &os, 250);
    charge(0, &o, 30);
    for n in [usize::MAX, (COUNTER_MAX + 1) * UNIT, COUNTER_MAX * UNIT + 1] {
        let r = on(0, || o.charge_bytes(n));
        assert!(matches!(r, Err(ChargeFailure::TooLarge { .. })), "{n}: {r:?}");
        assert_eq!((usage(&g), usage(&p), bytes(&o), bytes(&os)), (1, 4, (70, 0), (50, 0)), "{n}");
    }

    // CPU 0's stock holds 70 bytes of o: 70 + usize::MAX does not fit.
    let r = catch_unwind(AssertUnwindSafe(|| uncharge(0, &o, usize::MAX)));
    assert!(r.is_ok(), "no panic");
    assert_eq!((usage(&g), usage(&s), usage(&p), usage(&root)), (0, 3, 3, 3), "clamped, not wrapped");
    assert_eq!(g.counter().underflows(), 1);
    assert!(g.counter().forgiven() >= usize::MAX / UNIT - 1);
    assert_eq!((p.counter().underflows(), root.counter().underflows()), (0, 0));
    let (cached, parked) = bytes(&o);
    assert!(cached <= UNIT && parked < UNIT, "{cached} cached, {parked} parked");

    // CPU 1's stock caches os: it is flushed, oh installed, and the request clamped on h.
    let r = catch_unwind(AssertUnwindSafe(|| uncharge(1, &oh, usize::MAX)));
    assert!(r.is_ok(), "no panic");
    assert_eq!((usage(&h), usage(&s), usage(&p)), (0, 3, 3));
    assert_eq!(h.counter().underflows(), 1);
    assert_eq!(bytes(&os), (0, 50), "os was flushed, not harmed");
    let (cached, parked) = bytes(&oh);
    assert!(cached <= UNIT && parked < UNIT, "{cached} cached, {parked} parked");

    // Everything legitimate still balances. (o's 30-byte object was "freed" by the absurd
    // uncharge: its unit is gone.)
    uncharge(1, &os, 250);
    assert!(tree.drain_all(&root).is_some());
    assert_eq!((usage(&g), usage(&s), usage(&h), usage(&p), usage(&root)), (0, 0, 0, 0, 0));
    let junk: usize = [&o, &os, &oh].iter().map(|x| x.parked_bytes()).sum();
    assert_eq!(bytes(&os), (0, 0));
    for x in [&g, &s, &h] {
        x.offline().unwrap();
    }
    drop((o, os, oh));
    tree.reclaim();
    let stats = tree.stats();
    assert_eq!(stats.objgroups_freed, 3);
    assert_eq!(stats.stray_bytes, junk, "the junk is counted when its ObjGroup is released");
    assert_eq!((usage(&p), usage(&root)), (0, 0));
    drop((g, s, h, p, root));
    finish(tree, log);
}

/// A byte count whose units fit the counters but whose rounded-up byte total does not fit a
/// `usize` (units of 16 KiB: `usize::MAX` bytes are 2^50 units, 2^64 bytes). The charge must
/// succeed or fail cleanly, and charging then uncharging it must balance.
#[test]
fn a_charge_whose_rounded_bytes_overflow_still_balances() {
    let unit = 1 << 14;
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(1)).unit_bytes(unit).batch(0).observer(Obs(log.clone())),
    );
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| on(0, || o.charge_bytes(usize::MAX))));
    assert!(matches!(r, Ok(Ok(_))), "charging usize::MAX bytes panicked or failed: {r:?}");
    assert_eq!((usage(&g), bytes(&o)), (usize::MAX / unit + 1, (1, 0)), "2^50 units, 1 byte spare");
    uncharge(0, &o, usize::MAX);
    assert!(tree.drain_all(&tree.root()).is_some());
    assert_eq!((usage(&g), bytes(&o)), (0, (0, 0)));
    assert_eq!(g.counter().underflows(), 0);
    drop((o, g));
    finish(tree, log);
}

/// Absurd units (`usize::MAX` bytes) are clamped by `TreeConfig::unit_bytes` to
/// `MAX_UNIT_BYTES`, so two parked remainders cannot wrap the parked byte count. (Found by
/// this test: with the unit accepted as given, the sum of two remainders wrapped and a unit
/// was lost.)
#[test]
fn huge_units_do_not_wrap_the_parked_bytes() {
    let unit = chargetree::objgroup::MAX_UNIT_BYTES;
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(2)).unit_bytes(usize::MAX).batch(0).observer(Obs(log.clone())),
    );
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    charge(0, &o, 10);
    charge(1, &o, 10);
    assert_eq!(usage(&g), 2); // each CPU caches unit − 10 bytes
    on(0, || tree.drain_local());
    assert_eq!((usage(&g), bytes(&o)), (2, (unit - 10, unit - 10)));
    let r = catch_unwind(AssertUnwindSafe(|| on(1, || tree.drain_local())));
    assert!(r.is_ok(), "flushing the second remainder panicked");
    // 2 units = 20 object bytes + 2·unit − 20 parked: one whole unit goes back.
    assert_eq!((usage(&g), bytes(&o)), (1, (0, unit - 20)));
    uncharge(0, &o, 10);
    uncharge(0, &o, 10);
    assert!(tree.drain_all(&tree.root()).is_some());
    assert_eq!((usage(&g), bytes(&o)), (0, (0, 0)));
    drop((o, g));
    finish(tree, log);
}

/// An over-uncharge that only reaches the counters inside a drain (caller bug: a stock holds
/// more than a unit while the group was already uncharged elsewhere) is clamped and counted
/// like any other, without a panic far from the caller who caused it; the drain machinery
/// still works afterwards (no drain or steal flag left set) and the stock's reference is not
/// leaked. (This hung `Tree::drop` in debug builds before 991df69.)
#[test]
fn an_over_uncharge_found_by_a_drain_leaves_the_drain_usable() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let g = child(&root);
    let o = g.obj_group().unwrap();
    charge(0, &o, 10);
    charge(0, &o, 110);
    assert_eq!((usage(&g), bytes(&o)), (3, (180, 0)));
    // The caller frees 300 bytes on CPU 1: 180 more than its objects hold.
    uncharge(1, &o, 300);
    assert_eq!(usage(&g), 0);
    // CPU 0's 180 bytes now stand for a unit g no longer holds.
    let r = catch_unwind(AssertUnwindSafe(|| tree.drain_all(&root)));
    assert!(matches!(r, Ok(Some(_))), "the drain panicked or was refused: {r:?}");
    assert_eq!(usage(&g), 0, "clamped");
    assert_eq!(g.counter().underflows(), 1);
    if tree.drain_all(&root).is_none() {
        // Dropping the tree would spin forever on the stuck drain flag: leak it instead.
        core::mem::forget((o, g, root, tree));
        panic!("a later drain_all is locked out: the drain flag was left set");
    }
    g.offline().unwrap();
    drop(o);
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, 1, "the stock's reference was not leaked");
    // CPU 1's object stock still works (its steal flag was not left set).
    let h = child(&root);
    let oh = h.obj_group().unwrap();
    charge(1, &oh, 30);
    assert_eq!(bytes(&oh), (70, 0));
    uncharge(1, &oh, 30);
    assert!(tree.drain_all(&root).is_some());
    assert_eq!(usage(&h), 0);
    drop((oh, h, g, root));
    finish(tree, log);
}

/// An `ObjGroup` handle may outlive its tree: the tree's drop drains the stocks and reparents
/// everything to the root; later charges and uncharges bypass the (closed) stocks and
/// balance, and dropping the last handle frees the root and the tree's bookkeeping.
///
/// Natively this passes; under miri it is undefined behaviour (Tree Borrows, as `ci/miri.sh`
/// runs this file): the last handle's drop frees the root through the `ObjGroup`'s group
/// pointer, which was derived from a shared reference.
#[test]
fn an_objgroup_that_outlived_its_tree_still_balances_and_is_freed() {
    let (tree, log) = exact_tree(1);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    charge(0, &o, 30);
    drop(g);
    let created = tree.stats().created;
    drop(tree);
    assert_eq!(bytes(&o), (0, 70), "the tree's drop drained the stock");
    let root = o.group();
    assert!(root.is_root() && !root.is_online());
    assert_eq!(usage(&root), 1);
    charge(0, &o, 20);
    assert_eq!((usage(&root), bytes(&o)), (1, (0, 50)), "no stock entry: 70 + 80 parked, 1 unit back");
    uncharge(0, &o, 20);
    uncharge(0, &o, 30);
    assert_eq!((usage(&root), bytes(&o)), (0, (0, 0)));
    drop(root);
    assert_eq!(log.total(Ev::Freed), created - 1, "only the root waits, for the ObjGroup");
    drop(o);
    reclaim_orphans();
    assert_eq!((log.total(Ev::Released), log.total(Ev::Freed)), (created, created));
    log.check();
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping was freed");
}

/// The root's own `ObjGroup` may outlive the tree too: its last handle frees the root.
/// (Under miri: the same undefined behaviour as above, through the pointer
/// `Group::install_obj` gave the `ObjGroup`.)
#[test]
fn the_roots_objgroup_may_outlive_the_tree() {
    let (tree, log) = exact_tree(1);
    let o = tree.root().obj_group().unwrap();
    charge(0, &o, 30);
    let created = tree.stats().created;
    drop(tree);
    assert_eq!((usage(&o.group()), bytes(&o)), (1, (0, 70)));
    uncharge(0, &o, 30);
    assert_eq!((usage(&o.group()), bytes(&o)), (0, (0, 0)));
    assert_eq!(log.total(Ev::Freed), 0, "the ObjGroup keeps the root");
    drop(o);
    reclaim_orphans();
    assert_eq!((log.total(Ev::Released), log.total(Ev::Freed)), (created, created));
    log.check();
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping was freed");
}
