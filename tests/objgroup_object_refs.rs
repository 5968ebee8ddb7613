//! Object-group tests, chapter 4: objects' references (`charge_object` / `uncharge_object`,
//! S6): one reference per object from the object stock's spares, bounded spares and their
//! drains, refused charges, `into_raw` / `from_raw`, and objects and spares outliving an
//! offline group or the tree.
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

use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeFailure, Charged, GroupSpec};
use chargetree::objgroup::ObjGroup;
use chargetree::stock::OBJ_REF_BATCH;

// ---------------------------------------------------------------------------------------------
// 2. Rules: objects' references (`charge_object` / `uncharge_object`, S6)
// ---------------------------------------------------------------------------------------------

/// Spare references one CPU's object stock may hold beyond its own.
const SPARES: usize = 2 * OBJ_REF_BATCH;

/// `charge_object` charges exactly what `charge_bytes` charges and adds one reference per
/// object; `uncharge_object` undoes both. Drains return the cached spares, so the count
/// ends where it started.
#[test]
fn charge_object_charges_like_charge_bytes_and_takes_one_reference_per_object() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    // `a` charges objects on CPU 0, `b` the same sizes with `charge_bytes` on CPU 1.
    let (a, b) = (child(&root), child(&root));
    let (oa, ob) = (a.obj_group().unwrap(), b.obj_group().unwrap());
    let r0 = oa.ref_count();
    assert_eq!(r0, 2, "the handle and the group's own");
    let sizes: Vec<usize> = (0..100).map(|i| 1 + (i * 37) % 250).collect();
    let mut objects = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        // The same sizes through the plain byte path on `b`, as the reference.
        charge(1, &ob, size);
        let c = on(0, || oa.charge_object(size)).unwrap();
        assert_eq!(c.charged, Charged::default());
        objects.push((c.object, size));
        // Same usage, same cached and parked bytes: the byte accounting is unchanged.
        assert_eq!(usage(&a), usage(&b), "object {i}");
        assert_eq!(bytes(&oa), bytes(&ob), "object {i}");
        // One reference per object, plus the stock's own and at most SPARES spares.
        let refs = oa.ref_count();
        let live = i + 1;
        assert!((r0 + live..=r0 + live + 1 + SPARES).contains(&refs), "object {i}: {refs} references");
    }
    let live: usize = sizes.iter().sum();
    assert_o1(&a, &oa, live, UNIT);
    for (obj, size) in objects {
        // SAFETY: from `charge_object` on `oa`, given back once.
        unsafe { uncharge_obj(0, obj, size) };
        uncharge(1, &ob, size);
        assert_eq!(usage(&a), usage(&b));
        assert_eq!(bytes(&oa), bytes(&ob));
    }
    assert_o1(&a, &oa, 0, UNIT);
    let _ = tree.drain_all(&root);
    assert_eq!((usage(&a), usage(&b)), (0, 0));
    assert_eq!(oa.ref_count(), r0, "every object's reference and every spare came back");
    drop((oa, ob, a, b, root));
    finish(tree, log);
}

/// Objects charged on one CPU and given back on another: the second CPU keeps their
/// references as spares, but never more than two batches; `drain_local` and `drain_all`
/// give them all back.
#[test]
fn spares_are_bounded_per_cpu_and_drains_return_them() {
    let (tree, log) = exact_tree(3);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    let r0 = o.ref_count();
    let n = 5 * SPARES + 3;
    let objects: Vec<_> = (0..n).map(|_| charge_obj(0, &o, 10)).collect();
    let mut max_seen = 0;
    for (i, obj) in objects.into_iter().enumerate() {
        // SAFETY: from `charge_object` on `o`, given back once.
        unsafe { uncharge_obj(1, obj, 10) };
        let live = n - i - 1;
        let extra = o.ref_count() - r0 - live;
        max_seen = max_seen.max(extra);
        // CPU 0 and CPU 1 each hold at most their entry and SPARES spares.
        assert!(extra <= 2 * (1 + SPARES), "after {} frees: {extra} cached references", i + 1);
    }
    assert!(max_seen > SPARES / 2, "CPU 1 did keep references as spares ({max_seen})");
    on(1, || tree.drain_local());
    assert!(o.ref_count() - r0 <= 1 + SPARES, "CPU 1's spares went back");
    let _ = tree.drain_all(&g);
    assert_eq!(o.ref_count(), r0);
    assert_eq!(usage(&g), 0);
    drop((o, g));
    finish(tree, log);
}

/// A refused charge takes no reference and charges nothing; so does a charge on no CPU's
/// stock (the slow path takes its reference with a plain clone).
#[test]
fn a_refused_object_charge_takes_no_reference() {
    let (tree, log) = exact_tree(1);
    let g = tree.root().create_child(GroupSpec::new().max(2)).unwrap();
    let o = g.obj_group().unwrap();
    let r0 = o.ref_count();
    let kept = charge_obj(0, &o, 150); // 2 units, 50 bytes cached
    let refs = o.ref_count();
    let failure = on(0, || o.charge_object(120)).unwrap_err();
    assert!(matches!(failure, ChargeFailure::Limit { .. }), "{failure:?}");
    // The failure path drained the stocks (the entry's reference went back with its 50
    // bytes, parked now); the refused object took none.
    assert_eq!(bytes(&o), (0, 50));
    assert_eq!(o.ref_count(), refs - 1, "no reference for a refused object");
    assert_eq!(usage(&g), 2);
    // Off any CPU: the stocks are bypassed, the reference is a plain one.
    let off = charge_obj(NO_CPU, &o, 0);
    assert_eq!(o.ref_count(), refs);
    // SAFETY: both from `charge_object` on `o`, given back once each.
    unsafe {
        uncharge_obj(NO_CPU, off, 0);
        uncharge_obj(0, kept, 150);
    }
    let _ = tree.drain_all(&g);
    assert_eq!((o.ref_count(), usage(&g)), (r0, 0));
    drop((o, g));
    finish(tree, log);
}

/// The object's reference is an ordinary one: `charge_object` pairs with `from_raw` plus
/// `uncharge_bytes`, and `into_raw` plus `charge_bytes` pairs with `uncharge_object`.
#[test]
fn object_references_mix_with_into_raw_and_from_raw() {
    let (tree, log) = exact_tree(2);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    let r0 = o.ref_count();
    for i in 0..scaled(200, 40) {
        let cpu = i % 2;
        let c = on(cpu, || o.charge_object(30)).unwrap();
        // SAFETY: `c.object` is a reference on `o`'s node, given back once.
        let handle = unsafe { ObjGroup::<TestCpus>::from_raw(c.object) };
        on(1 - cpu, || handle.uncharge_bytes(30));
        drop(handle);
        charge(cpu, &o, 70);
        let raw = o.clone().into_raw();
        // SAFETY: from `into_raw`, given back once.
        unsafe { uncharge_obj(1 - cpu, raw, 70) };
    }
    let _ = tree.drain_all(&g);
    assert_eq!((o.ref_count(), usage(&g)), (r0, 0));
    drop((o, g));
    finish(tree, log);
}

/// Objects outlive their group: it goes offline and loses its handles while CPUs cache spare
/// references on its `ObjGroup`; the objects are given back later on both CPUs. The group
/// is freed once its `ObjGroup` is, which needs every spare back (the drains), and the
/// parent ends at exactly zero.
#[test]
fn objects_and_spares_outlive_an_offline_group() {
    let (tree, log) = exact_tree(2);
    let root = tree.root();
    let parent = child(&root);
    let g = child(&parent);
    let gid = g.id();
    let o = g.obj_group().unwrap();
    let mut objects: Vec<_> = (0..300).map(|i| charge_obj(i % 2, &o, 1 + i % 180)).collect();
    // Half are given back before the offline (spares build up on both CPUs).
    for (i, obj) in objects.drain(..150).enumerate() {
        // SAFETY: from `charge_object` on `o`, given back once.
        unsafe { uncharge_obj(1 - i % 2, obj, 1 + i % 180) };
    }
    g.offline().unwrap();
    drop((o, g));
    tree.reclaim();
    assert_eq!(log.freed(gid), 1, "the group is freed once the ObjGroup's reference moved up");
    let before = tree.stats();
    for (j, obj) in objects.into_iter().enumerate() {
        let i = j + 150;
        // SAFETY: as above.
        unsafe { uncharge_obj(i % 2, obj, 1 + i % 180) };
    }
    assert_eq!(tree.stats().objgroups_freed, before.objgroups_freed, "spares still hold it");
    let _ = tree.drain_all(&root);
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, before.objgroups_freed + 1, "freed with the last spare");
    assert_eq!(usage(&parent), 0);
    assert_eq!(usage(&root), 0);
    drop((parent, root));
    finish(tree, log);
}

/// Dropping the tree gives back every CPU's spares: everything is freed.
#[test]
fn dropping_the_tree_returns_every_cpus_spares() {
    let (tree, log) = exact_tree(4);
    let g = child(&tree.root());
    let o = g.obj_group().unwrap();
    let objects: Vec<_> = (0..scaled(400, 80)).map(|i| charge_obj(i % 4, &o, 64)).collect();
    for (i, obj) in objects.into_iter().enumerate() {
        // SAFETY: from `charge_object` on `o`, given back once.
        unsafe { uncharge_obj((i + 1) % 4, obj, 64) };
    }
    assert!(o.ref_count() > 2, "spares are cached");
    drop((o, g));
    finish(tree, log);
}
