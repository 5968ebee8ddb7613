//! Group tests, chapter 3: references. Handles cloned and dropped across threads and
//! impersonated CPUs (Linux's `percpu_ref` and css references), exact counts per CPU, and
//! `OwnerCell`: load, get, replace, take, guards of other trees, and `get` racing `replace`.
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
use core::sync::atomic::{AtomicBool, Ordering};
use std::panic::catch_unwind;
use std::sync::Arc;
use std::thread;

use chargetree::COUNTER_MAX;
use chargetree::cpu::CpuProvider;
use chargetree::group::{Group, GroupId, GroupSpec, OwnerCell, Tree};

// ---------------------------------------------------------------------------------------------
// 4. Reference counting across threads
// ---------------------------------------------------------------------------------------------

/// Four threads clone one group; the handles are dropped on *other* threads (so gets and puts
/// land on different shards), then the group is taken offline and its count checked exactly;
/// the release happens at exactly the last drop.
fn clone_drop_across_threads<P: CpuProvider>(tree: Tree<P>, log: Arc<Log>, impersonate: bool) {
    const THREADS: usize = 4;
    let per_thread = scaled(500, 12);
    let g = child(&tree.root(), "shared");
    let id = g.id();
    let run = |cpu: usize, f: &mut dyn FnMut()| {
        if impersonate { on(cpu, f) } else { f() }
    };

    // Phase 1 (online): each thread clones `per_thread` handles.
    let batches: Vec<Vec<Group<P>>> = thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let g = &g;
                s.spawn(move || {
                    let mut out = Vec::new();
                    run(t, &mut || {
                        for _ in 0..per_thread {
                            out.push(g.clone());
                        }
                    });
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // base + g + clones
    assert_eq!(g.ref_count(), 2 + THREADS * per_thread);

    // Phase 2 (online): thread t drops the first half of the batch cloned by thread t+1.
    let mut batches: Vec<Vec<Group<P>>> = batches;
    let halves: Vec<Vec<Group<P>>> = batches
        .iter_mut()
        .map(|b| {
            let keep = b.split_off(per_thread / 2);
            core::mem::replace(b, keep)
        })
        .collect();
    thread::scope(|s| {
        for (t, mut half) in halves.into_iter().enumerate() {
            let cpu = (t + 3) % THREADS;
            s.spawn(move || {
                run(cpu, &mut || {
                    // Interleave clones and drops of the same handle on this CPU.
                    for h in half.drain(..) {
                        let again = h.clone();
                        drop(h);
                        drop(again);
                    }
                })
            });
        }
    });
    let left = THREADS * (per_thread - per_thread / 2);
    assert_eq!(g.ref_count(), 2 + left, "exact while quiescent");

    // Offline: the base reference goes, the count is exact.
    g.offline().unwrap();
    assert_eq!(g.ref_count(), 1 + left);

    // Phase 3 (offline): drop all but `g` concurrently, on shifted CPUs.
    thread::scope(|s| {
        for (t, mut b) in batches.drain(..).enumerate() {
            let cpu = (t + 1) % THREADS;
            let g = &g;
            s.spawn(move || {
                run(cpu, &mut || {
                    while let Some(h) = b.pop() {
                        // A clone of an offline group also works.
                        let c = h.clone();
                        drop(h);
                        assert!(g.ref_count() >= 2);
                        drop(c);
                    }
                })
            });
        }
    });
    assert_eq!(g.ref_count(), 1);
    assert_eq!(log.released(id), 0, "not released before the last drop");
    drop(g);
    assert_eq!(log.released(id), 1, "released at exactly the last drop");
    tree.reclaim();
    assert_eq!(log.freed(id), 1);
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 2);
    log.check();
}

#[test]
fn clone_and_drop_across_threads_with_test_cpus() {
    let (tree, log) = test_tree();
    clone_drop_across_threads(tree, log, true);
}

/// With `ThreadCpus`, the spawned threads only clone and drop: they never take a thread
/// index (only a per-CPU cache does), so every reference they take or drop lands on the shard
/// an unassigned index maps to, and the counts are still exact.
#[test]
fn clone_and_drop_across_threads_with_thread_cpus() {
    let (tree, log) = thread_tree();
    clone_drop_across_threads(tree, log, false);
}

#[test]
fn ref_counts_are_exact_on_each_impersonated_cpu() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let g = on(0, || child(&root, "g"));
    assert_eq!(g.ref_count(), 2, "base + handle");
    // A handle cloned on CPU 1 and dropped on CPU 3 leaves +1 / -1 in two shards.
    let h = on(1, || g.clone());
    let h2 = on(2, || g.clone());
    assert_eq!(g.ref_count(), 4);
    on(3, || drop(h));
    assert_eq!(g.ref_count(), 3);
    // The parent counts one reference for the child (plus the base and `root`).
    assert_eq!(root.ref_count(), 3);
    on(3, || g.offline()).unwrap();
    assert_eq!(g.ref_count(), 2);
    on(0, || drop(h2));
    assert_eq!(g.ref_count(), 1);
    // Out-of-range CPUs fall back to shard 0.
    let h3 = on(17, || g.clone());
    assert_eq!(g.ref_count(), 2);
    drop(h3);
    assert_eq!(g.ref_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. OwnerCell
// ---------------------------------------------------------------------------------------------

#[test]
fn owner_cell_new_load_get_replace_take() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&root, "b");

    let empty = OwnerCell::empty(&tree);
    assert!(empty.is_empty());
    {
        let guard = tree.pin();
        assert!(tree.owns_guard(&guard));
        assert!(empty.load(&guard).is_none());
        assert!(empty.get(&guard).is_none());
    }
    assert!(empty.take().is_none());
    assert!(empty.replace(None).is_none());

    let cell = OwnerCell::new(a.clone());
    assert!(!cell.is_empty());
    assert_eq!(a.ref_count(), 3, "base, a, the cell");
    {
        let guard = tree.pin();
        let r = cell.load(&guard).unwrap();
        assert!(r.is(&a) && !r.is(&b));
        assert_eq!(r.id(), a.id());
        assert!(r.is_online());
        assert_eq!(r.counter().max(), COUNTER_MAX);
        assert!(format!("{r:?}").contains("GroupRef"));
        let got = cell.get(&guard).unwrap();
        assert_eq!(got, a);
        assert_eq!(a.ref_count(), 4);
    }
    assert_eq!(a.ref_count(), 3);

    let old = cell.replace(Some(b.clone())).unwrap();
    assert_eq!(old, a);
    assert_eq!(cell_id(&tree, &cell), Some(b.id()));
    assert_eq!((a.ref_count(), b.ref_count()), (3, 3), "the reference moved out with `old`");
    drop(old);
    assert_eq!(a.ref_count(), 2);

    let taken = cell.take().unwrap();
    assert_eq!(taken, b);
    assert!(cell.is_empty());
    assert!(cell.take().is_none());
    drop(taken);
    assert_eq!(b.ref_count(), 2);

    // Dropping a full cell drops its reference.
    let cell2 = OwnerCell::new(b.clone());
    assert!(format!("{cell2:?}").contains("OwnerCell"));
    b.offline().unwrap();
    let bid = b.id();
    drop(b);
    assert_eq!(log.released(bid), 0);
    drop(cell2);
    assert_eq!(log.released(bid), 1);
    tree.reclaim();
    assert_eq!(log.freed(bid), 1);
    // An empty cell of the tree accepts the tree's groups.
    assert!(empty.replace(Some(a.clone())).is_none());
    assert_eq!(empty.take().unwrap(), a);
}

#[test]
#[should_panic(expected = "a guard of another tree cannot protect this owner cell")]
fn owner_cell_load_refuses_a_guard_of_another_tree() {
    let (one, _l1) = test_tree();
    let (two, _l2) = test_tree();
    let cell = OwnerCell::new(child(&one.root(), "a"));
    let guard = two.pin();
    assert!(!one.owns_guard(&guard));
    let _ = cell.load(&guard);
}

#[test]
#[should_panic(expected = "a guard of another tree cannot protect this owner cell")]
fn owner_cell_get_refuses_a_guard_of_another_tree() {
    let (one, _l1) = test_tree();
    let (two, _l2) = test_tree();
    let cell = OwnerCell::empty(&one);
    // Refused even for an empty cell: nothing is dereferenced either way.
    let guard = two.pin();
    let _ = cell.get(&guard);
}

#[test]
#[should_panic(expected = "a guard of another tree cannot protect this owner cell")]
fn owner_cell_refuses_a_participant_guard_of_another_tree() {
    let (one, _l1) = test_tree();
    let (two, _l2) = test_tree();
    let p = two.register();
    assert!(two.owns_participant(&p) && !one.owns_participant(&p));
    let cell = OwnerCell::new(child(&one.root(), "a"));
    let guard = p.pin();
    let _ = cell.load(&guard);
}

#[test]
#[should_panic(expected = "an owner cell holds groups of one tree only")]
fn owner_cell_holds_groups_of_one_tree_only() {
    let (one, _l1) = test_tree();
    let (two, _l2) = test_tree();
    let cell = OwnerCell::new(child(&one.root(), "a"));
    let _ = cell.replace(Some(child(&two.root(), "b")));
}

#[test]
fn owner_cell_refusal_of_another_trees_group_leaks_nothing() {
    let (one, l1) = test_tree();
    let (two, l2) = test_tree();
    let cell = OwnerCell::empty(&one);
    let b = child(&two.root(), "b");
    let r = catch_unwind(AssertUnwindSafe(|| cell.replace(Some(b.clone()))));
    assert!(r.is_err());
    assert!(cell.is_empty());
    assert_eq!(b.ref_count(), 2, "the refused handle was dropped, not stored or leaked");
    drop((cell, b));
    drop((one, two));
    assert_eq!((l1.total(Ev::Freed), l2.total(Ev::Freed)), (1, 2));
}

#[test]
fn owner_cell_get_rereads_after_replace() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&root, "b");
    let aid = a.id();
    a.offline().unwrap();
    let cell = OwnerCell::new(a);
    let guard = tree.pin();
    let r = cell.load(&guard).unwrap();
    // The cell held the last reference on `a`: replacing releases it.
    drop(cell.replace(Some(b.clone())));
    assert_eq!(log.released(aid), 1);
    assert!(r.tryget().is_none());
    let got = cell.get(&guard).unwrap();
    assert_eq!(got, b, "get re-reads the cell after a failed tryget");
    drop(guard);
    tree.reclaim();
    assert_eq!(log.freed(aid), 1);
}

/// A writer keeps replacing the cell with fresh offline groups (the cell holds their only
/// reference, so each replace releases the old one); readers `get` concurrently and must
/// always come back with a live handle to one of them.
fn get_vs_concurrent_replace<P: CpuProvider>(tree: Tree<P>, log: Arc<Log>, impersonate: bool) {
    let rounds = scaled(2000, 12);
    let root = tree.root();
    let first = child(&root, "first");
    first.offline().unwrap();
    let cell = OwnerCell::new(first);
    let done = AtomicBool::new(false);
    let run = |cpu: usize, f: &mut dyn FnMut()| {
        if impersonate { on(cpu, f) } else { f() }
    };
    thread::scope(|s| {
        s.spawn(|| {
            run(0, &mut || {
                for i in 0..rounds {
                    let g = root.create_child(GroupSpec::new().name("gen")).unwrap();
                    g.offline().unwrap();
                    let new_id = g.id();
                    let old = cell.replace(Some(g)).unwrap();
                    assert!(old.id() < new_id);
                    drop(old);
                    if i % 16 == 0 {
                        tree.reclaim();
                    }
                }
            });
            done.store(true, Ordering::Release);
        });
        for t in 1..3 {
            let (tree, cell, done, log) = (&tree, &cell, &done, &log);
            s.spawn(move || {
                run(t, &mut || {
                    let mut last = GroupId::from_index(0);
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) || reads < 3 {
                        if cfg!(miri) {
                            thread::yield_now(); // let the writer run instead of spinning
                        }
                        let guard = tree.pin();
                        let g = cell.get(&guard).expect("the cell is never empty");
                        drop(guard);
                        assert!(g.ref_count() >= 1);
                        assert!(!g.is_online());
                        assert!(g.id() >= last, "ids only grow: {} after {}", g.id(), last);
                        assert!(!log.is_freed(g.id()), "a handle to a freed group");
                        last = g.id();
                        drop(g);
                        reads += 1;
                    }
                    flush_thread(tree);
                })
            });
        }
    });
    drop(cell.take());
    settle(&tree);
    let st = tree.stats();
    assert_eq!(st.created, rounds + 2);
    assert_eq!((st.released, st.freed), (rounds + 1, rounds + 1));
    log.check();
}

#[test]
fn owner_cell_get_vs_concurrent_replace_test_cpus() {
    let (tree, log) = test_tree();
    get_vs_concurrent_replace(tree, log, true);
}

#[test]
fn owner_cell_get_vs_concurrent_replace_thread_cpus() {
    let (tree, log) = thread_tree();
    get_vs_concurrent_replace(tree, log, false);
}
