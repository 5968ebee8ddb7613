//! Loom models of the counter's cross-thread protocols (module docs of `counter`):
//! L (try_charge vs set_max) and the hierarchical walks plus protocol P on a shared ancestor.

use loom::sync::Arc;
use loom::thread;

use super::Forest;

/// Protocol L: once `set_max(limit)` has returned `Ok`, no `try_charge` that runs
/// concurrently may succeed with usage above `limit`. Here usage starts at 5 and the limit
/// goes from unlimited to 6 while another thread charges 3 through a child: both cannot
/// succeed (5 + 3 > 6), whatever the interleaving.
#[test]
fn try_charge_vs_set_max() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let child = forest.add(Some(root));
        forest.get(child).try_charge(5).unwrap();
        let forest = Arc::new(forest);

        let f = forest.clone();
        let setter = thread::spawn(move || f.get(root).set_max(6).is_ok());
        let charged = forest.get(child).try_charge(3).is_ok();
        let installed = setter.join().unwrap();

        assert!(!(installed && charged), "a charge succeeded above a limit that was installed");
        let usage = forest.get(root).usage();
        assert_eq!(usage, if charged { 8 } else { 5 });
        assert_eq!(forest.get(child).usage(), usage);
        if installed {
            assert_eq!(forest.get(root).max(), 6);
            assert!(usage <= 6);
        }
    });
}

/// Two children of one root charge and uncharge concurrently, with protection declared so
/// protocol P runs on every step: at the end every usage and every protected-usage sum is
/// back to exactly zero.
#[test]
fn charge_uncharge_on_shared_ancestor() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let a = forest.add(Some(root));
        let b = forest.add(Some(root));
        forest.get(a).set_min(2).unwrap();
        forest.get(b).set_low(1).unwrap();
        let forest = Arc::new(forest);

        let f = forest.clone();
        let t = thread::spawn(move || {
            f.get(a).try_charge(3).unwrap();
            f.get(a).uncharge(3);
        });
        forest.get(b).charge(2).unwrap();
        forest.get(b).uncharge(2);
        t.join().unwrap();

        for i in [root, a, b] {
            let c = forest.get(i);
            assert_eq!(c.usage(), 0);
            assert_eq!((c.min_usage(), c.low_usage()), (0, 0));
            assert_eq!((c.children_min_usage(), c.children_low_usage()), (0, 0));
            assert_eq!(c.underflows(), 0);
        }
        assert!(forest.get(root).peak() <= 5);
    });
}

/// Protocol P at quiescence: two threads move one node's usage concurrently; afterwards
/// `min_usage` equals `min(usage, min)` and the parent's sum equals it (not merely "close").
#[test]
fn protected_usage_exact_at_quiescence() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let a = forest.add(Some(root));
        forest.get(a).set_min(4).unwrap();
        let forest = Arc::new(forest);

        let f = forest.clone();
        let t = thread::spawn(move || f.get(a).charge(3).unwrap());
        forest.get(a).charge(2).unwrap();
        t.join().unwrap();

        let c = forest.get(a);
        assert_eq!(c.usage(), 5);
        assert_eq!(c.min_usage(), 4);
        assert_eq!(forest.get(root).children_min_usage(), 4);
    });
}

/// Protocol P's fast path: a node with no protection skips the bookkeeping after one load of
/// its "armed" flag. `set_min` arming the node races a charge that may have seen it unarmed:
/// either the charger sees the flag, or the arming thread's refresh sees the charge, so the
/// sums are exact at quiescence.
#[test]
fn arming_protection_vs_concurrent_charge() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let a = forest.add(Some(root));
        let forest = Arc::new(forest);

        let f = forest.clone();
        let t = thread::spawn(move || f.get(a).set_min(2).unwrap());
        forest.get(a).charge(3).unwrap();
        t.join().unwrap();

        assert_eq!(forest.get(a).min_usage(), 2);
        assert_eq!(forest.get(root).children_min_usage(), 2);
        forest.get(a).uncharge(3);
        assert_eq!(forest.get(a).min_usage(), 0);
        assert_eq!(forest.get(root).children_min_usage(), 0);
    });
}
