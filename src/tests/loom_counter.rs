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

/// Two concurrent over-uncharges of one leaf, each after a charge of its own, next to a
/// sibling holding units under the same parent: whatever the interleaving, no value goes
/// below zero, the parent equals its children, nothing is clamped above the leaf, and the
/// leaf forgave exactly what was asked beyond what it gave up.
#[test]
fn two_clamping_uncharges_on_a_shared_parent() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let sibling = forest.add(Some(root));
        let leaf = forest.add(Some(root));
        forest.get(sibling).try_charge(3).unwrap();
        let forest = Arc::new(forest);

        let f = forest.clone();
        let t = thread::spawn(move || {
            f.get(leaf).try_charge(2).unwrap();
            let _ = f.get(leaf).try_uncharge(4);
        });
        forest.get(leaf).try_charge(1).unwrap();
        let _ = forest.get(leaf).try_uncharge(3);
        t.join().unwrap();

        let (r, s, l) = (forest.get(root), forest.get(sibling), forest.get(leaf));
        assert_eq!(s.usage(), 3);
        assert_eq!(r.usage(), s.usage() + l.usage(), "parent = Σ children");
        assert_eq!((r.underflows(), s.underflows()), (0, 0));
        // Charged 3, asked 7: forgiven = asked − (charged − what is left).
        assert_eq!(l.forgiven(), 7 - (3 - l.usage()));
        assert!(r.peak() <= 6);
    });
}

/// A charge refused in its commit pass takes its speculative add back while an
/// over-uncharge of the same leaf may already have taken those units: the counts still
/// balance and the refused charge leaves nothing behind.
#[test]
fn refused_charge_vs_over_uncharge() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let leaf = forest.add(Some(root));
        forest.get(leaf).set_max(3).unwrap();
        forest.get(leaf).try_charge(1).unwrap();
        let forest = Arc::new(forest);

        let f = forest.clone();
        // Passes the pre-check at usage 1 (1 + 2 <= 3); refused in the commit pass if the
        // forced unit below lands first.
        let t = thread::spawn(move || f.get(leaf).try_charge(2).is_ok());
        forest.get(leaf).charge(1).unwrap();
        let _ = forest.get(leaf).try_uncharge(5);
        let charged = t.join().unwrap();

        let (r, l) = (forest.get(root), forest.get(leaf));
        assert_eq!(r.usage(), l.usage(), "parent = child");
        assert_eq!(r.underflows(), 0);
        // Committed: 1 + 1 (+ 2 if the charge succeeded); asked 5 back.
        let committed = 2 + if charged { 2 } else { 0 };
        assert_eq!(l.forgiven(), 5 - (committed - l.usage()));
        assert!(l.peak() <= 3 || charged, "a refused charge raised no peak above max");
    });
}

/// Item 8 of the trust review: a charge racing `reset_peak` is never lost from the new
/// window, although the old watermark was high enough that the charge did not raise it.
#[test]
fn peak_reset_vs_charge() {
    loom::model(|| {
        let mut forest = Forest::new();
        let c = forest.add(None);
        forest.get(c).try_charge(2).unwrap();
        forest.get(c).uncharge(2);
        let forest = Arc::new(forest);

        let f = forest.clone();
        let t = thread::spawn(move || f.get(c).reset_peak());
        forest.get(c).try_charge(2).unwrap();
        t.join().unwrap();

        let c = forest.get(c);
        assert_eq!(c.usage(), 2);
        assert!(c.peak() >= 2 && c.local_peak() >= 2, "peak {} below usage 2", c.peak());
    });
}

/// Item 4: a refused charge's speculative add at a shared parent never reaches the peak,
/// while a committed charge raises it with its own value.
#[test]
fn refused_charge_never_raises_a_peak_above_max() {
    loom::model(|| {
        let mut forest = Forest::new();
        let root = forest.add(None);
        let a = forest.add(Some(root));
        let b = forest.add(Some(root));
        forest.get(root).set_max(4).unwrap();
        let forest = Arc::new(forest);

        let f = forest.clone();
        let t = thread::spawn(move || f.get(a).try_charge(2).is_ok());
        let b_ok = forest.get(b).try_charge(3).is_ok();
        let a_ok = t.join().unwrap();

        assert!(!(a_ok && b_ok), "2 + 3 > 4");
        let r = forest.get(root);
        assert!(r.peak() <= 4, "peak {} above max 4", r.peak());
        assert_eq!(r.usage(), if a_ok { 2 } else { 0 } + if b_ok { 3 } else { 0 });
        assert!(r.peak() >= r.usage());
    });
}
