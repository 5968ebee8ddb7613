//! Group tests, chapter 5: events (local on the group, hierarchical up to the root, from
//! several threads) and topology walks (children, siblings, pre-order, released groups
//! skipped), with the walks' races: dropping the tree while another thread creates
//! children, and readers that see a group offline.
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

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use chargetree::cpu::TestCpus;
use chargetree::group::{Event, EventCounts, Group, GroupSpec, reclaim_orphans};

// ---------------------------------------------------------------------------------------------
// 7. Events
// ---------------------------------------------------------------------------------------------

#[test]
fn events_are_local_on_the_group_and_hierarchical_up_to_the_root() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&a, "b");
    let leaf = child(&b, "leaf");
    let sibling = child(&a, "sibling");

    leaf.raise_event(Event::Max);
    leaf.raise_event(Event::Max);
    leaf.raise_event(Event::Oom);
    b.raise_event(Event::High);

    let ec = |low, high, max, oom| (low, high, max, oom);
    let t = |e: EventCounts| (e.low, e.high, e.max, e.oom);
    assert_eq!(t(leaf.events_local()), ec(0, 0, 2, 1));
    assert_eq!(t(leaf.events()), ec(0, 0, 2, 1));
    assert_eq!(t(b.events_local()), ec(0, 1, 0, 0));
    assert_eq!(t(b.events()), ec(0, 1, 2, 1));
    for g in [&a, &root] {
        assert_eq!(t(g.events_local()), ec(0, 0, 0, 0), "{:?}", g.name());
        assert_eq!(t(g.events()), ec(0, 1, 2, 1), "{:?}", g.name());
    }
    assert_eq!(t(sibling.events()), ec(0, 0, 0, 0));

    root.raise_event(Event::Low);
    assert_eq!(t(root.events_local()), ec(1, 0, 0, 0));
    assert_eq!(t(root.events()), ec(1, 1, 2, 1));
    assert_eq!(t(a.events()), ec(0, 1, 2, 1), "not propagated downwards");
    assert_eq!(root.events().get(Event::Max), 2);
    let counts: Vec<usize> = Event::ALL.iter().map(|&e| root.events().get(e)).collect();
    assert_eq!(counts, [1, 1, 2, 1], "Event::ALL is low, high, max, oom");
    assert_eq!(root.events().to_string(), "low 1 high 1 max 2 oom 1");
    // Offline groups still count.
    leaf.offline().unwrap();
    leaf.raise_event(Event::Oom);
    assert_eq!((leaf.events_local().oom, root.events().oom), (2, 2));
}

#[test]
fn events_from_threads_add_up() {
    let (tree, _log) = thread_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let leaves: Vec<_> = (0..4).map(|i| child(&a, &format!("l{i}"))).collect();
    let n = scaled(1000, 10);
    thread::scope(|s| {
        for l in &leaves {
            s.spawn(move || {
                for _ in 0..n {
                    l.raise_event(Event::High);
                }
            });
        }
    });
    for l in &leaves {
        assert_eq!((l.events_local().high, l.events().high), (n, n));
    }
    assert_eq!((a.events_local().high, a.events().high, root.events().high), (0, 4 * n, 4 * n));
}

// ---------------------------------------------------------------------------------------------
// 8. Topology walks
// ---------------------------------------------------------------------------------------------

#[test]
fn children_and_sibling_walks() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let b = child(&root, "b");
    let c = child(&root, "c");
    let _a1 = child(&a, "a1");
    assert_eq!(names(&root.children()), ["c", "b", "a"], "newest first");
    assert_eq!(names(&a.children()), ["a1"]);
    assert!(b.children().is_empty());
    assert_eq!(root.first_child().unwrap(), c);
    assert_eq!(c.next_sibling().unwrap(), b);
    assert_eq!(b.next_sibling().unwrap(), a);
    assert!(a.next_sibling().is_none());
    assert!(root.next_sibling().is_none());
    assert!(b.first_child().is_none());
    // Offline groups that are still referenced are still walked.
    b.offline().unwrap();
    assert_eq!(names(&root.children()), ["c", "b", "a"]);
    assert_eq!(c.next_sibling().unwrap(), b);
}

#[test]
fn next_pre_walks_a_subtree_in_pre_order_and_stays_inside() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let a1 = child(&a, "a1");
    let a11 = child(&a1, "a11");
    let _a2 = child(&a, "a2");
    let b = child(&root, "b");
    let _b1 = child(&b, "b1");

    let walk = |start: &Group<TestCpus>| {
        let mut out = vec![start.clone()];
        while let Some(n) = out.last().unwrap().next_pre(start) {
            out.push(n);
            assert!(out.len() < 100, "the walk does not terminate");
        }
        names(&out)
    };
    assert_eq!(walk(&a), ["a", "a2", "a1", "a11"]);
    assert_eq!(walk(&b), ["b", "b1"]);
    assert_eq!(walk(&a1), ["a1", "a11"]);
    assert_eq!(walk(&root), ["root", "b", "b1", "a", "a2", "a1", "a11"]);
    assert_eq!(names(&tree.groups()), ["root", "b", "b1", "a", "a2", "a1", "a11"]);
    // A leaf's walk is itself only.
    let b1 = b.first_child().unwrap();
    assert!(b1.next_pre(&b1).is_none());
    // Continuing from inside a subtree never leaves it.
    assert!(a11.next_pre(&a).is_none());
    assert!(a11.next_pre(&a1).is_none());
    assert!(a11.next_pre(&root).is_none(), "a11 is the last group in pre-order");
    assert_eq!(b1.next_pre(&root).unwrap(), a, "from b's subtree on to its sibling");
    assert!(b1.next_pre(&b).is_none());
}

#[test]
fn released_groups_are_skipped_by_walks_until_freed() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let a = child(&root, "a");
    let x = child(&root, "x");
    let x1 = child(&x, "x1");
    let y = child(&root, "y");
    let c = child(&root, "c");
    let (x1id, yid) = (x1.id(), y.id());
    x1.offline().unwrap();
    y.offline().unwrap();
    assert_eq!(names(&root.children()), ["c", "y", "x", "a"], "offline but referenced: walked");
    assert_eq!(names(&x.children()), ["x1"]);

    // A reader pinned on this thread holds every free back.
    let guard = tree.pin();
    drop(x1);
    drop(y);
    assert_eq!((log.released(x1id), log.released(yid)), (1, 1));
    tree.reclaim();
    assert_eq!(lifecycle(tree.stats()), stats(6, 2, 2, 0), "released, not freed: still linked");

    assert_eq!(names(&root.children()), ["c", "x", "a"], "a released group is skipped");
    assert_eq!(c.next_sibling().unwrap(), x, "next_sibling skips it");
    assert!(x.children().is_empty() && x.first_child().is_none());
    assert_eq!(names(&tree.groups()), ["root", "c", "x", "a"]);
    let mut walked = Vec::new();
    let mut cur = Some(root.clone());
    while let Some(g) = cur {
        cur = g.next_pre(&root);
        walked.push(g);
    }
    assert_eq!(names(&walked), ["root", "c", "x", "a"]);
    assert!(x.next_pre(&x).is_none());

    drop(guard);
    tree.reclaim();
    assert_eq!((log.freed(x1id), log.freed(yid)), (1, 1));
    assert_eq!(names(&root.children()), ["c", "x", "a"]);
    assert_eq!(c.next_sibling().unwrap(), x);
    drop(a);
    log.check();
}

/// Dropping the tree takes every group offline. A thread that still holds a handle to an
/// online group may be creating children of it meanwhile: once the tree is dropped, that
/// group must be offline (no more children), and every group must be freed once the
/// handles are gone.
/// (Found by this test: `Tree::drop` used to snapshot the groups while creations went on,
/// leaving late children, their parent, the root and the tree's bookkeeping online and
/// leaked. The tree now refuses creations under the topology flag before the snapshot.)
#[test]
fn dropping_the_tree_while_another_thread_creates_children() {
    let rounds = scaled(20, 2);
    for round in 0..rounds {
        let (tree, log) = thread_tree();
        let g = child(&tree.root(), "g");
        let made = AtomicUsize::new(0);
        let dropped = AtomicBool::new(false);
        let after_drop = thread::scope(|s| {
            let creator = s.spawn(|| {
                let mut after_drop = 0;
                loop {
                    // Only a creation that *starts* after the drop finished must fail.
                    let started_after_drop = dropped.load(Ordering::Acquire);
                    let Ok(c) = g.create_child(GroupSpec::new()) else { break };
                    drop(c); // still online: its membership keeps it linked
                    made.fetch_add(1, Ordering::Release);
                    if started_after_drop {
                        after_drop += 1;
                        if after_drop > 100 {
                            break;
                        }
                    }
                }
                after_drop
            });
            while made.load(Ordering::Acquire) < 8 {
                thread::yield_now();
            }
            drop(tree);
            dropped.store(true, Ordering::Release);
            creator.join().unwrap()
        });
        assert!(
            !g.is_online() && after_drop == 0,
            "round {round}: after the tree was dropped, `g` is online ({}) and took {after_drop} \
             more children",
            g.is_online()
        );
        let created = 2 + made.load(Ordering::Relaxed); // the root, g and its children
        drop(g);
        reclaim_orphans();
        assert_eq!(log.total(Ev::Freed), created, "round {round}: every group is freed");
        assert_eq!(Arc::strong_count(&log), 1);
        log.check();
    }
}

/// `is_online` documents: "a reader that sees OFFLINE also sees the zeroed protection".
/// A reader that spins until the group reads offline, then reads `min` and `low`.
///
/// `Node::offline` stores OFFLINE (Release) under the topology flag and only *then* calls
/// `set_min(0)` / `set_low(0)`, so the Release store publishes nothing about them; in about
/// a third of the rounds the reader sees OFFLINE with `min = low = 100`.
#[test]
fn a_reader_that_sees_offline_sees_zeroed_protection() {
    let rounds = scaled(200, 5);
    let (tree, _log) = thread_tree();
    let root = tree.root();
    let mut stale = 0;
    for _ in 0..rounds {
        let g = root.create_child(GroupSpec::new().min(100).low(100)).unwrap();
        let go = AtomicBool::new(false);
        thread::scope(|s| {
            let reader = s.spawn(|| {
                go.store(true, Ordering::Release);
                while g.is_online() {
                    core::hint::spin_loop();
                }
                (g.counter().min(), g.counter().low())
            });
            while !go.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            g.offline().unwrap();
            if reader.join().unwrap() != (0, 0) {
                stale += 1;
            }
        });
    }
    assert_eq!(stale, 0, "{stale} of {rounds} readers saw OFFLINE with the protection still set");
}
