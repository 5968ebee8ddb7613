//! Group tests, chapter 1: the lifecycle. Creation (names, dense ids, specs and their
//! refusals, the root's spec) and going offline (typed refusals, ids of refused creations,
//! protection zeroed, charging an offline group, `tryget_online` and `tryget`).
//!
//! Black-box tests of [`chargetree::group`], through the public API only, in chapters:
//! `group_lifecycle.rs` (creation, offline), `group_release.rs` (release and free, tree
//! statistics, the detached mode), `group_references.rs` (reference counts across threads,
//! owner cells and lockless readers), `group_move_charge.rs` (Linux's
//! `mem_cgroup_move_account`), `group_events_and_walks.rs` (events, topology walks) and
//! `group_stress.rs` (random operations from several threads); helpers in `support/`.
//!
//! Every test that asserts "freed exactly once" installs an [`Observer`] that logs each
//! release and free (`Log`) and checks the log for double releases, double frees and frees
//! without a release (`Log::check`). Trees use `TestCpus::new(4)` (deterministic CPU
//! impersonation with `TestCpus::run_on`) or the default `ThreadCpus`. Under miri the loops
//! shrink (`scaled`); see `support/group.rs` for the flags miri needs.
//!
//! [`Observer`]: chargetree::group::Observer

mod support;

use support::group::*;
use support::*;

use core::panic::AssertUnwindSafe;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::collections::HashSet;
use std::panic::catch_unwind;
use std::sync::Arc;
use std::thread;

use chargetree::COUNTER_MAX;
use chargetree::counter::LimitError;
use chargetree::cpu::{CpuProvider, TestCpus};
use chargetree::group::{Group, GroupError, GroupId, GroupSpec, OwnerCell, Tree, TreeConfig};

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle: creation
// ---------------------------------------------------------------------------------------------

#[test]
fn root_is_online_named_and_has_no_parent() {
    let (tree, log) = test_tree();
    let root = tree.root();
    assert!(root.is_root());
    assert!(root.is_online());
    assert_eq!(root.name(), Some("root"));
    assert!(root.parent().is_none());
    assert_eq!(root.counter().max(), COUNTER_MAX);
    assert_eq!(root.counter().usage(), 0);
    assert_eq!(lifecycle(tree.stats()), stats(1, 0, 0, 0));
    assert!(tree.root().ptr_eq(&root));
    assert_eq!(tree.root(), root);
    drop(root);
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 1);
    log.check();
}

#[test]
fn create_child_applies_names_unique_ids_and_spec_limits() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let a = root.create_child(GroupSpec::new().name("a").max(1000).high(800).min(100).low(200)).unwrap();
    let b = root.create_child(GroupSpec::new()).unwrap();
    let c = a.create_child(GroupSpec::new().name("c").track_protection(false).track_failcnt(false)).unwrap();

    assert_eq!((a.name(), b.name(), c.name()), (Some("a"), None, Some("c")));
    let ids: HashSet<GroupId> = [root.id(), a.id(), b.id(), c.id()].into_iter().collect();
    assert_eq!(ids.len(), 4, "ids are unique");
    assert!(!a.is_root() && !b.is_root() && !c.is_root());
    assert!(a.is_online() && b.is_online() && c.is_online());

    let ac = a.counter();
    assert_eq!((ac.max(), ac.high(), ac.min(), ac.low()), (1000, 800, 100, 200));
    let bc = b.counter();
    assert_eq!(
        (bc.max(), bc.high(), bc.min(), bc.low()),
        (COUNTER_MAX, COUNTER_MAX, 0, 0),
        "GroupSpec::new() is unlimited and unprotected"
    );
    assert!(ac.tracks_protection() && ac.tracks_failcnt());
    assert!(!c.counter().tracks_protection());
    assert!(!c.counter().tracks_failcnt());

    // The counters are linked into the hierarchy.
    assert_eq!(c.parent().unwrap(), a);
    assert_eq!(a.parent().unwrap(), root);
    assert!(c.is_descendant_of(&a) && c.is_descendant_of(&root) && c.is_descendant_of(&c));
    assert!(!c.is_descendant_of(&b) && !a.is_descendant_of(&c));
    c.counter().try_charge(7).unwrap();
    assert_eq!((c.counter().usage(), a.counter().usage(), root.counter().usage()), (7, 7, 7));
    assert_eq!(b.counter().usage(), 0);
    // The limit from the spec is enforced, on the child and for its descendants.
    assert!(c.counter().try_charge(994).is_err());
    assert_eq!(a.counter().failcnt(), 1);
    c.counter().uncharge(7);
    assert_eq!(root.counter().usage(), 0);

    assert_eq!(lifecycle(tree.stats()), stats(4, 0, 0, 0));
    // Ids keep growing: a later group never reuses one.
    let d = child(&b, "d");
    assert!(!ids.contains(&d.id()));
    assert_eq!(format!("{}", GroupId::from_index(3)), "#3");
}

#[test]
fn create_child_refuses_limits_above_counter_max() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let too_big = COUNTER_MAX + 1;
    let specs = [
        GroupSpec::new().max(too_big),
        GroupSpec::new().high(too_big),
        GroupSpec::new().min(too_big),
        GroupSpec::new().low(too_big),
    ];
    let refs_before = root.ref_count();
    for spec in specs {
        let err = root.create_child(spec.name("bad")).unwrap_err();
        assert_eq!(err, GroupError::Limit(LimitError::TooLarge { value: too_big }));
        assert!(!err.to_string().is_empty());
    }
    // Nothing was created, linked or referenced.
    assert_eq!(lifecycle(tree.stats()), stats(1, 0, 0, 0));
    assert!(root.children().is_empty());
    assert_eq!(root.ref_count(), refs_before);
    assert_eq!(log.total(Ev::Released), 0);
    // COUNTER_MAX itself is fine (it means "no limit").
    let ok = root.create_child(GroupSpec::new().max(COUNTER_MAX).high(COUNTER_MAX).min(COUNTER_MAX)).unwrap();
    assert_eq!(ok.counter().min(), COUNTER_MAX);
    assert_eq!(tree.stats().created, 2);
}

#[test]
#[should_panic(expected = "invalid root spec")]
fn root_spec_above_counter_max_panics() {
    let config = TreeConfig::with_cpus(TestCpus::new(1)).root(GroupSpec::new().max(COUNTER_MAX + 1));
    let _tree = Tree::with_config(config);
}

#[test]
fn root_spec_panic_does_not_leak_the_tree() {
    let log = Arc::new(Log::default());
    let config = TreeConfig::with_cpus(TestCpus::new(1))
        .observer(Obs(log.clone()))
        .root(GroupSpec::new().max(COUNTER_MAX + 1));
    let r = catch_unwind(AssertUnwindSafe(|| Tree::with_config(config)));
    assert!(r.is_err());
    // The observer was moved into the tree's bookkeeping; if that was dropped, we hold the
    // last reference to the log again.
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping was leaked");
}

#[test]
fn root_spec_is_applied() {
    let config = TreeConfig::with_cpus(TestCpus::new(2)).root(GroupSpec::new().name("top").max(50));
    let tree = Tree::with_config(config);
    let root = tree.root();
    assert_eq!(root.name(), Some("top"));
    assert_eq!(root.counter().max(), 50);
    let a = child(&root, "a");
    assert!(a.counter().try_charge(51).is_err());
    a.counter().try_charge(50).unwrap();
    a.counter().uncharge(50);
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle: offline and its refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_refusals_are_typed() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    assert_eq!(root.offline(), Err(GroupError::Root));
    assert!(root.is_online(), "a refused offline changes nothing");

    let p = child(&root, "p");
    let c1 = child(&p, "c1");
    let c2 = child(&p, "c2");
    assert_eq!(p.offline(), Err(GroupError::HasOnlineChildren { online_children: 2 }));
    assert!(p.is_online());
    assert_eq!(tree.stats().offlined, 0);

    c1.offline().unwrap();
    assert!(!c1.is_online());
    assert_eq!(c1.offline(), Err(GroupError::Offline));
    assert_eq!(p.offline(), Err(GroupError::HasOnlineChildren { online_children: 1 }));
    c2.offline().unwrap();
    // Offline children (still referenced) do not block their parent.
    p.offline().unwrap();
    assert_eq!(p.offline(), Err(GroupError::Offline));
    assert_eq!(root.offline(), Err(GroupError::Root));
    assert_eq!(lifecycle(tree.stats()), stats(4, 3, 0, 0));

    for e in [
        GroupError::ParentOffline,
        GroupError::Offline,
        GroupError::HasOnlineChildren { online_children: 3 },
        GroupError::Root,
    ] {
        assert!(!e.to_string().is_empty());
    }
    assert!(GroupError::HasOnlineChildren { online_children: 3 }.to_string().contains('3'));
}

#[test]
fn refused_creations_take_no_id() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    assert_eq!(p.id(), GroupId::from_index(1));
    // A spec above COUNTER_MAX, then an offline parent: both refused.
    assert!(root.create_child(GroupSpec::new().max(COUNTER_MAX + 1)).is_err());
    p.offline().unwrap();
    assert_eq!(p.create_child(GroupSpec::new()), Err(GroupError::ParentOffline));
    // The next creation gets the next number: ids are 0..created, no holes.
    let q = child(&root, "q");
    assert_eq!(q.id(), GroupId::from_index(2));
    assert_eq!(tree.stats().created, 3);
}

/// The soak's check (ids `0..created`, each released and freed once) with creations racing
/// offlines of their parents, which refuse some of them.
#[test]
fn racing_refused_creations_keep_ids_dense() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let refused = AtomicUsize::new(0);
    let rounds = scaled(300, 10);
    for _ in 0..rounds {
        let parent = child(&root, "parent");
        thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..4 {
                    match parent.create_child(GroupSpec::new()) {
                        Ok(c) => {
                            // Offline children first, or the parent's offline is refused.
                            let _ = c.offline();
                        }
                        Err(e) => {
                            assert_eq!(e, GroupError::ParentOffline);
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
            s.spawn(|| {
                while parent.offline().is_err() {
                    thread::yield_now();
                }
            });
        });
        // And one refusal every round for certain.
        assert_eq!(parent.create_child(GroupSpec::new()), Err(GroupError::ParentOffline));
        refused.fetch_add(1, Ordering::Relaxed);
    }
    let created = tree.stats().created;
    drop(root);
    drop(tree);
    // Every id below `created` was a group (released and freed once), none above.
    for id in 0..created {
        assert_eq!(
            (log.released(GroupId::from_index(id)), log.freed(GroupId::from_index(id))),
            (1, 1),
            "id {id}"
        );
    }
    assert_eq!(log.total(Ev::Released), created);
    assert_eq!(log.total(Ev::Freed), created);
    assert_eq!(created, 1 + rounds * 6 - refused.load(Ordering::Relaxed));
    log.check();
}

/// The last put publishes the node on the released list from a thread that is not pinned,
/// so another thread's reclamation may free it at once: the releasing thread must read
/// nothing of the node after the push. It used to read the node's tree pointer there (found
/// by miri in the stress test below); under miri this test reports such a read as a data
/// race with the free on the reclaiming thread. Everywhere it checks that each group is
/// released and freed exactly once.
#[test]
fn a_last_put_races_reclamation_on_another_thread() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let stop = AtomicBool::new(false);
    let rounds = scaled(2000, 30);
    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                tree.reclaim();
                thread::yield_now();
            }
        });
        for _ in 0..rounds {
            let g = child(&root, "g");
            let o = g.obj_group().unwrap();
            g.offline().unwrap();
            drop(g); // the ObjGroup still holds the group
            drop(o); // the last put of the ObjGroup, then of the group when it is freed
        }
        stop.store(true, Ordering::Relaxed);
    });
    tree.reclaim();
    assert_eq!(log.total(Ev::Freed), rounds, "every child freed");
    drop(root);
    let created = tree.stats().created;
    drop(tree);
    assert_eq!(log.total(Ev::Released), created);
    assert_eq!(log.total(Ev::Freed), created);
    log.check();
}

#[test]
fn create_child_of_offline_parent_is_refused() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    p.offline().unwrap();
    let refs = p.ref_count();
    assert_eq!(p.create_child(GroupSpec::new().name("late")), Err(GroupError::ParentOffline));
    assert_eq!(p.ref_count(), refs, "the refused child holds no reference on its parent");
    assert!(p.children().is_empty());
    assert_eq!(lifecycle(tree.stats()), stats(2, 1, 0, 0));
    assert_eq!(log.total(Ev::Released), 0);
    // Its parent is freed normally afterwards.
    let id = p.id();
    drop(p);
    tree.reclaim();
    assert_eq!((log.released(id), log.freed(id)), (1, 1));
    log.check();
}

#[test]
fn offline_zeroes_protection_and_the_parents_protected_sums() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let a = p.create_child(GroupSpec::new().name("a").min(100).low(200)).unwrap();
    let b = p.create_child(GroupSpec::new().name("b").min(10).low(20)).unwrap();
    a.counter().try_charge(50).unwrap();
    b.counter().try_charge(50).unwrap();
    assert_eq!((a.counter().min_usage(), a.counter().low_usage()), (50, 50));
    assert_eq!((p.counter().children_min_usage(), p.counter().children_low_usage()), (60, 70));

    a.offline().unwrap();
    assert_eq!((a.counter().min(), a.counter().low()), (0, 0));
    assert_eq!((a.counter().min_usage(), a.counter().low_usage()), (0, 0));
    assert_eq!(
        (p.counter().children_min_usage(), p.counter().children_low_usage()),
        (10, 20),
        "only the online sibling's protected usage is left in the parent's sums"
    );
    // Limits other than protection are kept; usage stays where it is.
    assert_eq!(a.counter().usage(), 50);
    assert_eq!(p.counter().usage(), 100);
    a.counter().uncharge(50);
    b.counter().uncharge(50);
    assert_eq!((p.counter().children_min_usage(), p.counter().children_low_usage()), (0, 0));
}

/// Issue 11, item 9: the protection of a group that is gone must not stay in its parent. A
/// child with `min`/`low` is left, after offline, with usage that its reparented objects no
/// longer uncharge from it (a residue of 5 units); `min`/`low` set on it again are refused and
/// change nothing, and once it is freed the parent's protection sums are exactly what they
/// were before the child existed. A new child with `min` 10 then gets an effective `min` of
/// 10, not 6 (the numbers: a stale 5 in the parent's sum of 15 overcommits the
/// parent's 10). Unlike `an_offline_groups_protection_is_retired_for_good`
/// (`counter_mutants.rs`), the retired group keeps usage until it is freed, and the check
/// covers the free and a later sibling's effective protection.
#[test]
fn an_offline_groups_protection_does_not_outlive_it_in_the_parent() {
    let log = Arc::new(Log::default());
    let config = TreeConfig::with_cpus(TestCpus::new(1)).unit_bytes(100).batch(0).observer(Obs(log.clone()));
    let tree = Tree::with_config(config);
    let root = tree.root();
    let p = root.create_child(GroupSpec::new().name("p").min(10).low(10)).unwrap();
    let sums = |g: &Group<TestCpus>| (g.counter().children_min_usage(), g.counter().children_low_usage());
    let before = sums(&p);
    assert_eq!(before, (0, 0));

    // The child's objects charge 5 units (outside any CPU: no stock, every unit counted).
    let c = p.create_child(GroupSpec::new().name("c").min(10).low(10)).unwrap();
    let o = c.obj_group().unwrap();
    assert!(o.charge_bytes(500).is_ok());
    assert_eq!((c.counter().min_usage(), c.counter().low_usage()), (5, 5));
    assert_eq!(sums(&p), (5, 5));

    // Offline retires the protection; the objects move to the parent, and uncharging them
    // there leaves the child's 5 units as a residue it keeps until freed.
    c.offline().unwrap();
    assert!(c.counter().is_retired());
    assert_eq!(sums(&p), before, "offline took the child's protected usage out of the parent");
    o.uncharge_bytes(500);
    assert_eq!((c.counter().usage(), p.counter().usage(), root.counter().usage()), (5, 0, 0));

    // Protection given again to the offline child: refused, and without effect.
    let again = (c.counter().set_min(10), c.counter().set_low(10), c.counter().set_min(usize::MAX));
    assert_eq!((c.counter().min(), c.counter().low()), (0, 0), "an offline group declares no protection");
    assert_eq!((c.counter().min_usage(), c.counter().low_usage()), (0, 0));
    assert_eq!(sums(&p), before, "protection set on an offline child reached the parent");
    // Its residue moving does not bring protection back either.
    c.counter().try_charge(1).unwrap();
    c.counter().uncharge(1);
    assert_eq!(sums(&p), before);

    // Freed with its residue: the parent has no children and exactly its old sums.
    let cid = c.id();
    drop((o, c));
    settle(&tree);
    assert_eq!(log.freed(cid), 1, "the offline child is freed");
    assert!(p.children().is_empty());
    assert_eq!(sums(&p), before, "a freed child's protection stayed in its parent");

    // A new child with `min`/`low` 10 using 10 gets all of it: nothing stale shares the
    // parent's 10.
    let n = p.create_child(GroupSpec::new().name("n").min(10).low(10)).unwrap();
    n.counter().try_charge(10).unwrap();
    assert_eq!(sums(&p), (10, 10));
    assert_eq!(n.counter().effective_protection_under(root.counter(), false), Some((10, 10)));
    p.counter().calculate_protection(root.counter(), false);
    n.counter().calculate_protection(root.counter(), false);
    assert_eq!((n.counter().effective_min(), n.counter().effective_low()), (10, 10));

    assert_eq!(
        again,
        (Err(LimitError::Retired), Err(LimitError::Retired), Err(LimitError::Retired)),
        "set_min/set_low on an offline group are refused"
    );
    n.counter().uncharge(10);
    assert_eq!((sums(&p), p.counter().usage(), root.counter().usage()), ((0, 0), 0, 0));
    drop((n, p, root));
    finish(tree, log);
}

#[test]
fn charging_an_offline_group_is_allowed_and_balances() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let c = c_with_max(&p, 40);
    c.offline().unwrap();
    c.counter().try_charge(30).unwrap();
    assert_eq!((c.counter().usage(), p.counter().usage(), root.counter().usage()), (30, 30, 30));
    assert!(c.counter().try_charge(11).is_err(), "an offline group keeps its max");
    c.counter().charge(5).unwrap();
    c.counter().uncharge(35);
    assert_eq!((c.counter().usage(), p.counter().usage(), root.counter().usage()), (0, 0, 0));
    // Charges own no references: a charged, unreferenced group is released and freed.
    // (References follow pointers, never charges: a group still charged is freed once
    // unreferenced; its charge stays in the ancestors' counters, where the caller who owns
    // the charge returns it. The object layer reparents such charges in one step.)
    c.counter().try_charge(3).unwrap();
    let id = c.id();
    assert_eq!(c.ref_count(), 1);
    drop(c);
    tree.reclaim();
    assert_eq!((log.released(id), log.freed(id)), (1, 1));
    assert_eq!((p.counter().usage(), root.counter().usage()), (3, 3));
    p.counter().uncharge(3);
    assert_eq!(root.counter().usage(), 0);
    log.check();
}

fn c_with_max<P: CpuProvider>(parent: &Group<P>, max: usize) -> Group<P> {
    parent.create_child(GroupSpec::new().name("limited").max(max)).unwrap()
}

#[test]
fn tryget_online_fails_after_offline_and_tryget_fails_once_released() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let g = child(&root, "g");
    let id = g.id();
    let cell = OwnerCell::new(g.clone());

    let guard = tree.pin();
    let r = cell.load(&guard).unwrap();
    assert!(r.is(&g) && r.is_online() && r.id() == id);
    let online = r.tryget_online().expect("online");
    assert_eq!(online, g);
    drop(online);

    g.offline().unwrap();
    assert!(!r.is_online());
    assert!(r.tryget_online().is_none(), "no tryget_online after offline");
    let held = r.tryget().expect("tryget succeeds while references exist");
    assert_eq!(g.ref_count(), 3, "g, the cell and `held`");
    drop(held);
    assert_eq!(g.ref_count(), 2);

    // Drop every reference while the guard is pinned: released, not freed.
    drop(g);
    let old = cell.take().unwrap();
    assert_eq!(old.ref_count(), 1);
    drop(old);
    assert_eq!(log.released(id), 1);
    assert!(r.tryget().is_none(), "tryget fails once released");
    assert!(r.tryget_online().is_none());
    assert_eq!(r.id(), id, "the memory is still valid under the guard");
    assert_eq!(r.counter().usage(), 0);
    tree.reclaim();
    assert_eq!(log.freed(id), 0, "not freed while a guard that loaded it is pinned");
    assert_eq!(tree.stats().freed, 0);
    drop(guard);
    tree.reclaim();
    assert_eq!(log.freed(id), 1);
    assert_eq!(lifecycle(tree.stats()), stats(2, 1, 1, 1));
    log.check();
}
