//! Object-group tests, chapter 7: threads. Threads charging and uncharging through the
//! `ObjGroup`s of sibling groups while another thread takes some of them offline, on
//! `TestCpus` and on `ThreadCpus`; the last `ObjGroup`s of a dropped tree freeing the root;
//! the tree dropped while threads charge bytes.
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

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use chargetree::cpu::{CpuProvider, TestCpus, ThreadCpus};
use chargetree::group::{Group, GroupId, Tree, TreeConfig, reclaim_orphans};
use chargetree::objgroup::ObjGroup;

// ---------------------------------------------------------------------------------------------
// 4. Threads: sibling ObjGroups under concurrent offlining
// ---------------------------------------------------------------------------------------------

/// Runs `f` as the worker on CPU `cpu` (impersonated, or the thread's own with `ThreadCpus`).
type OnCpu = fn(usize, &mut dyn FnMut());

/// `workers` threads charge and uncharge bytes through the `ObjGroup`s of six sibling groups
/// (three of them with a child), handing objects to each other through a shared pool so that
/// they are freed on other CPUs; meanwhile another thread takes the children and three of
/// the siblings offline. Lookups after an offline get the parent's `ObjGroup`, handles taken
/// before keep charging through the reparented one. At the end everything balances: the
/// parent and root at zero, nothing clamped, nothing stray, and every group and `ObjGroup`
/// freed exactly once.
#[allow(clippy::too_many_lines)]
fn siblings_charge_while_some_go_offline<P: CpuProvider>(
    config: TreeConfig<P>,
    workers: usize,
    on_cpu: OnCpu,
) {
    const U: usize = 64;
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(config.unit_bytes(U).batch(4).observer(Obs(log.clone())));
    let root = tree.root();
    let p = child(&root);
    let sibs: Vec<Group<P>> = (0..6).map(|_| child(&p)).collect();
    let kids: Vec<Group<P>> = sibs[..3].iter().map(child).collect();
    let targets: Vec<Group<P>> = sibs.iter().chain(&kids).cloned().collect();
    let pool: Mutex<Vec<(ObjGroup<P>, usize)>> = Mutex::new(Vec::new());
    let offlining_done = AtomicBool::new(false);
    let progress = AtomicUsize::new(0);
    let iterations = scaled(3000, 20);

    thread::scope(|s| {
        for t in 0..workers {
            let (tree, targets, pool, done, progress) = (&tree, &targets, &pool, &offlining_done, &progress);
            s.spawn(move || {
                on_cpu(t, &mut || {
                    let mut rng = Rng::new(t as u64 + 11);
                    let mut cache: Vec<Option<ObjGroup<P>>> = vec![None; targets.len()];
                    let mut mine: Vec<(ObjGroup<P>, usize)> = Vec::new();
                    let mut i = 0;
                    while i < iterations || !done.load(Ordering::Acquire) {
                        i += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                        let k = rng.below(targets.len());
                        if cache[k].is_none() || rng.below(16) == 0 {
                            let o = targets[k].obj_group().expect("the tree is alive");
                            assert!(
                                o.group().is_descendant_of(&targets[k])
                                    || targets[k].is_descendant_of(&o.group())
                            );
                            cache[k] = Some(o);
                        }
                        let o = cache[k].as_ref().unwrap();
                        let n = rng.below(3 * U);
                        let r = o.charge_bytes(n);
                        assert!(r.is_ok(), "{r:?}");
                        mine.push((o.clone(), n));
                        match rng.below(8) {
                            0..=2 => {
                                let (o, n) = mine.swap_remove(rng.below(mine.len()));
                                o.uncharge_bytes(n);
                            }
                            3 => pool.lock().unwrap().push(mine.swap_remove(rng.below(mine.len()))),
                            4 => {
                                let object = pool.lock().unwrap().pop();
                                if let Some((o, n)) = object {
                                    o.uncharge_bytes(n);
                                }
                            }
                            5 => {
                                tree.drain_local();
                            }
                            _ => {}
                        }
                        if i > 100 * iterations {
                            break; // the offliner is stuck: let the asserts below say so
                        }
                    }
                    pool.lock().unwrap().append(&mut mine);
                });
            });
        }
        let (tree, sibs, kids, done, progress) = (&tree, &sibs, &kids, &offlining_done, &progress);
        s.spawn(move || {
            // Spread the offlines over the workers' run.
            let wait_for = |n: usize| {
                while progress.load(Ordering::Relaxed) < n {
                    thread::yield_now();
                }
            };
            let step = iterations * workers / 8;
            for i in 0..3 {
                wait_for((2 * i + 1) * step);
                kids[i].offline().unwrap();
                wait_for((2 * i + 2) * step);
                sibs[i].offline().unwrap();
                tree.reclaim();
            }
            done.store(true, Ordering::Release);
        });
    });
    assert!(offlining_done.load(Ordering::Relaxed));

    // Free every object left (on CPU 0), then return every stocked byte and unit.
    let objects = core::mem::take(&mut *pool.lock().unwrap());
    on_cpu(0, &mut || {
        for (o, n) in &objects {
            o.uncharge_bytes(*n);
        }
    });
    drop(objects);
    assert!(tree.drain_all(&root).is_some());
    tree.reclaim();
    assert_eq!((usage(&p), usage(&root)), (0, 0), "the parent and root are back at zero");
    for (i, g) in sibs.iter().enumerate().skip(3) {
        assert_eq!((usage(g), g.cached_units()), (0, 0), "online sibling {i}");
    }
    for g in [&root, &p].into_iter().chain(&sibs).chain(&kids) {
        assert_eq!(g.counter().underflows(), 0, "group {} never clamped", g.id());
    }
    let stats = tree.stats();
    assert_eq!(stats.stray_bytes, 0);
    // Only the online groups' own ObjGroups are left (created now if no lookup needed them).
    let online: Vec<ObjGroup<P>> =
        [&root, &p].into_iter().chain(&sibs[3..]).map(|g| g.obj_group().unwrap()).collect();
    let stats = tree.stats();
    assert_eq!(stats.objgroups_created - stats.objgroups_freed, online.len(), "{stats:?}");
    for o in &online {
        assert_eq!((o.cached_bytes(), o.parked_bytes()), (0, 0));
    }

    // The removed groups are freed as soon as their handles go.
    let removed: Vec<GroupId> = sibs[..3].iter().chain(&kids).map(Group::id).collect();
    drop((online, targets, kids));
    let sibs_left = sibs.into_iter().skip(3).collect::<Vec<_>>();
    tree.reclaim();
    for id in removed {
        assert_eq!(log.freed(id), 1, "removed group {id} freed exactly once");
    }
    drop((sibs_left, p, root));
    finish(tree, log);
}

#[test]
fn sibling_objgroups_under_concurrent_offline_balance_on_test_cpus() {
    let workers = if cfg!(miri) { 2 } else { 3 };
    siblings_charge_while_some_go_offline(
        TreeConfig::with_cpus(TestCpus::new(workers)),
        workers,
        |cpu, f| {
            on(cpu, f);
        },
    );
}

#[test]
fn sibling_objgroups_under_concurrent_offline_balance_on_thread_cpus() {
    let workers = if cfg!(miri) { 2 } else { 4 };
    siblings_charge_while_some_go_offline(TreeConfig::with_cpus(ThreadCpus::new(16)), workers, |_, f| f());
}

/// The last `ObjGroup` handles of a dropped tree, reparented to the root, go last: freeing
/// each one (inside the epoch collector) puts its group, and the last of those puts releases
/// the root from inside the collector. The same pump must then free the root and the tree's
/// bookkeeping, whatever the depth the handles came from. (The stress test below found a
/// rare leak on this path: the group put from inside the collector started a nested pump
/// that could free nothing, and the outer pump's fixed round budget could run out before
/// the root was freed. The budget part is pinned down deterministically by
/// `detached_chains_are_freed_when_their_last_handle_goes` in tests/group_release.rs.)
#[test]
fn the_last_objgroups_of_a_dropped_tree_free_the_root() {
    for depth in [1, 3, scaled(60, 12)] {
        let log = Arc::new(Log::default());
        let tree = Tree::with_config(
            TreeConfig::with_cpus(TestCpus::new(2)).unit_bytes(64).observer(Obs(log.clone())),
        );
        let mut g = tree.root();
        let mut objs = Vec::new();
        for _ in 0..depth {
            g = child(&g);
            let o = g.obj_group().unwrap();
            let _ = on(0, || o.charge_bytes(100).unwrap()); // 2 units, 28 bytes in the stock
            objs.push(o);
        }
        let created = tree.stats().created;
        drop(g);
        drop(tree); // offlines everything: every ObjGroup now points at the root
        for (i, o) in objs.iter().enumerate() {
            assert_eq!(o.group().id(), GroupId::from_index(0), "depth {depth}: ObjGroup {i} reparented");
            on(1, || o.uncharge_bytes(100));
        }
        drop(objs);
        reclaim_orphans();
        assert_eq!(log.total(Ev::Freed), created, "depth {depth}: every group freed: {log:?}");
        assert_eq!(Arc::strong_count(&log), 1, "depth {depth}: the tree's bookkeeping is freed");
        log.check();
    }
}

/// Dropping the tree while other threads still charge and uncharge bytes through their
/// `ObjGroup` handles (allowed: handles outlive the tree). Once the threads are done and their
/// handles dropped, every group and the tree's bookkeeping must be freed.
#[test]
fn dropping_the_tree_while_threads_charge_bytes_frees_everything() {
    let rounds = scaled(3000, 3);
    let mut leaked = Vec::new();
    for round in 0..rounds {
        let log = Arc::new(Log::default());
        let tree = Tree::with_config(
            TreeConfig::with_cpus(TestCpus::new(2)).unit_bytes(64).batch(4).observer(Obs(log.clone())),
        );
        let os: Vec<ObjGroup<TestCpus>> = (0..2).map(|_| child(&tree.root()).obj_group().unwrap()).collect();
        let progress = AtomicUsize::new(0);
        let mut created = 0;
        thread::scope(|s| {
            let mut workers = Vec::new();
            for (t, o) in os.iter().enumerate() {
                let progress = &progress;
                workers.push(s.spawn(move || {
                    on(t, || {
                        for i in 0..scaled(2000, 50) {
                            progress.fetch_add(1, Ordering::Relaxed);
                            let n = (i * 37) % 150;
                            let _ = o.charge_bytes(n).unwrap();
                            o.uncharge_bytes(n);
                        }
                    });
                }));
            }
            while progress.load(Ordering::Relaxed) < scaled(50 + round % 200, 10) {
                std::hint::spin_loop();
            }
            created = tree.stats().created;
            drop(tree);
            // Joined explicitly: the scope's implicit join returns once the closures have
            // returned, while the threads may still be running their thread-local
            // destructors, which pin the epoch (and may run deferred frees) as they exit.
            for w in workers {
                w.join().unwrap();
            }
        });
        drop(os);
        reclaim_orphans();
        if log.total(Ev::Freed) != created || Arc::strong_count(&log) != 1 {
            leaked.push((round, log.total(Ev::Freed), created));
        }
    }
    assert!(leaked.is_empty(), "(round, groups freed, groups created) of leaking rounds: {leaked:?}");
}
