//! Engine tests, chapter 4: `high` and the reclaim walk. Over-`high` reports name the lowest
//! over-`high` group, stock hits are not checked against `high`, every over-`high` level
//! raises its own event, and `Group::walk_reclaim`'s protection policy (the kernel
//! selftest's `min` tree, the second pass for `low`, the target's own protection ignored).
//!
//! Black-box tests of the charge engine and the per-CPU stock (Linux's `try_charge_memcg()`
//! and `memcg_stock_pcp` as `src/engine/` and `src/stock/units.rs` implement them), through
//! the public API only, in chapters: `engine_charge_path.rs` (the charge path),
//! `engine_options.rs` (charge options, events of forced charges, configuration bounds),
//! `engine_stock.rs` (the stock's entries, references, bound and drains),
//! `engine_high_and_walk_reclaim.rs` (over-`high` reports, `Group::walk_reclaim`),
//! `engine_robustness.rs` (a panicking reclaimer, two threads at the limit) and
//! `engine_model.rs` (the property test); helpers in `support/engine.rs` and `support/mod.rs`.
//!
//! Trees are built with `TestCpus` (each thread charges "on" whatever CPU `TestCpus::run_on`
//! names; outside `run_on` it is on no CPU and bypasses the stocks) unless a test says
//! otherwise, with a logging [`Observer`] so that every test can end by checking that each
//! group was released and freed exactly once.
//!
//! Under miri the loops and the property test shrink; the chapters pass with
//! `MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance"` (see `ci/miri.sh` for why
//! crossbeam-epoch needs both).
//!
//! [`Observer`]: chargetree::group::Observer

mod support;

use support::engine::*;
use support::*;

use std::collections::HashSet;

use chargetree::cpu::TestCpus;
use chargetree::group::{Charged, Group, GroupId, GroupSpec, ReclaimWalk, Tree, TreeConfig};

/// Linux's `done_restock` check of `high`, library-shaped: a charge that walked the counters
/// and left a group above its `high` succeeds and names the lowest such group with its usage,
/// `high` and excess, raising `Event::High` on every group of the path that is over (Linux's
/// `reclaim_high` walks all of them).
#[test]
fn over_high_is_reported_with_the_lowest_over_high_group() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, named("p").high(100));
    let g = child(&p, named("g").high(50));
    let c = on(0, || g.try_charge(60)).unwrap();
    assert_eq!(charged(c), (Some((g.id(), 64, 50)), false));
    assert_eq!(c.over_high.unwrap().excess(), 14, "the batch counts: usage includes the cached units");
    assert_eq!((g.events_local().high, p.events_local().high, p.events().high), (1, 0, 1));

    // Only the ancestor is over: it is named.
    let q = child(&root, named("q").high(30));
    let h = child(&q, named("h"));
    let c = on(1, || h.try_charge(20)).unwrap();
    assert_eq!(c.over_high.map(high), Some((q.id(), 64, 30)));
    assert_eq!((q.events_local().high, h.events_local().high), (1, 0));

    // Both: the lowest is named, both raise the event.
    let c = on(1, || g.try_charge(40)).unwrap();
    assert_eq!(c.over_high.map(|o| o.group), Some(g.id()));
    assert_eq!((g.events_local().high, p.events_local().high), (2, 1));

    on(0, || g.uncharge(100));
    on(1, || h.uncharge(20));
    assert_all_zero(&tree);
    drop((p, g, q, h, root));
    finish(tree, log);
}

/// Stock hits are not checked against `high` (documented): the units were counted when the
/// batch was charged.
#[test]
fn stock_hits_are_not_checked_against_high() {
    let (tree, log) = test_tree();
    let g = child(&tree.root(), named("g").high(10));
    assert!(on(0, || g.try_charge(20)).unwrap().over_high.is_some());
    assert_eq!(g.events_local().high, 1);
    assert_eq!(on(0, || g.try_charge(30)), Ok(Charged::default()), "a hit: not reported");
    assert_eq!((uc(&g), g.events_local().high), ((64, 14), 1));
    on(0, || g.uncharge(50));
    assert_all_zero(&tree);
    drop(g);
    finish(tree, log);
}

/// The kernel selftest tree (`test_memcg_min`): the reclaim target `t` has a child `b` with
/// min 50 and children c, d, e, f declaring 75, 25, 0, 500 with usage 50, 50, 50, 0. `b`
/// gets its declared 50 (a child of the target); its overcommitted children share it in
/// proportion to their protected usage (c: 50·50/75 = 33, d: 25·50/75 = 16), e gets none.
/// None is within its effective min at first, so all are visited. Reclaiming each leaf down
/// to its effective min until nothing more comes converges, as in the selftest, to b ≈ 50
/// split between c and d with c above d, e and f empty; then b, c and d are skipped.
#[test]
fn walk_reclaim_kernel_selftest_min_tree() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let t = child(&root, named("t"));
    let b = child(&t, named("b").min(50));
    let leaves: Vec<Group<TestCpus>> = [("c", 75, 50), ("d", 25, 50), ("e", 0, 50), ("f", 500, 0)]
        .into_iter()
        .map(|(name, min, usage)| {
            let g = child(&b, named(name).min(min));
            g.counter().try_charge(usage).unwrap();
            g
        })
        .collect();
    let [c, d, e, f] = &leaves[..] else { unreachable!() };

    // A visitor that frees nothing: the effective values of one walk.
    let mut visited = Vec::new();
    let walk = t.walk_reclaim(1000, false, |g, _| {
        visited.push(g.id());
        0
    });
    assert_eq!(walked(walk), (0, 5, 0, 0, false));
    let want: HashSet<GroupId> = [&t, &b, c, d, e].iter().map(|g| g.id()).collect();
    assert_eq!(visited.iter().copied().collect::<HashSet<_>>(), want, "f has no usage");
    assert_eq!(visited[0], t.id(), "pre-order from the target");
    let emin = |g: &Group<TestCpus>| g.counter().effective_min();
    assert_eq!((emin(&b), emin(c), emin(d), emin(e)), (50, 33, 16, 0));

    // Reclaim each leaf down to its effective min until a walk frees nothing.
    let ids: HashSet<GroupId> = leaves.iter().map(|g| g.id()).collect();
    let mut last = ReclaimWalk::default();
    for round in 0.. {
        assert!(round < 200, "converges");
        last = t.walk_reclaim(1000, false, |g, wanted| {
            if !ids.contains(&g.id()) {
                return 0;
            }
            let free = (g.counter().usage() - g.counter().effective_min()).min(wanted);
            g.uncharge(free);
            free
        });
        if last.reclaimed == 0 {
            break;
        }
    }
    let (uc_, ud) = (c.counter().usage(), d.counter().usage());
    assert!((45..=50).contains(&b.counter().usage()), "b ≈ its min: c {uc_}, d {ud}");
    assert!(uc_ > ud && ud > 0, "c {uc_}, d {ud}");
    assert_eq!((e.counter().usage(), f.counter().usage()), (0, 0));
    assert_eq!((last.visited, last.skipped_min, last.skipped_low), (1, 3, 0), "only t is left: {last:?}");
    assert_eq!(b.events().low, 0);

    c.uncharge(uc_);
    d.uncharge(ud);
    assert_all_zero(&tree);
    drop((leaves, t, b, root));
    finish(tree, log);
}

/// Linux's `shrink_node_memcgs()` (`mm/vmscan.c`): a group within its effective `low` is
/// skipped on the first pass and reclaimed on a second pass, raising `Event::Low`, only when
/// the first pass fell short; groups within their effective `min` are skipped on both passes.
#[test]
fn walk_reclaim_low_protection_needs_a_second_pass() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let t = child(&root, named("t"));
    let a = child(&t, named("a").low(45));
    // Created last, so visited first (children are walked newest first).
    let u = child(&a, named("u"));
    let l = child(&a, named("l").low(100));
    l.counter().try_charge(40).unwrap();
    u.counter().try_charge(30).unwrap();
    let leaves: HashSet<GroupId> = [l.id(), u.id()].into_iter().collect();
    let mut log_visits = Vec::new();
    let mut visitor = |g: &Group<TestCpus>, wanted: usize| {
        log_visits.push(g.id());
        if !leaves.contains(&g.id()) {
            return 0;
        }
        let free = g.counter().usage().min(wanted);
        g.uncharge(free);
        free
    };

    // Enough unprotected memory: l is skipped and keeps its low event count at zero.
    let walk = t.walk_reclaim(20, false, &mut visitor);
    assert_eq!(walked(walk), (20, 3, 0, 1, false));
    assert_eq!((l.counter().usage(), u.counter().usage()), (40, 10));
    assert_eq!((l.events_local().low, t.events().low), (0, 0));
    assert_eq!((l.counter().effective_low(), a.counter().effective_low()), (40, 45));

    // Not enough: a second pass takes from l and raises its low event. Once the first pass
    // emptied u, a's usage (40) fell within its own low (45): the second pass finds a
    // low-protected too, reclaims from it (nothing local) and raises its low event, as
    // Linux does.
    let walk = t.walk_reclaim(100, false, &mut visitor);
    assert_eq!((walk.reclaimed, walk.skipped_low, walk.low_pass), (50, 1, true));
    assert_eq!((l.counter().usage(), u.counter().usage()), (0, 0));
    assert_eq!((l.events_local().low, a.events_local().low, u.events_local().low), (1, 1, 0));
    assert_eq!((a.events().low, t.events().low, t.events_local().low), (2, 2, 0));
    let second: Vec<GroupId> = log_visits[3..].to_vec();
    let pos = |id| second.iter().position(|&x| x == id);
    assert_eq!(second.iter().filter(|&&x| x == l.id()).count(), 1, "{second:?}");
    assert!(pos(u.id()).unwrap() < pos(l.id()).unwrap(), "l only after the unprotected u");

    // A group within its effective min is never visited, even when the walk falls short.
    let m = child(&a, named("m").min(100));
    a.counter().set_min(100).unwrap();
    m.counter().try_charge(10).unwrap();
    l.counter().try_charge(10).unwrap();
    let mut visits = Vec::new();
    let walk = t.walk_reclaim(100, false, |g, _| {
        visits.push(g.id());
        0
    });
    assert!(walk.low_pass && walk.skipped_min >= 1, "{walk:?}");
    assert!(!visits.contains(&m.id()), "m is within its effective min");
    assert!(visits.contains(&l.id()), "l is only low-protected");
    assert_eq!((m.events_local().low, l.events_local().low, a.events_local().low), (0, 2, 1));

    m.uncharge(10);
    l.uncharge(10);
    assert_all_zero(&tree);
    drop((t, a, l, u, m, root));
    finish(tree, log);
}

/// As in Linux's reclaim: the reclaim target's own protection is ignored (it does not shield
/// itself), while the same group is protected from a walk rooted above it.
#[test]
fn walk_reclaim_ignores_the_targets_own_protection() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let t = child(&root, named("t"));
    let g = child(&t, named("g").min(1000).low(1000));
    g.counter().try_charge(40).unwrap();
    let gid = g.id();
    let free_all = |x: &Group<TestCpus>, wanted: usize| {
        if x.id() != gid {
            return 0;
        }
        let free = x.counter().usage().min(wanted);
        x.uncharge(free);
        free
    };
    let walk = t.walk_reclaim(10, false, free_all);
    assert_eq!((walk.reclaimed, walk.skipped_min), (0, 1), "g is protected below t: {walk:?}");
    let walk = g.walk_reclaim(10, false, free_all);
    assert_eq!(walked(walk), (10, 1, 0, 0, false));
    assert_eq!((g.counter().usage(), g.events_local().low), (30, 0));
    g.uncharge(30);
    assert_all_zero(&tree);
    drop((t, g, root));
    finish(tree, log);
}

/// The trust review's case: parent `high` 10, child `high` 20, the child charges 30 (stocks
/// off, so the counters see exactly 30): both are over, both raise `high`, once each.
#[test]
fn every_over_high_level_raises_its_own_high_event() {
    let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)).batch(0));
    let parent = tree.root().create_child(GroupSpec::new().high(10)).unwrap();
    let child = parent.create_child(GroupSpec::new().high(20)).unwrap();
    let c = child.try_charge(30).unwrap();
    assert_eq!(c.over_high.map(high), Some((child.id(), 30, 20)));
    assert_eq!((child.events_local().high, parent.events_local().high), (1, 1));
    assert_eq!((parent.events().high, tree.root().events().high), (2, 2));
    child.uncharge(30);
}
