//! Object-group tests, chapter 1: scenarios. Bytes round up to units, the 10,000
//! objects outliving their removed group, inherited `ObjGroup`s moving up in one step, an
//! offline group's nearest online ancestor, limits.
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
use chargetree::group::GroupSpec;
use chargetree::objgroup::ObjGroup;

// ---------------------------------------------------------------------------------------------
// 1. Scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn byte_charges_round_up_to_units_and_park_the_remainder() {
    let (tree, _) = tree_on(2, 100);
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    let o = g.obj_group().unwrap();
    on(0, || {
        // 30 bytes: one unit charged (batch refills the unit stock), 70 bytes stocked.
        let _ = o.charge_bytes(30).unwrap();
        assert_eq!(o.cached_bytes(), 70);
        assert_o1(&g, &o, 30, 100);
        // 50 more come from the object stock: no new unit.
        let before = g.counter().usage() - g.cached_units();
        let _ = o.charge_bytes(50).unwrap();
        assert_eq!(g.counter().usage() - g.cached_units(), before);
        assert_eq!(o.cached_bytes(), 20);
        assert_o1(&g, &o, 80, 100);
        // Uncharging all 80 bytes returns one whole unit (the stock keeps the rest < unit).
        o.uncharge_bytes(30);
        o.uncharge_bytes(50);
        assert_o1(&g, &o, 0, 100);
        assert!(o.cached_bytes() <= 100);
    });
    tree.drain_all(&tree.root()).unwrap();
    assert_o1(&g, &o, 0, 100);
    assert_eq!(g.counter().usage(), 0, "everything drained: the parked bytes form no whole unit");
}

/// The scenario: 10,000 objects of mixed sizes charged to a group through its
/// ObjGroup, the group taken offline and freed while the objects live, then the objects
/// freed: every ancestor back at exactly zero.
#[test]
fn removed_group_is_freed_while_objects_live_and_ancestors_return_to_zero() {
    let unit = 4096;
    let (tree, log) = tree_on(2, unit);
    let tenant = tree.root().create_child(GroupSpec::new().name("tenant")).unwrap();
    let job = tenant.create_child(GroupSpec::new().name("job")).unwrap();
    let job_id = job.id();
    let objgroup = job.obj_group().unwrap();

    let n = if cfg!(miri) { 300 } else { 10_000 };
    let mut objects: Vec<(usize, ObjGroup<TestCpus>)> = Vec::with_capacity(n);
    let mut total = 0usize;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = [8, 24, 64, 100, 512, 3000, 4096, 9000][(x % 8) as usize];
        on(i % 2, || {
            let _ = objgroup.charge_bytes(size).unwrap();
        });
        objects.push((size, objgroup.clone())); // each object holds a reference
        total += size;
    }
    assert!(tenant.counter().usage() * unit >= total);
    drop(objgroup);

    // The job goes away while its objects live.
    job.offline().unwrap();
    drop(job);
    tree.reclaim();
    assert_eq!(log.freed(job_id), 1, "the removed group is freed although its objects live");

    // The objects are freed, uncharging through the reparented ObjGroup (now the tenant's).
    for (i, (size, o)) in objects.into_iter().enumerate() {
        assert!(o.group().ptr_eq(&tenant), "reparented to the parent");
        on(i % 2, || o.uncharge_bytes(size));
    }
    tree.drain_all(&tree.root()).unwrap();
    tree.reclaim();
    assert_eq!(tenant.counter().usage(), 0, "the parent is back at exactly zero");
    assert_eq!(tree.root().counter().usage(), 0, "and so is the root");
    assert_eq!(tree.stats().stray_bytes, 0);
}

#[test]
fn reparenting_moves_inherited_objgroups_up_in_one_step() {
    let (tree, log) = tree_on(1, 64);
    let a = tree.root().create_child(GroupSpec::new()).unwrap();
    let b = a.create_child(GroupSpec::new()).unwrap();
    let c = b.create_child(GroupSpec::new()).unwrap();
    let oc = c.obj_group().unwrap();
    let ob = b.obj_group().unwrap();
    on(0, || {
        let _ = oc.charge_bytes(100).unwrap();
        let _ = ob.charge_bytes(10).unwrap();
    });
    c.offline().unwrap();
    assert!(oc.group().ptr_eq(&b), "c's ObjGroup now charges b");
    b.offline().unwrap();
    assert!(oc.group().ptr_eq(&a), "c's ObjGroup, inherited by b, moved with b's own");
    assert!(ob.group().ptr_eq(&a));
    let (cid, bid) = (c.id(), b.id());
    drop((b, c));
    tree.reclaim();
    assert_eq!((log.freed(bid), log.freed(cid)), (1, 1), "both removed groups are freed");
    on(0, || {
        oc.uncharge_bytes(100);
        ob.uncharge_bytes(10);
    });
    drop((oc, ob));
    let _ = tree.drain_all(&tree.root());
    tree.reclaim();
    assert_eq!(a.counter().usage(), 0);
    assert_eq!(tree.root().counter().usage(), 0);
}

#[test]
fn an_offline_group_hands_out_its_nearest_online_ancestors_objgroup() {
    let (tree, _) = tree_on(1, 64);
    let a = tree.root().create_child(GroupSpec::new()).unwrap();
    let b = a.create_child(GroupSpec::new()).unwrap();
    b.offline().unwrap();
    let o = b.obj_group().unwrap();
    assert!(o.group().ptr_eq(&a));
    assert!(o.ptr_eq(&a.obj_group().unwrap()), "the ancestor's own ObjGroup");
}

#[test]
fn byte_charges_respect_limits_and_name_the_failing_group() {
    let (tree, _) = tree_on(1, 100);
    let g = tree.root().create_child(GroupSpec::new().max(3)).unwrap();
    let o = g.obj_group().unwrap();
    on(0, || {
        let _ = o.charge_bytes(250).unwrap(); // 3 units
        let err = o.charge_bytes(100).unwrap_err();
        assert!(
            matches!(err, chargetree::group::ChargeFailure::Limit { group, max: 3, .. } if group == g.id())
        );
        // Before failing, the engine drained the stocks of the group's subtree: the 50 bytes
        // left over from the first charge moved from the object stock into the ObjGroup,
        // still charged (O1), and a failed charge took nothing.
        assert_eq!(o.cached_bytes() + o.parked_bytes(), 50);
        assert_eq!(g.counter().usage(), 3);
        o.uncharge_bytes(250);
    });
    let _ = tree.drain_all(&tree.root());
    assert_eq!(g.counter().usage(), 0);
}
