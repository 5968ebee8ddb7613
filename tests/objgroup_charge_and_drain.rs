//! Object-group tests, chapter 2: the charge path (`obj_cgroup_charge()`: an object-stock hit
//! touches no counter; a miss charges ⌈size/unit⌉ units and parks the rest without
//! uncharging), the uncharge path (`refill_obj_stock()`: refill, flush of another cached
//! `ObjGroup` and re-seeding, whole units returned) and draining the object stock
//! (`drain_obj_stock()`), also on the highest CPU of a provider.
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

use chargetree::group::{ChargeFailure, Charged, GroupSpec};

// ---------------------------------------------------------------------------------------------
// 2. Rules: the charge path (Linux's `obj_cgroup_charge()`)
// ---------------------------------------------------------------------------------------------

/// A hit (Linux's `consume_obj_stock()`): a charge the object stock can serve takes bytes from
/// this CPU's stock and touches no counter: usage, peak and failcnt unchanged, even with the
/// group at its limit. Another CPU's object stock is separate.
#[test]
fn an_object_stock_hit_touches_no_counter() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let g = root.create_child(GroupSpec::new().max(1)).unwrap();
    let o = g.obj_group().unwrap();
    charge(0, &o, 30);
    assert_eq!((usage(&g), bytes(&o)), (1, (70, 0)));
    let (peak, failcnt) = (g.counter().peak(), g.counter().failcnt());

    // The group is at its limit, yet 70 bytes come from the stock.
    assert_eq!(on(0, || o.charge_bytes(70)), Ok(Charged::default()));
    assert_eq!((usage(&g), usage(&root), bytes(&o)), (1, 1, (0, 0)));
    assert_eq!((g.counter().peak(), g.counter().failcnt()), (peak, failcnt), "no counter was touched");
    assert_o1(&g, &o, 100, UNIT);
    // One more byte needs a new unit, which the limit refuses.
    assert!(
        matches!(on(0, || o.charge_bytes(1)), Err(ChargeFailure::Limit { group, .. }) if group == g.id())
    );
    assert!(g.counter().failcnt() > failcnt, "the refused unit was counted");

    // The 70 bytes freed on CPU 0 stay in CPU 0's stock: CPU 1 misses and charges a unit.
    uncharge(0, &o, 70);
    g.set_max(2).unwrap();
    charge(1, &o, 10);
    assert_eq!((usage(&g), bytes(&o)), (2, (70 + 90, 0)));
    assert_o1(&g, &o, 40, UNIT);
    // ... and CPU 0's stock still serves CPU 0.
    assert_eq!(on(0, || o.charge_bytes(70)), Ok(Charged::default()));
    assert_eq!((usage(&g), bytes(&o)), (2, (90, 0)));

    uncharge(0, &o, 100);
    uncharge(1, &o, 10);
    assert_eq!(tree.drain_all(&root), Some(0));
    assert_eq!((usage(&g), usage(&root), bytes(&o)), (0, 0, (0, 0)));
    drop((o, g, root));
    finish(tree, log);
}

/// A miss charges ⌈size/unit⌉ units through the unit engine and leaves `unit·units − size`
/// bytes in this CPU's object stock; an exact multiple leaves nothing (and installs no stock
/// entry); without a CPU the remainder is parked in the `ObjGroup`.
#[test]
fn a_miss_charges_whole_units_and_parks_the_remainder() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let g = child(&root);
    let o = g.obj_group().unwrap();

    charge(0, &o, 250);
    assert_eq!((usage(&g), bytes(&o)), (3, (50, 0)), "3 units, 50 bytes stocked");
    charge(1, &o, 200);
    assert_eq!((usage(&g), bytes(&o)), (5, (50, 0)), "an exact multiple stocks nothing");
    charge(NO_CPU, &o, 1);
    assert_eq!((usage(&g), bytes(&o)), (6, (50, 99)), "no CPU: the remainder is parked");
    assert_o1(&g, &o, 451, UNIT);

    // The unit engine underneath batches as usual: with a unit stock, a one-unit miss charges
    // a batch and keeps the rest cached for the group.
    let (tree2, log2) = tree_on(1, UNIT);
    let h = child(&tree2.root());
    let oh = h.obj_group().unwrap();
    charge(0, &oh, 1);
    assert_eq!((usage(&h), h.cached_units(), bytes(&oh)), (64, 63, (99, 0)));

    uncharge(0, &o, 250);
    uncharge(1, &o, 200);
    uncharge(NO_CPU, &o, 1);
    uncharge(0, &oh, 1);
    assert!(tree.drain_all(&root).is_some() && tree2.drain_all(&tree2.root()).is_some());
    assert_eq!((usage(&g), usage(&h)), (0, 0));
    drop((o, g, root, oh, h));
    finish(tree, log);
    finish(tree2, log2);
}

/// The charge path refills the stock with its remainder *without* uncharging whole units
/// (Linux's `allow_uncharge = false`), so the stock may hold more than a unit; the next
/// uncharge returns them.
#[test]
fn the_charge_path_parks_its_remainder_without_uncharging_whole_units() {
    let (tree, log) = exact_tree(1);
    let root = tree.root();
    let g = child(&root);
    let o = g.obj_group().unwrap();
    charge(0, &o, 10);
    assert_eq!((usage(&g), bytes(&o)), (1, (90, 0)));
    // 90 < 110: a miss; 2 units, 90 bytes more for the stock: 180 bytes, more than a unit.
    charge(0, &o, 110);
    assert_eq!((usage(&g), bytes(&o)), (3, (180, 0)), "not trimmed by the charge path");
    assert_o1(&g, &o, 120, UNIT);
    // An uncharge may return units: 180 + 10 = 190 > 100, so one unit goes back.
    uncharge(0, &o, 10);
    assert_eq!((usage(&g), bytes(&o)), (2, (90, 0)));
    assert_o1(&g, &o, 110, UNIT);
    uncharge(0, &o, 110);
    assert_eq!((usage(&g), bytes(&o)), (0, (0, 0)), "200 bytes: both units back, nothing kept");
    drop((o, g, root));
    finish(tree, log);
}
// ---------------------------------------------------------------------------------------------
// 2. Rules: the uncharge path (Linux's `obj_cgroup_uncharge()` and `refill_obj_stock()`)
// ---------------------------------------------------------------------------------------------

/// An uncharge goes into this CPU's stock; once the stock holds *more* than a unit, every
/// whole unit goes back to the group and only the sub-unit rest stays (Linux's
/// `nr_bytes & (PAGE_SIZE − 1)`). Exactly one unit stays cached.
#[test]
fn an_uncharge_refills_the_stock_and_returns_the_whole_units_above_one() {
    let (tree, log) = exact_tree(1);
    let root = tree.root();
    let g = child(&root);
    let o = g.obj_group().unwrap();
    charge(0, &o, 50);
    charge(0, &o, 50); // from the stock
    assert_eq!((usage(&g), bytes(&o)), (1, (0, 0)));
    uncharge(0, &o, 50);
    assert_eq!((usage(&g), bytes(&o)), (1, (50, 0)), "into the stock");
    uncharge(0, &o, 50);
    assert_eq!((usage(&g), bytes(&o)), (1, (100, 0)), "exactly one unit: kept");
    assert_o1(&g, &o, 0, UNIT);
    // 100 < 250: a miss of 3 units; its 50 bytes join the stock, which keeps all 150.
    charge(0, &o, 250);
    assert_eq!((usage(&g), bytes(&o)), (4, (150, 0)));
    charge(0, &o, 1);
    assert_eq!((usage(&g), bytes(&o)), (4, (149, 0)));
    // An uncharge trims: 150 > 100, so the whole unit goes and 50 stay.
    uncharge(0, &o, 1);
    assert_eq!((usage(&g), bytes(&o)), (3, (50, 0)));
    assert_o1(&g, &o, 250, UNIT);
    // 300 bytes: all three units go back, not only those beyond the first.
    uncharge(0, &o, 250);
    assert_eq!((usage(&g), usage(&root), bytes(&o)), (0, 0, (0, 0)));
    drop((o, g, root));
    finish(tree, log);
}

/// An uncharge on a CPU whose stock caches another `ObjGroup` flushes that one first (its
/// whole units back to its group, its remainder parked in it), then installs this `ObjGroup`
/// seeded with its own parked bytes, and may then return whole units. The charge path re-seeds
/// the same way.
#[test]
fn an_uncharge_through_another_objgroup_flushes_the_cached_one_first() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let (a, b) = (child(&root), child(&root));
    let (oa, ob) = (a.obj_group().unwrap(), b.obj_group().unwrap());
    charge(0, &ob, 30);
    assert_eq!((usage(&b), bytes(&ob)), (1, (70, 0)));
    // CPU 0 switches to oa: ob's 70 bytes are parked in ob.
    charge(0, &oa, 30);
    assert_eq!((bytes(&oa), bytes(&ob)), ((70, 0), (0, 70)));
    // A miss on oa leaves 160 bytes in the stock (more than a unit, untrimmed).
    charge(0, &oa, 110);
    assert_eq!((usage(&a), usage(&b), bytes(&oa)), (3, 1, (160, 0)));

    // ob's uncharge on CPU 0: oa is flushed (1 unit back to a, 60 bytes parked in oa), ob is
    // installed with its 70 parked bytes plus the 30 uncharged: exactly a unit, kept.
    uncharge(0, &ob, 30);
    assert_eq!((usage(&a), usage(&b)), (2, 1));
    assert_eq!((bytes(&oa), bytes(&ob)), ((0, 60), (100, 0)));
    assert_o1(&a, &oa, 140, UNIT);
    assert_o1(&b, &ob, 0, UNIT);
    assert_eq!(usage(&root), 3);

    // The charge path re-seeds too: a miss of 1 unit on CPU 1 leaves 70 bytes, joined by oa's
    // 60 parked bytes: 130 > 100, so a unit goes straight back.
    charge(1, &oa, 30);
    assert_eq!((usage(&a), bytes(&oa)), (2, (30, 0)));
    assert_o1(&a, &oa, 170, UNIT);

    uncharge(1, &oa, 30);
    uncharge(1, &oa, 110);
    uncharge(1, &oa, 30);
    assert_eq!((usage(&a), bytes(&oa)), (1, (100, 0)));
    assert_eq!(tree.drain_all(&root), Some(0));
    assert_eq!((usage(&a), usage(&b), usage(&root)), (0, 0, 0));
    assert_eq!((bytes(&oa), bytes(&ob)), ((0, 0), (0, 0)));
    drop((oa, ob, a, b, root));
    finish(tree, log);
}

/// The example in the comment of Linux's `obj_cgroup_release()`: bytes charged on one CPU and
/// freed on another leave a remainder in each stock; flushed, they add up to a whole unit.
/// Linux keeps that unit parked until the objcg is released; chargetree returns it as soon as
/// the parked bytes make it up.
#[test]
fn parked_bytes_that_make_a_whole_unit_are_returned_at_once() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let g = child(&root);
    let o = g.obj_group().unwrap();
    charge(0, &o, 92);
    uncharge(1, &o, 92);
    assert_eq!((usage(&g), bytes(&o)), (1, (8 + 92, 0)));
    on(0, || tree.drain_local());
    assert_eq!((usage(&g), bytes(&o)), (1, (92, 8)));
    on(1, || tree.drain_local());
    assert_eq!((usage(&g), bytes(&o)), (0, (0, 0)), "8 + 92 parked = one unit, returned");

    // Without CPUs, the same through the parked bytes alone.
    charge(NO_CPU, &o, 92);
    assert_eq!((usage(&g), bytes(&o)), (1, (0, 8)));
    uncharge(NO_CPU, &o, 92);
    assert_eq!((usage(&g), bytes(&o)), (0, (0, 0)));
    assert_eq!(tree.stats().stray_bytes, 0);
    drop((o, g, root));
    finish(tree, log);
}
// ---------------------------------------------------------------------------------------------
// 2. Rules: draining the object stock (Linux's `drain_obj_stock()`)
// ---------------------------------------------------------------------------------------------

/// A drain through `Tree::drain_local`: this CPU's object stock is emptied (whole units back
/// to the owner, the remainder parked), other CPUs keep theirs, and the stock's reference on
/// the `ObjGroup` is dropped: an `ObjGroup` only the stock kept alive is freed, putting its
/// reference on its (final) owner.
#[test]
fn drain_local_parks_the_remainder_uncharges_whole_units_and_drops_the_reference() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let p = child(&root);
    let g = child(&p);
    let o = g.obj_group().unwrap();
    charge(0, &o, 10);
    charge(0, &o, 110);
    charge(1, &o, 30);
    assert_eq!((usage(&g), bytes(&o)), (4, (180 + 70, 0)));

    on(0, || tree.drain_local());
    assert_eq!((usage(&g), bytes(&o)), (3, (70, 80)), "180 bytes: 1 unit back, 80 parked");
    assert_o1(&g, &o, 150, UNIT);
    on(NO_CPU, || tree.drain_local());
    assert_eq!(bytes(&o), (70, 80), "no CPU, nothing to drain");
    on(1, || tree.drain_local());
    assert_eq!((usage(&g), bytes(&o)), (2, (0, 50)), "80 + 70 parked: 1 unit back, 50 parked");
    assert_o1(&g, &o, 150, UNIT);

    // Free the objects on CPU 0 (the stock is seeded with the 50 parked bytes).
    uncharge(0, &o, 10);
    uncharge(0, &o, 110);
    uncharge(0, &o, 30);
    assert_eq!((usage(&g), bytes(&o)), (1, (100, 0)));

    // The group goes away; the ObjGroup (reparented to p) lives on in CPU 0's stock only.
    g.offline().unwrap();
    assert!(o.group().ptr_eq(&p));
    let (refs, objs_freed) = (p.ref_count(), tree.stats().objgroups_freed);
    drop(o);
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, objs_freed, "the stock's reference keeps it");
    assert_eq!(p.ref_count(), refs, "and it keeps its reference on p");
    on(0, || tree.drain_local());
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, objs_freed + 1, "the drain dropped the last reference");
    assert_eq!(p.ref_count(), refs - 1, "the ObjGroup's reference on p went with it");
    // The unit went back to p, its owner by then; g keeps its residue (O3).
    assert_eq!((usage(&g), usage(&p), usage(&root)), (1, 0, 0));
    assert_eq!(tree.stats().stray_bytes, 0);
    drop((g, p, root));
    finish(tree, log);
}

/// A drain through `Tree::drain_all`: the object stocks of every CPU whose `ObjGroup` charges
/// a group of the subtree are emptied, idle CPUs included; others are left alone. The stock's
/// reference goes with the entry.
#[test]
fn drain_all_takes_the_object_stocks_of_the_subtree_from_idle_cpus() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let p = child(&root);
    let (a, b) = (child(&p), child(&p));
    let (oa, ob) = (a.obj_group().unwrap(), b.obj_group().unwrap());
    charge(0, &oa, 10);
    charge(0, &oa, 110);
    charge(1, &ob, 30);
    assert_eq!((bytes(&oa), bytes(&ob)), ((180, 0), (70, 0)));

    assert!(tree.drain_all(&a).is_some());
    assert_eq!((usage(&a), bytes(&oa)), (2, (0, 80)), "a's subtree: 1 unit back, 80 parked");
    assert_eq!((usage(&b), bytes(&ob)), (1, (70, 0)), "b's entry is not in a's subtree");
    assert!(tree.drain_all(&p).is_some());
    assert_eq!((usage(&b), bytes(&ob)), (1, (0, 70)));
    assert_o1(&a, &oa, 120, UNIT);
    assert_o1(&b, &ob, 30, UNIT);

    uncharge(1, &ob, 30);
    assert_eq!((usage(&b), bytes(&ob)), (1, (100, 0)));
    b.offline().unwrap(); // ob now charges p; CPU 1's stock keeps it alive
    drop(ob);
    tree.reclaim();
    let (refs, objs_freed) = (p.ref_count(), tree.stats().objgroups_freed);
    assert!(tree.drain_all(&a).is_some());
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, objs_freed, "ob does not charge a's subtree");
    assert!(tree.drain_all(&p).is_some());
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, objs_freed + 1, "taken, and its last reference dropped");
    assert_eq!(p.ref_count(), refs - 1);
    assert_eq!((usage(&b), usage(&p)), (1, 2), "b's unit went back to p; a still holds 2");

    // CPU 0 is re-seeded with oa's 80 parked bytes: 80 + 120 = 2 units back.
    uncharge(0, &oa, 10);
    uncharge(0, &oa, 110);
    assert_eq!((usage(&a), usage(&p), usage(&root), bytes(&oa)), (0, 0, 0, (0, 0)));
    assert!(tree.drain_all(&root).is_some());
    assert_eq!((usage(&a), usage(&p), usage(&root)), (0, 0, 0));
    drop((oa, a, b, p, root));
    finish(tree, log);
}

/// Drains visit only the slots below the stocks' high-water mark; units installed on the
/// highest CPU of a large provider (the first use of that slot) are still found by
/// `drain_all` and by the tree's drop.
#[test]
fn units_on_the_highest_cpu_are_drained_and_freed() {
    let (tree, log) = tree_on(64, UNIT);
    let g = child(&tree.root());
    let _ = on(63, || g.try_charge(1).unwrap());
    on(63, || g.uncharge(1));
    assert!(g.cached_units() > 0, "CPU 63 caches units");
    assert!(tree.drain_all(&g).is_some());
    assert_eq!((g.cached_units(), usage(&g)), (0, 0), "the drain reached CPU 63");
    // Left in the stock for the tree's drop to find.
    let _ = on(63, || g.try_charge(5).unwrap());
    on(63, || g.uncharge(5));
    drop(g);
    finish(tree, log);
}

/// The same for the object stock alone (no unit stock, so only the object stock's install
/// raises the mark), with a spare reference cached there.
#[test]
fn bytes_and_spares_on_the_highest_cpu_are_drained_and_freed() {
    let (tree, log) = exact_tree(64);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    let r0 = o.ref_count();
    let object = charge_obj(63, &o, 30);
    let more = charge_obj(63, &o, 30); // from the stock: a spare batch
    // SAFETY: from `charge_object` on `o`, given back once each.
    unsafe {
        uncharge_obj(63, object, 30);
        uncharge_obj(63, more, 30);
    }
    assert!(o.cached_bytes() > 0 && o.ref_count() > r0, "CPU 63 caches bytes and references");
    assert!(tree.drain_all(&g).is_some());
    assert_eq!((o.cached_bytes(), o.ref_count(), usage(&g)), (0, r0, 0), "the drain reached CPU 63");
    // Left in the stock for the tree's drop to find.
    let object = charge_obj(63, &o, 30);
    // SAFETY: as above.
    unsafe { uncharge_obj(63, object, 30) };
    drop((o, g));
    finish(tree, log);
}
