//! Group tests, chapter 4: `OwnerCell::move_charge` (Linux's `mem_cgroup_move_account`):
//! between siblings, up, down and across subtrees, typed errors that change nothing, the
//! pre-charge through the common ancestor, and moves racing `offline`.
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

use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use chargetree::COUNTER_MAX;
use chargetree::cpu::{CpuProvider, TestCpus};
use chargetree::group::{Group, GroupError, GroupId, GroupSpec, MoveError, OwnerCell, Tree};

// ---------------------------------------------------------------------------------------------
// 6. move_charge
// ---------------------------------------------------------------------------------------------

#[test]
fn move_charge_between_siblings() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let a = child(&p, "a");
    let b = child(&p, "b");
    a.counter().try_charge(10).unwrap();
    a.counter().try_charge(4).unwrap(); // another object of a, not moved
    let obj = OwnerCell::new(a.clone());
    let (ra, rb) = (a.ref_count(), b.ref_count());
    obj.move_charge(&b, 10).unwrap();
    assert_eq!((a.counter().usage(), b.counter().usage()), (4, 10));
    assert_eq!((p.counter().usage(), root.counter().usage()), (14, 14), "common ancestors unchanged");
    assert_eq!(cell_id(&tree, &obj), Some(b.id()));
    assert_eq!((a.ref_count(), b.ref_count()), (ra - 1, rb + 1), "the cell's reference moved");
    // And back.
    obj.move_charge(&a, 10).unwrap();
    assert_eq!((a.counter().usage(), b.counter().usage(), p.counter().usage()), (14, 0, 14));
    assert_eq!((a.ref_count(), b.ref_count()), (ra, rb));
    a.counter().uncharge(14);
    drop(obj);
    assert_eq!(root.counter().usage(), 0);
}

#[test]
fn move_charge_up_down_and_across_subtrees() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let x = child(&root, "x");
    let x1 = child(&x, "x1");
    let x11 = child(&x1, "x11");
    let y = child(&root, "y");
    let y1 = child(&y, "y1");
    let usage = |gs: &[&Group<TestCpus>]| gs.iter().map(|g| g.counter().usage()).collect::<Vec<_>>();

    x11.counter().try_charge(8).unwrap();
    let obj = OwnerCell::new(x11.clone());
    // Up to the grandparent: the path below it loses, the grandparent and above keep.
    obj.move_charge(&x, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &root]), [0, 0, 8, 8]);
    // Down again.
    obj.move_charge(&x11, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &root]), [8, 8, 8, 8]);
    // Across: the common ancestor (root) unchanged, both paths updated.
    obj.move_charge(&y1, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &y1, &y, &root]), [0, 0, 0, 8, 8, 8]);
    // To the root itself.
    obj.move_charge(&root, 8).unwrap();
    assert_eq!(usage(&[&y1, &y, &root]), [0, 0, 8]);
    obj.move_charge(&x1, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &y, &root]), [0, 8, 8, 0, 8]);
    // Peaks saw the moves; nothing failed.
    assert_eq!(y1.counter().peak(), 8);
    assert_eq!(root.counter().failcnt(), 0);
    let g = obj.take().unwrap();
    g.counter().uncharge(8);
    assert_eq!(root.counter().usage(), 0);
}

#[test]
fn move_charge_errors_are_typed_and_change_nothing() {
    let (tree, _log) = test_tree();
    let (other, _olog) = test_tree();
    let root = tree.root();
    let r = root.create_child(GroupSpec::new().name("r").max(100)).unwrap();
    let q = child(&r, "q");
    let t = q.create_child(GroupSpec::new().name("t").max(50)).unwrap();
    let f = child(&root, "f");
    let dead = child(&root, "dead");
    dead.offline().unwrap();
    let foreign = child(&other.root(), "foreign");

    // r already holds 70 through a sibling of q.
    let s = child(&r, "s");
    s.counter().try_charge(70).unwrap();
    f.counter().try_charge(40).unwrap();
    let obj = OwnerCell::new(f.clone());
    let snapshot = |tree: &Tree<TestCpus>| {
        tree.groups().iter().map(|g| (g.id(), g.counter().usage())).collect::<Vec<_>>()
    };
    let before = snapshot(&tree);
    let refs_before = (f.ref_count(), t.ref_count());

    assert_eq!(OwnerCell::empty(&tree).move_charge(&t, 1), Err(MoveError::Empty));
    assert_eq!(obj.move_charge(&dead, 40), Err(MoveError::TargetOffline));
    assert_eq!(obj.move_charge(&foreign, 40), Err(MoveError::OtherTree));
    assert_eq!(obj.move_charge(&t, COUNTER_MAX + 1), Err(MoveError::TooLarge));
    // 40 fits t (max 50) but not r (70 + 40 > 100): the error names r, two levels up.
    assert_eq!(obj.move_charge(&t, 40), Err(MoveError::Limit { group: r.id(), max: 100, usage: 70 }));
    assert_eq!(r.counter().failcnt(), 1);
    // 60 does not fit t itself: named at level 0.
    s.counter().uncharge(70);
    assert_eq!(obj.move_charge(&t, 60), Err(MoveError::Limit { group: t.id(), max: 50, usage: 0 }));
    s.counter().try_charge(70).unwrap();

    assert_eq!(snapshot(&tree), before, "no failed move leaves a charge behind");
    assert_eq!((f.ref_count(), t.ref_count()), refs_before, "nor a reference");
    assert_eq!(cell_id(&tree, &obj), Some(f.id()));
    assert_eq!(foreign.counter().usage(), 0);

    // Moving to the group the cell already points at: Ok, nothing changes (even if the
    // amount could not be charged, or the group is offline).
    obj.move_charge(&f, 40).unwrap();
    obj.move_charge(&f, COUNTER_MAX + 1).unwrap();
    assert_eq!(snapshot(&tree), before);
    assert_eq!(f.ref_count(), refs_before.0);
    f.offline().unwrap();
    obj.move_charge(&f, 40).unwrap();
    assert_eq!(f.counter().usage(), 40);

    // Moving *out of* an offline group is fine.
    s.counter().uncharge(70);
    obj.move_charge(&t, 40).unwrap();
    assert_eq!((f.counter().usage(), t.counter().usage(), r.counter().usage()), (0, 40, 40));

    for e in [
        MoveError::Empty,
        MoveError::TargetOffline,
        MoveError::OtherTree,
        MoveError::Limit { group: GroupId::from_index(7), max: 1, usage: 2 },
        MoveError::TooLarge,
        MoveError::Raced,
    ] {
        assert!(!e.to_string().is_empty());
    }
    obj.take().unwrap().counter().uncharge(40);
    assert_eq!(root.counter().usage(), 0);
}

/// Like Linux's v1 charge moving (which precharges `mc.to` through its whole hierarchy and
/// uncharges `mc.from` afterwards), a move charges the target's path *before* uncharging the
/// source's: a common ancestor at its limit refuses a move that would not change its usage.
#[test]
fn move_charge_precharges_through_the_common_ancestor() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = root.create_child(GroupSpec::new().name("p").max(10)).unwrap();
    let a = child(&p, "a");
    let b = child(&p, "b");
    a.counter().try_charge(10).unwrap();
    let obj = OwnerCell::new(a.clone());
    assert_eq!(obj.move_charge(&b, 10), Err(MoveError::Limit { group: p.id(), max: 10, usage: 10 }));
    assert_eq!((a.counter().usage(), b.counter().usage(), p.counter().usage()), (10, 0, 10));
    p.counter().set_max(20).unwrap();
    obj.move_charge(&b, 10).unwrap();
    assert_eq!((a.counter().usage(), b.counter().usage(), p.counter().usage()), (0, 10, 10));
    assert_eq!(p.counter().peak(), 20, "transiently double-charged");
    obj.take().unwrap().counter().uncharge(10);
}

/// The seed's question ("what prevents `from` from being released?"), with real threads:
/// thread A moves objects between F and T; thread B takes F offline and drops the last
/// outside handle of F. Every counter balances, F is freed exactly once, and never while a
/// cell still points at it.
fn move_vs_offline<P: CpuProvider>(tree: Tree<P>, log: Arc<Log>, impersonate: bool) {
    let rounds = scaled(3000, 16);
    let root = tree.root();
    let p = child(&root, "p");
    let f = child(&p, "F");
    let t = child(&p, "T");
    let (fid, tid) = (f.id(), t.id());
    // Where new objects find F: a shared pointer that owns one reference (like a task's
    // memcg); B empties it. It is the last outside pointer to F besides the objects.
    let lookup = OwnerCell::new(f);
    let progress = AtomicUsize::new(0);
    let run = |cpu: usize, f: &mut dyn FnMut()| {
        if impersonate { on(cpu, f) } else { f() }
    };

    let objs: Objs<P> = thread::scope(|s| {
        let a = s.spawn(|| {
            let mut objs: Objs<P> = Vec::new();
            let mut rng = Rng::new(1);
            run(0, &mut || {
                for i in 0..rounds {
                    let lookup_f = || {
                        let guard = tree.pin();
                        lookup.load(&guard).and_then(|r| r.tryget_online())
                    };
                    // A new object, charged to F while F is online, else to T.
                    let amount = 1 + rng.below(8);
                    let home = lookup_f().unwrap_or_else(|| t.clone());
                    home.counter().try_charge(amount).unwrap();
                    objs.push((OwnerCell::new(home), amount));
                    // Move every object to T and back to F.
                    for (cell, amount) in &objs {
                        cell.move_charge(&t, *amount).unwrap();
                        if let Some(f) = lookup_f() {
                            match cell.move_charge(&f, *amount) {
                                Ok(()) | Err(MoveError::TargetOffline) => {}
                                Err(e) => panic!("unexpected {e:?}"),
                            }
                        }
                        // Nothing a cell points at is freed.
                        let guard = tree.pin();
                        let id = cell.load(&guard).unwrap().id();
                        assert!(id == fid || id == tid);
                        assert!(!log.is_freed(id), "{id} freed while a cell points at it");
                    }
                    // Free the oldest object now and then.
                    if objs.len() > 3 {
                        let (cell, amount) = objs.remove(0);
                        cell.take().unwrap().counter().uncharge(amount);
                    }
                    progress.store(i + 1, Ordering::Release);
                }
                flush_thread(&tree);
            });
            objs
        });
        s.spawn(|| {
            run(1, &mut || {
                while progress.load(Ordering::Acquire) < rounds / 3 {
                    thread::yield_now();
                }
                let f = lookup.take().expect("F is in the lookup cell");
                f.offline().unwrap();
                assert_eq!(f.offline(), Err(GroupError::Offline));
                drop(f); // the last outside handle of F
            });
        });
        a.join().unwrap()
    });

    // Balance: every group holds exactly what the objects charged to it hold.
    let guard = tree.pin();
    let on = |id: GroupId| -> usize {
        objs.iter().filter(|(c, _)| c.load(&guard).unwrap().id() == id).map(|(_, a)| a).sum()
    };
    let total: usize = objs.iter().map(|(_, a)| a).sum();
    assert_eq!(t.counter().usage(), on(tid));
    assert_eq!(p.counter().usage(), total);
    assert_eq!(root.counter().usage(), total);
    if let Some((cell, _)) = objs.iter().find(|(c, _)| c.load(&guard).unwrap().id() == fid) {
        let f = cell.load(&guard).unwrap();
        assert!(!f.is_online());
        assert_eq!(f.counter().usage(), on(fid));
    }
    drop(guard);
    let f_still_used = objs.iter().any(|(c, _)| cell_id(&tree, c) == Some(fid));
    assert_eq!(log.released(fid), usize::from(!f_still_used));

    // Move everything off F, watching F's counter reach zero under a guard.
    let guard = tree.pin();
    let mut f_ref = None;
    for (cell, amount) in &objs {
        let r = cell.load(&guard).unwrap();
        if r.id() == fid {
            f_ref = Some(r);
            cell.move_charge(&t, *amount).unwrap();
        }
    }
    assert_eq!(t.counter().usage(), total);
    assert_eq!(log.released(fid), 1, "released once the last cell moved away");
    if let Some(f) = f_ref {
        assert_eq!(f.counter().usage(), 0);
        assert!(f.tryget().is_none());
    }
    drop(guard);
    tree.reclaim();
    assert_eq!((log.released(fid), log.freed(fid)), (1, 1));

    for (cell, amount) in objs {
        cell.take().unwrap().counter().uncharge(amount);
    }
    assert_eq!((t.counter().usage(), p.counter().usage(), root.counter().usage()), (0, 0, 0));
    assert_eq!(p.counter().underflows() + t.counter().underflows(), 0);
    let st = tree.stats();
    assert_eq!(lifecycle(st), stats(4, 1, 1, 1));
    drop((root, p, t));
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 4);
    log.check();
}

#[test]
fn move_vs_offline_test_cpus() {
    let (tree, log) = test_tree();
    move_vs_offline(tree, log, true);
}

#[test]
fn move_vs_offline_thread_cpus() {
    let (tree, log) = thread_tree();
    move_vs_offline(tree, log, false);
}
