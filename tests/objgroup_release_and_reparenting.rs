//! Object-group tests, chapter 3: the release (Linux's `obj_cgroup_release()`, O2,
//! `stray_bytes`), lazy creation and lookup, and reparenting (Linux's
//! `memcg_reparent_objcgs()`) with its references and O3.
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

use std::sync::Arc;

use chargetree::group::reclaim_orphans;

// ---------------------------------------------------------------------------------------------
// 2. Rules: release (Linux's `obj_cgroup_release()`, O2)
// ---------------------------------------------------------------------------------------------

/// An `ObjGroup` whose group went away is freed once its last object, handle and stock
/// reference are gone; what it had charged is back off its final owner (the parent), nothing
/// is stray, and the removed group was freed long before.
#[test]
fn a_released_objgroup_leaves_its_final_owner_at_zero() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let p = child(&root);
    let g = child(&p);
    let gid = g.id();
    let o = g.obj_group().unwrap();
    charge(0, &o, 92);
    g.offline().unwrap();
    drop(g);
    tree.reclaim();
    assert_eq!(log.freed(gid), 1, "the group is freed while its ObjGroup lives");
    assert_eq!((usage(&p), usage(&root)), (1, 1));

    uncharge(1, &o, 92);
    let before = tree.stats();
    drop(o);
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, before.objgroups_freed, "CPU 0 and 1 still cache it");
    assert!(tree.drain_all(&root).is_some());
    tree.reclaim();
    let after = tree.stats();
    assert_eq!(after.objgroups_freed, before.objgroups_freed + 1);
    assert_eq!((usage(&p), usage(&root)), (0, 0), "the final owner is back at zero");
    assert_eq!(after.stray_bytes, 0);
    assert_eq!((p.counter().underflows(), root.counter().underflows()), (0, 0));
    drop((p, root));
    finish(tree, log);
}

/// O2 with a caller bug: objects uncharged other byte counts than they charged. The sub-unit
/// remainder left in the `ObjGroup` at release is counted in `TreeStats::stray_bytes`; the
/// counters neither wrap nor underflow.
#[test]
fn stray_bytes_count_what_a_caller_uncharged_wrongly() {
    // Too much: 30 charged, 40 uncharged.
    let (tree, log) = exact_tree(1);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    charge(0, &o, 30);
    uncharge(0, &o, 40);
    assert_eq!((usage(&g), bytes(&o)), (0, (10, 0)), "70 + 40: the unit went back");
    assert!(tree.drain_all(&tree.root()).is_some());
    assert_eq!(bytes(&o), (0, 10));
    g.offline().unwrap();
    drop(o);
    tree.reclaim();
    let stats = tree.stats();
    assert_eq!((stats.objgroups_freed, stats.stray_bytes), (1, 10));
    assert_eq!((usage(&g), usage(&tree.root())), (0, 0));
    assert_eq!(g.counter().underflows(), 0);
    drop(g);
    finish(tree, log);

    // Too little: 30 charged, 20 uncharged. The 10 bytes never freed keep their unit.
    let (tree, log) = exact_tree(1);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    charge(0, &o, 30);
    uncharge(0, &o, 20);
    assert!(tree.drain_all(&tree.root()).is_some());
    assert_eq!((usage(&g), bytes(&o)), (1, (0, 90)));
    g.offline().unwrap();
    drop(o);
    tree.reclaim();
    let stats = tree.stats();
    assert_eq!((stats.objgroups_freed, stats.stray_bytes), (1, 90));
    assert_eq!((usage(&g), usage(&tree.root())), (1, 1), "the leaked object's unit stays charged");
    drop(g);
    finish(tree, log);
}
// ---------------------------------------------------------------------------------------------
// 2. Rules: lazy creation and lookup
// ---------------------------------------------------------------------------------------------

/// `Group::obj_group` creates the group's own `ObjGroup` on first use (one per group, counted
/// in `TreeStats::objgroups_created`, holding one reference on the group) and hands out the
/// same one afterwards. An offline group gets none of its own: its nearest online ancestor's
/// (created lazily too), never its own old one.
#[test]
fn obj_group_creates_the_groups_own_on_first_use() {
    let (tree, log) = exact_tree(1);
    let root = tree.root();
    let (g, h) = (child(&root), child(&root));
    let (c, d) = (child(&g), child(&g));
    assert_eq!(tree.stats().objgroups_created, 0, "none before first use");
    let refs = g.ref_count();
    let o1 = g.obj_group().unwrap();
    assert_eq!(tree.stats().objgroups_created, 1);
    assert!(o1.group().ptr_eq(&g));
    assert_eq!(g.ref_count(), refs + 1, "the ObjGroup's reference on its group");
    let o2 = g.obj_group().unwrap();
    assert!(o2.ptr_eq(&o1), "the same one");
    assert_eq!((tree.stats().objgroups_created, g.ref_count()), (1, refs + 1));
    let oh = h.obj_group().unwrap();
    assert!(!oh.ptr_eq(&o1) && oh.group().ptr_eq(&h));
    assert_eq!(tree.stats().objgroups_created, 2);

    // Offline before first use: the parent's, and nothing new.
    c.offline().unwrap();
    assert!(c.obj_group().unwrap().ptr_eq(&o1));
    assert_eq!(tree.stats().objgroups_created, 2);
    // Offline after first use: the parent's, not its own old one (which now charges g too).
    let od = d.obj_group().unwrap();
    assert_eq!(tree.stats().objgroups_created, 3);
    d.offline().unwrap();
    let od2 = d.obj_group().unwrap();
    assert!(od2.ptr_eq(&o1) && !od2.ptr_eq(&od));
    assert!(od.group().ptr_eq(&g));
    // Its own is freed once its last handle goes (the group's active reference was dropped).
    drop(od);
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, 1);
    // g's own is kept by g while g is online.
    drop((o1, o2, od2));
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, 1);
    assert_eq!(g.ref_count(), refs + 1);

    // A chain of offline groups under an ancestor without one: created for that ancestor.
    let x = child(&h);
    let y = child(&x);
    let oy = y.obj_group().unwrap();
    y.offline().unwrap();
    x.offline().unwrap();
    let before = tree.stats().objgroups_created;
    let o = y.obj_group().unwrap();
    assert!(o.ptr_eq(&oh) && o.group().ptr_eq(&h), "h is the nearest online ancestor");
    assert!(oy.group().ptr_eq(&h), "y's own moved up twice");
    assert_eq!(tree.stats().objgroups_created, before);
    let z = child(&root);
    let w = child(&z);
    w.offline().unwrap();
    let ow = w.obj_group().unwrap();
    assert!(ow.group().ptr_eq(&z));
    assert_eq!(tree.stats().objgroups_created, before + 1, "z's own, created on first use");
    drop((o, oy, ow, oh, c, d, g, h, x, y, z, w, root));
    finish(tree, log);
}

/// Once the tree is gone, an offline group has no online ancestor left: no `ObjGroup`.
#[test]
fn obj_group_is_none_once_the_tree_is_dropped() {
    let (tree, log) = exact_tree(1);
    let g = child(&tree.root());
    let created = tree.stats().created;
    drop(tree);
    assert!(g.obj_group().is_none());
    drop(g);
    reclaim_orphans();
    assert_eq!((log.total(Ev::Released), log.total(Ev::Freed)), (created, created));
    log.check();
    assert_eq!(Arc::strong_count(&log), 1);
}
// ---------------------------------------------------------------------------------------------
// 2. Rules: reparenting (Linux's `memcg_reparent_objcgs()`) and O3
// ---------------------------------------------------------------------------------------------

/// One offline moves the group's own `ObjGroup` and every inherited one to the parent, and
/// their references with them: the parent gains one per `ObjGroup`, the removed group loses
/// them (and its base reference), so it is freed while the objects live.
#[test]
fn offline_moves_own_and_inherited_objgroups_and_their_references() {
    let (tree, log) = exact_tree(1);
    let root = tree.root();
    let a = child(&root);
    let b = child(&a);
    let c = child(&b);
    let (oc, ob) = (c.obj_group().unwrap(), b.obj_group().unwrap());
    charge(0, &oc, 150);
    charge(0, &ob, 10);
    assert_eq!((usage(&c), usage(&b), usage(&a)), (2, 3, 3));

    let (ra, rb, rc) = (a.ref_count(), b.ref_count(), c.ref_count());
    c.offline().unwrap();
    assert!(oc.group().ptr_eq(&b));
    assert_eq!(
        (a.ref_count(), b.ref_count(), c.ref_count()),
        (ra, rb + 1, rc - 2),
        "oc's reference moved from c to b; c lost its base reference"
    );
    let (ra, rb) = (a.ref_count(), b.ref_count());
    b.offline().unwrap();
    assert!(oc.group().ptr_eq(&a) && ob.group().ptr_eq(&a), "own and inherited, in one step");
    assert_eq!((a.ref_count(), b.ref_count()), (ra + 2, rb - 3));

    let (bid, cid) = (b.id(), c.id());
    drop((b, c));
    tree.reclaim();
    assert_eq!((log.freed(bid), log.freed(cid)), (1, 1), "freed while objects live");
    assert_eq!(a.ref_count(), 4, "base, handle and the two ObjGroups");

    uncharge(0, &oc, 150);
    uncharge(0, &ob, 10);
    drop((oc, ob));
    assert!(tree.drain_all(&root).is_some());
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, 2);
    assert_eq!(a.ref_count(), 2, "the ObjGroups' references are gone with them");
    assert_eq!((usage(&a), usage(&root)), (0, 0));
    assert_eq!(a.counter().underflows(), 0);
    drop((a, root));
    finish(tree, log);
}

/// O3: after reparenting, uncharges land on the parent, which had counted the charges
/// hierarchically; the dead group keeps a residue that is never uncharged. New charges through
/// the reparented `ObjGroup` land on the parent only.
#[test]
fn after_reparenting_uncharges_land_on_the_parent_and_the_dead_group_keeps_a_residue() {
    let (tree, log) = exact_tree(1);
    let root = tree.root();
    let p = child(&root);
    let m = child(&p);
    let sibling = child(&p);
    let os = sibling.obj_group().unwrap();
    charge(NO_CPU, &os, 100);
    let om = m.obj_group().unwrap();
    charge(0, &om, 250);
    assert_eq!((usage(&m), usage(&p), usage(&root)), (3, 4, 4));
    m.offline().unwrap();
    uncharge(0, &om, 250);
    assert_eq!((usage(&m), usage(&p), usage(&root)), (3, 1, 1), "3 units back from p; m keeps 3");
    charge(0, &om, 50);
    assert_eq!((usage(&m), usage(&p), usage(&root)), (3, 2, 2), "a new charge lands on p");
    uncharge(0, &om, 50);
    assert!(tree.drain_all(&root).is_some());
    assert_eq!((usage(&m), usage(&p), usage(&root)), (3, 1, 1));
    assert_eq!(usage(&sibling), 1, "the sibling is untouched");
    for g in [&m, &p, &root] {
        assert_eq!(g.counter().underflows(), 0, "no clamp was needed");
    }
    uncharge(NO_CPU, &os, 100);
    assert_eq!((usage(&p), usage(&root)), (0, 0));
    let mid = m.id();
    drop(m);
    tree.reclaim();
    assert_eq!(log.freed(mid), 1, "freed with its residue");
    drop((om, os, sibling, p, root));
    finish(tree, log);
}
