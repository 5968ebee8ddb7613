//! Group tests, chapter 2: release and free. Every group is freed exactly once and never
//! while reachable (parents after children, chains in one reclaim, dropping the tree, handles
//! that outlive it, groups handed over by `pin`), `TreeStats`' counts of each transition, and
//! the detached mode's reclamation inside the last `put`.
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

use std::sync::Arc;
use std::thread;

use chargetree::COUNTER_MAX;
use chargetree::cpu::ThreadCpus;
use chargetree::group::{
    Group, GroupError, GroupId, GroupSpec, OFFLINE_PUMP_BATCH, OwnerCell, reclaim_orphans,
};

// ---------------------------------------------------------------------------------------------
// 2. Release and free: exactly once, never while reachable
// ---------------------------------------------------------------------------------------------

#[test]
fn groups_are_freed_exactly_once_and_never_while_reachable() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let gc = child(&p, "gc");
    let (pid, gcid) = (p.id(), gc.id());
    let h2 = p.clone();
    let cell = OwnerCell::new(p.clone());

    gc.offline().unwrap();
    p.offline().unwrap();
    drop(p);
    tree.reclaim();
    // Still held by h2, by the cell and by its child.
    assert_eq!(lifecycle(tree.stats()), stats(3, 2, 0, 0));
    assert_eq!(log.released(pid), 0);

    drop(h2);
    tree.reclaim();
    assert_eq!(tree.stats().released, 0, "the cell and the child still hold p");

    drop(cell);
    tree.reclaim();
    assert_eq!(tree.stats().released, 0, "the child still holds p");
    assert_eq!(tree.stats().dying(), 2);

    drop(gc);
    tree.reclaim();
    assert_eq!((log.released(gcid), log.freed(gcid)), (1, 1));
    assert_eq!((log.released(pid), log.freed(pid)), (1, 1));
    assert!(
        log.position(Ev::Freed, gcid) < log.position(Ev::Freed, pid),
        "a parent is freed after its child"
    );
    assert!(
        log.position(Ev::Freed, gcid) < log.position(Ev::Released, pid),
        "the child's free drops its reference on the parent"
    );
    assert_eq!(lifecycle(tree.stats()), stats(3, 2, 2, 2));
    assert_eq!(tree.stats().dying(), 0);
    // Nothing else, and the root is still alive.
    assert_eq!(log.total(Ev::Freed), 2);
    assert!(root.is_online());
    log.check();
}

#[test]
fn a_released_leaf_is_freed_by_one_reclaim() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let g = child(&root, "g");
    let id = g.id();
    g.offline().unwrap();
    drop(g);
    assert_eq!(log.released(id), 1, "released synchronously by the last drop");
    assert_eq!(log.freed(id), 0, "the last drop only queues");
    assert_eq!(lifecycle(tree.stats()), stats(2, 1, 1, 0));
    tree.reclaim();
    assert_eq!(log.freed(id), 1);
    assert_eq!(lifecycle(tree.stats()), stats(2, 1, 1, 1));
}

#[test]
fn parents_are_freed_after_their_children() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&a, "b");
    let c = child(&b, "c");
    let d = child(&c, "d");
    let ids = [a.id(), b.id(), c.id(), d.id()];
    for g in [&d, &c, &b, &a] {
        g.offline().unwrap();
    }
    // Drop the handles top-down: only the leaf's drop releases anything.
    drop(a);
    drop(b);
    drop(c);
    assert_eq!(tree.stats().released, 0);
    drop(d);
    settle(&tree);
    assert_eq!(log.freed_ids(), vec![ids[3], ids[2], ids[1], ids[0]]);
    for id in ids {
        assert_eq!((log.released(id), log.freed(id)), (1, 1));
    }
    assert_eq!(lifecycle(tree.stats()), stats(5, 4, 4, 4));
    log.check();
}

/// `Tree::reclaim` promises: "in a quiescent process they are freed before this returns".
/// That includes parents released *during* the call (each freed child puts its reference on
/// its parent), however deep the chain.
#[test]
fn one_reclaim_frees_a_whole_released_chain() {
    const DEPTH: usize = 8;
    let (tree, log) = test_tree();
    let mut chain = vec![tree.root()];
    for i in 0..DEPTH {
        let c = child(chain.last().unwrap(), &format!("l{i}"));
        chain.push(c);
    }
    for g in chain.iter().skip(1).rev() {
        g.offline().unwrap();
    }
    let ids: Vec<GroupId> = chain.iter().skip(1).map(|g| g.id()).collect();
    // Drop top-down: only the leaf's drop releases anything.
    for g in chain.drain(1..) {
        drop(g);
    }
    assert_eq!(lifecycle(tree.stats()), stats(DEPTH + 1, DEPTH, 1, 0));
    tree.reclaim();
    assert_eq!(
        lifecycle(tree.stats()),
        stats(DEPTH + 1, DEPTH, DEPTH, DEPTH),
        "one quiescent reclaim frees every released group"
    );
    let expected: Vec<GroupId> = ids.into_iter().rev().collect();
    assert_eq!(log.freed_ids(), expected, "leaf first, each parent after its child");
    log.check();
}

#[test]
fn dropping_the_tree_frees_the_root_and_the_bookkeeping() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&a, "b");
    let c = child(&root, "c");
    let ids: Vec<GroupId> = [&root, &a, &b, &c].iter().map(|g| g.id()).collect();
    c.offline().unwrap();
    drop((root, a, b, c));
    tree.reclaim();
    assert_eq!(lifecycle(tree.stats()), stats(4, 1, 1, 1), "only c was offline and unreferenced");
    drop(tree);
    for id in ids {
        assert_eq!((log.released(id), log.freed(id)), (1, 1), "{id}");
    }
    assert_eq!(log.freed_ids().last(), Some(&GroupId::from_index(0)), "the root is freed last");
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping (and its observer) was freed");
    log.check();
}

#[test]
fn dropping_the_tree_offlines_every_group() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&a, "b");
    drop(root);
    let (aid, bid) = (a.id(), b.id());
    drop(tree);
    assert!(!a.is_online() && !b.is_online());
    assert!(!a.parent().unwrap().is_online(), "the root is offline too");
    assert_eq!(a.create_child(GroupSpec::new()), Err(GroupError::TreeClosed));
    assert_eq!(a.offline(), Err(GroupError::Offline));
    assert_eq!(a.parent().unwrap().offline(), Err(GroupError::Root));
    drop(b);
    // Detached: the last drop only queues (it may run inside an allocator); the next
    // reclamation point frees (here one of `a`'s non-allocator calls).
    assert_eq!(a.offline(), Err(GroupError::Offline));
    assert_eq!(log.freed(bid), 1, "detached: the next reclamation point frees");
    assert_eq!(log.freed(aid), 0);
    drop(a);
    reclaim_orphans();
    assert_eq!(log.freed(aid), 1);
    assert_eq!(log.freed(GroupId::from_index(0)), 1);
    assert_eq!(Arc::strong_count(&log), 1);
    log.check();
}

#[test]
fn handles_that_outlive_the_tree_keep_working_and_are_freed_when_dropped() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), "g");
    let id = g.id();
    let cell = OwnerCell::new(g.clone());
    g.counter().try_charge(10).unwrap();
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 0, "g is held, so is the root");

    // Counters keep working: charges propagate to the root, limits apply.
    let root = g.parent().unwrap();
    assert!(root.is_root());
    g.counter().try_charge(5).unwrap();
    assert_eq!((g.counter().usage(), root.counter().usage()), (15, 15));
    g.counter().uncharge(15);
    assert_eq!(root.counter().usage(), 0);
    assert_eq!(g.ref_count(), 2);
    drop(root);

    drop(g);
    assert_eq!(log.released(id), 0, "the cell still holds g");
    drop(cell.take());
    reclaim_orphans();
    assert_eq!((log.released(id), log.freed(id)), (1, 1));
    assert_eq!((log.released(GroupId::from_index(0)), log.freed(GroupId::from_index(0))), (1, 1));
    assert_eq!(Arc::strong_count(&log), 1, "the bookkeeping went with the root");
    log.check();
}

/// The same, with chains below the root held only by a leaf's handle: after the tree is
/// gone, dropping that handle frees the leaf, every ancestor and the root, and the tree's
/// bookkeeping (parents released inside the collector are picked up by the same pump, for
/// as long as the chain is: every level needs a few pump rounds of its own, so a pump with a
/// fixed round budget stranded the top of deep chains).
#[test]
fn detached_chains_are_freed_when_their_last_handle_goes() {
    for depth in [1, 2, 3, 4, 40, scaled(200, 30)] {
        let (tree, log) = test_tree();
        let mut g = tree.root();
        for i in 0..depth {
            g = child(&g, &format!("level{i}"));
        }
        drop(tree);
        drop(g);
        reclaim_orphans();
        let freed = log.total(Ev::Freed);
        assert_eq!(freed, depth + 1, "depth {depth}: every group (root included) is freed: {log:?}");
        assert_eq!(Arc::strong_count(&log), 1, "depth {depth}: the tree's bookkeeping is freed");
        log.check();
    }
}

/// `Tree::pin` hands the tree's released groups to the collector by deferring them into the
/// *calling thread's* epoch bag, without flushing it. If that thread then idles (parked on a
/// lock, a condvar, a barrier), the groups stay in its private bag: `Tree::reclaim` on any
/// other thread cannot see them, however often it is called, although the process is
/// quiescent ("in a quiescent process they are freed before this returns"). They are freed
/// only after the idle thread pins again, fills its bag, or exits.
/// An offline frees what was released before it in batches: once `OFFLINE_PUMP_BATCH`
/// released groups await freeing, the next offline frees them all, so after any offline fewer
/// than a batch wait; `reclaim` frees the rest.
#[test]
fn offlines_free_released_groups_in_batches() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let mut pumped = 0;
    for i in 0..3 * OFFLINE_PUMP_BATCH {
        let g = child(&root, &format!("g{i}"));
        let before = tree.stats();
        g.offline().unwrap();
        let after = tree.stats();
        let waiting = after.released - after.freed;
        assert!(waiting < OFFLINE_PUMP_BATCH, "offline {i} left {waiting} released groups unfreed");
        if after.freed > before.freed {
            assert_eq!(waiting, 0, "a pump frees everything waiting (quiescent)");
            assert_eq!(before.released - before.freed, OFFLINE_PUMP_BATCH, "and only at a full batch");
            pumped += 1;
        }
        drop(g); // released: queued, not freed
    }
    assert_eq!(pumped, 2, "offlines 33 and 65 pumped");
    let s = tree.stats();
    assert_eq!(s.released - s.freed, OFFLINE_PUMP_BATCH);
    tree.reclaim();
    let s = tree.stats();
    assert_eq!((s.released, s.freed), (3 * OFFLINE_PUMP_BATCH, 3 * OFFLINE_PUMP_BATCH));
    log.check();
}

/// What waits for a batch is on the tree's released list, not in the private state of the
/// thread that released it: another thread's `reclaim` frees it while that thread is alive
/// and idle.
#[test]
fn groups_released_on_another_thread_are_freed_by_this_threads_reclaim() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let barrier = std::sync::Barrier::new(2);
    let ids = thread::scope(|s| {
        let worker = s.spawn(|| {
            let ids: Vec<_> = (0..OFFLINE_PUMP_BATCH / 2)
                .map(|i| {
                    let g = child(&root, &format!("w{i}"));
                    g.offline().unwrap();
                    g.id()
                })
                .collect();
            barrier.wait();
            barrier.wait(); // alive and idle until the main thread has reclaimed
            ids
        });
        barrier.wait();
        tree.reclaim();
        let s = tree.stats();
        assert_eq!(s.released, s.freed, "freed while the releasing thread is alive and idle");
        barrier.wait();
        worker.join().unwrap()
    });
    for id in ids {
        assert_eq!((log.released(id), log.freed(id)), (1, 1));
    }
    log.check();
}

#[test]
fn groups_handed_over_by_pin_on_an_idle_thread_are_freed_by_reclaim() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), "g");
    g.offline().unwrap();
    let id = g.id();
    drop(g);
    assert_eq!((log.released(id), log.freed(id)), (1, 0));
    let barrier = std::sync::Barrier::new(2);
    let freed_while_idle = thread::scope(|s| {
        s.spawn(|| {
            drop(tree.pin()); // a reader, done with its guard
            barrier.wait();
            barrier.wait(); // idle until the main thread has looked
        });
        barrier.wait();
        for _ in 0..8 {
            tree.reclaim();
        }
        let freed = log.freed(id);
        barrier.wait();
        freed
    });
    assert_eq!(freed_while_idle, 1, "a released group waits for an idle thread to pin again");
}

// ---------------------------------------------------------------------------------------------
// 3. TreeStats
// ---------------------------------------------------------------------------------------------

#[test]
fn tree_stats_count_each_transition() {
    let (tree, log) = test_tree();
    assert_eq!(lifecycle(tree.stats()), stats(1, 0, 0, 0));
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&root, "b");
    let c = child(&b, "c");
    assert_eq!(lifecycle(tree.stats()), stats(4, 0, 0, 0));
    assert_eq!(tree.stats().dying(), 0);

    c.offline().unwrap();
    a.offline().unwrap();
    assert_eq!(lifecycle(tree.stats()), stats(4, 2, 0, 0));
    assert_eq!(tree.stats().dying(), 2);
    // Refused operations count nothing.
    let _ = a.offline();
    let _ = root.offline();
    let _ = b.create_child(GroupSpec::new().max(COUNTER_MAX + 1));
    let _ = a.create_child(GroupSpec::new());
    assert_eq!(lifecycle(tree.stats()), stats(4, 2, 0, 0));

    drop(a);
    assert_eq!(lifecycle(tree.stats()), stats(4, 2, 1, 0));
    assert_eq!(tree.stats().dying(), 1);
    tree.reclaim();
    assert_eq!(lifecycle(tree.stats()), stats(4, 2, 1, 1));
    drop(c);
    b.offline().unwrap();
    drop(b);
    settle(&tree);
    assert_eq!(lifecycle(tree.stats()), stats(4, 3, 3, 3));
    assert_eq!(tree.stats().dying(), 0);
    assert!(format!("{tree:?}").contains("created"));
    drop(root);
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 4);
    log.check();
}

// ---------------------------------------------------------------------------------------------
// Probes of the epoch identity and the detached mode
// ---------------------------------------------------------------------------------------------

// A `Participant` or `Guard` borrows its tree, so a participant of a dropped tree cannot
// exist (and a new tree at the same address cannot accept it): see the `compile_fail`
// doctest on `chargetree::epoch::Participant`.

/// Detached mode (the tree handle is gone) reclaims from inside the last `put`. Garbage that
/// piled up while a reader held the epoch back is collected later, possibly inside `pin`
/// itself (crossbeam collects on a participant's first pin and every 128 pins, while the
/// thread-local participant cache is borrowed): a freed leaf then releases its parent from
/// inside the collector, which must neither re-enter the cache nor recurse without bound.
#[test]
fn detached_drops_while_a_reader_was_pinned_do_not_panic() {
    let pairs = scaled(400, 8);
    let (tree, log) = thread_tree();
    let root = tree.root();
    // Leaves whose parents are held only by them.
    let leaves: Vec<Group<ThreadCpus>> = (0..pairs)
        .map(|i| {
            let p = child(&root, &format!("p{i}"));
            child(&p, "leaf")
        })
        .collect();
    let extra: Vec<Group<ThreadCpus>> = (0..8).map(|i| child(&root, &format!("x{i}"))).collect();
    drop(root);
    let created = tree.stats().created;

    // A guard borrows its tree, so the reader holds the last `Arc` of the tree: when it
    // unpins and lets go, the tree is dropped on the reader's thread and the groups stay.
    let tree = Arc::new(tree);
    let pinned = Arc::new(std::sync::Barrier::new(2));
    let unpin = Arc::new(std::sync::Barrier::new(2));
    let reader = {
        let (tree, pinned, unpin) = (tree.clone(), pinned.clone(), unpin.clone());
        thread::spawn(move || {
            let guard = tree.pin();
            pinned.wait();
            unpin.wait();
            drop(guard);
            drop(tree); // the last handle of the tree: it goes, the groups stay
        })
    };
    pinned.wait();
    drop(tree);
    drop(leaves); // released while the reader blocks the epoch: garbage accumulates
    unpin.wait();
    reader.join().unwrap();

    let mut panics = 0;
    for x in extra {
        // Each on a fresh thread: a participant's first pin collects.
        if thread::spawn(move || drop(x)).join().is_err() {
            panics += 1;
        }
    }
    assert_eq!(panics, 0, "dropping a handle of a detached tree panicked");
    reclaim_orphans();
    assert_eq!(log.total(Ev::Freed), created, "every group is freed");
    log.check();
}
