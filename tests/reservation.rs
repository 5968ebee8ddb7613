//! RAII reservations (`chargetree::Reservation`): every operation through the group's
//! engine and stock, `Drop` gives back what is held.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeFailure, Group, GroupSpec, Reclaimer, Tree, TreeConfig};
use chargetree::{Reservation, ShrinkError};

fn on<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: the tests here run on one thread, on CPU 0.
    unsafe { TestCpus::run_on(0, f) }
}

fn tree() -> Tree<TestCpus> {
    Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)))
}

/// Usage without the stock's cached units.
fn used(g: &Group<TestCpus>) -> usize {
    g.counter().usage() - g.cached_units()
}

#[test]
fn grow_shrink_and_drop_move_exactly_what_is_held() {
    let tree = tree();
    let g = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
    on(|| {
        let mut r = g.reservation();
        let _ = r.try_grow(30).unwrap();
        assert_eq!((r.size(), used(&g)), (30, 30));
        assert!(g.cached_units() > 0, "the growth went through the stock");
        r.shrink(10);
        assert_eq!((r.size(), used(&g)), (20, 20));
        let _ = r.try_resize(55).unwrap();
        assert_eq!((r.size(), used(&g)), (55, 55));
        let _ = r.try_resize(5).unwrap();
        assert_eq!((r.size(), used(&g)), (5, 5));
        drop(r);
        assert_eq!(used(&g), 0, "the drop gave everything back");
    });
}

#[test]
fn a_refused_growth_changes_nothing_and_names_the_group() {
    let tree = tree();
    let parent = tree.root().create_child(GroupSpec::new().max(50)).unwrap();
    let g = parent.create_child(GroupSpec::new().max(100)).unwrap();
    on(|| {
        let mut r = Reservation::new(&g);
        let _ = r.try_grow(40).unwrap();
        match r.try_grow(20) {
            Err(ChargeFailure::Limit { group, .. }) => assert_eq!(group, parent.id(), "the parent refused"),
            other => panic!("{other:?}"),
        }
        assert_eq!((r.size(), used(&g)), (40, 40));
        assert_eq!(r.try_shrink(41), Err(ShrinkError { requested: 41, held: 40 }));
        assert_eq!(r.size(), 40, "a refused shrink changes nothing");
        assert_eq!(r.free(), 40);
        assert_eq!(used(&g), 0);
    });
}

#[test]
fn a_forced_growth_is_counted_and_raises_max() {
    let tree = tree();
    let g = tree.root().create_child(GroupSpec::new().max(10)).unwrap();
    on(|| {
        let mut r = g.reservation();
        let c = r.grow(15);
        assert!(c.forced);
        assert_eq!((r.size(), used(&g)), (15, 15), "the size never desynchronises from the group");
        assert_eq!(tree.stats().forced, 1);
        assert_eq!(g.events_local().max, 1);
        let c = r.resize(20);
        assert!(c.forced);
        assert_eq!((r.size(), used(&g)), (20, 20));
    });
}

#[test]
fn split_take_and_merge_keep_the_total() {
    let tree = tree();
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    on(|| {
        let mut a = g.reservation();
        let _ = a.try_grow(100).unwrap();
        let mut b = a.split(30);
        assert_eq!((a.size(), b.size(), used(&g)), (70, 30, 100));
        let c = b.take();
        assert_eq!((b.size(), c.size()), (0, 30));
        a.merge(c);
        assert_eq!((a.size(), used(&g)), (100, 100));
        drop(b);
        assert_eq!(used(&g), 100, "dropping an empty reservation gives nothing back");
        drop(a);
        assert_eq!(used(&g), 0);
    });
}

#[test]
#[should_panic(expected = "cannot split 11 off a reservation of 10")]
fn splitting_more_than_is_held_panics() {
    let tree = tree();
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    let mut r = on(|| {
        let mut r = g.reservation();
        let _ = r.try_grow(10).unwrap();
        r
    });
    let _ = r.split(11);
}

/// A reservation's growth goes through the engine: the reclaimer runs at the limit.
#[test]
fn growth_runs_the_reclaim_hook() {
    struct Free(Arc<AtomicUsize>);
    impl Reclaimer<TestCpus> for Free {
        fn reclaim(&self, group: &Group<TestCpus>, amount: usize) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed);
            let _ = (group, amount);
            0
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let tree: Tree<TestCpus> =
        Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)).reclaimer(Free(calls.clone())));
    let g = tree.root().create_child(GroupSpec::new().max(10).high(5)).unwrap();
    on(|| {
        let mut r = g.reservation();
        let c = r.try_grow(8).unwrap();
        assert!(c.over_high.is_some(), "high is reported");
        assert!(r.try_grow(8).is_err());
        assert!(calls.load(Ordering::Relaxed) > 0, "the reclaimer was asked");
    });
}
