//! Loom models of protocol S (the stock's owner vs a remote drainer) and of the stock's
//! references. Under loom the stock runs in symmetric mode (both sides `fence(SeqCst)`),
//! which is the mode loom can check (see `stock/barrier.rs`).

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use super::on;
use crate::cpu::TestCpus;
use crate::group::{Group, GroupId, GroupSpec, Observer, Tree, TreeConfig};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

/// A tree with 2 impersonated CPUs, 2 stock entries per CPU and a batch of 4.
fn small_tree(observer: impl Observer + 'static) -> Tree<TestCpus, 2> {
    Tree::with_config(TreeConfig::<_, 2>::with_cpus_and_slots(TestCpus::new(2)).batch(4).observer(observer))
}

struct Nothing;
impl Observer for Nothing {}

/// Consume (owner on CPU 0) vs a remote drain (another thread): no unit is lost or counted
/// twice. The owner's entry starts with 3 cached units; the owner takes 1 and gives 1 back
/// while the drainer steals the entry. At the end the counter holds exactly what the
/// objects hold plus what is still cached.
#[test]
fn consume_vs_remote_drain() {
    model(|| {
        let tree = Arc::new(small_tree(Nothing));
        let g: Group<TestCpus, 2> = tree.root().create_child(GroupSpec::new()).unwrap();
        // Charge 1 on CPU 0: a batch of 4 goes to the counters, 3 stay cached.
        let _ = on(0, || g.try_charge(1).unwrap());
        assert_eq!((g.counter().usage(), g.cached_units()), (4, 3));

        let (t2, g2) = (tree.clone(), g.clone());
        let drainer = thread::spawn(move || t2.drain_all(&g2));
        let held = on(0, || {
            let _ = g.try_charge(1).unwrap(); // from the stock, or from the counters
            g.uncharge(1); // into the stock, or to the counters
            1 // the first charge is still held
        });
        let drained = drainer.join().unwrap();

        assert!(drained.is_some(), "the only drainer is never refused");
        assert_eq!(
            g.counter().usage(),
            held + g.cached_units(),
            "usage = objects + cached units (none lost, none counted twice)"
        );
        assert!(g.cached_units() <= 4, "S3: at most a batch cached");
        on(0, || g.uncharge(1));
        let _ = tree.drain_all(&g);
        assert_eq!(g.counter().usage(), 0);
        assert_eq!(tree.root().counter().usage(), 0);
    });
}

/// Refill (the owner charges a batch and caches the rest, evicting an entry) vs a drain of
/// the whole tree: every unit ends up either cached or back in the counters, and each stock
/// reference is dropped exactly once (an extra put would trip the refcount's underflow
/// assertion; a missing one would leave a group unreleased).
#[test]
fn refill_vs_drain_all() {
    model(|| {
        let tree = Arc::new(small_tree(Nothing));
        let a: Group<TestCpus, 2> = tree.root().create_child(GroupSpec::new()).unwrap();
        let b = tree.root().create_child(GroupSpec::new()).unwrap();
        let c = tree.root().create_child(GroupSpec::new()).unwrap();
        // Fill CPU 0's two entries (a, b), so that charging c evicts one.
        on(0, || {
            let _ = a.try_charge(1).unwrap();
            let _ = b.try_charge(1).unwrap();
        });
        let (t2, root) = (tree.clone(), tree.root());
        let drainer = thread::spawn(move || t2.drain_all(&root));
        on(0, || {
            let _ = c.try_charge(1).unwrap();
        });
        drainer.join().unwrap();

        for (g, held) in [(&a, 1), (&b, 1), (&c, 1)] {
            assert_eq!(g.counter().usage(), held + g.cached_units());
        }
        on(0, || {
            for g in [&a, &b, &c] {
                g.uncharge(1);
            }
        });
        let _ = tree.drain_all(&tree.root());
        assert_eq!(tree.root().counter().usage(), 0);
        for g in [&a, &b, &c] {
            // The handle and the base reference; every stock reference is gone.
            assert_eq!(g.ref_count(), 2);
        }
    });
}

#[derive(Default)]
struct Releases {
    target: AtomicUsize,
    count: AtomicUsize,
}

struct CountReleases(Arc<Releases>);

impl Observer for CountReleases {
    fn released(&self, id: GroupId) {
        if id.index() == self.0.target.load(Ordering::Relaxed) {
            self.0.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The last outside handle of an offline group is dropped while a remote drain takes the
/// stock entry that holds the group's other reference: the group is released exactly once,
/// by whichever goes last.
#[test]
fn last_put_vs_stock_cached_reference() {
    model(|| {
        let releases = Arc::new(Releases::default());
        let tree = Arc::new(small_tree(CountReleases(releases.clone())));
        let g: Group<TestCpus, 2> = tree.root().create_child(GroupSpec::new()).unwrap();
        releases.target.store(g.id().index(), Ordering::Relaxed);
        on(1, || {
            let _ = g.try_charge(1).unwrap(); // CPU 1's stock now caches g (one reference)
            g.uncharge(1);
        });
        // Offline without waiting for the stock (CPU 1 could be busy): take the base
        // reference away through the node directly, as a concurrent offline would leave it.
        {
            let node = g.node();
            let _topology = node.domain().topology.lock();
            // SAFETY: the topology flag is held and `g` holds a reference.
            unsafe { node.offline_locked() }.unwrap();
        }
        crate::groups::node::Node::finish_offline(g.node_ptr());

        let (t2, root) = (tree.clone(), tree.root());
        let drainer = thread::spawn(move || {
            let _ = t2.drain_all(&root);
        });
        drop(g); // the last outside handle
        drainer.join().unwrap();

        assert_eq!(releases.count.load(Ordering::Relaxed), 1, "released exactly once");
        assert_eq!(tree.root().counter().usage(), 0);
    });
}

/// Closing the stocks (the first step of dropping a tree) vs an owner whose charge misses and
/// refills: the owner checks `closed` inside its critical section, and the closer drains until
/// `is_drained`, which also waits for owners inside a stock (the Dekker pair of
/// `Stocks::close`). Whatever the interleaving, once the closer is done no entry is cached and
/// no stock holds a reference; an entry installed after the last drain would leak the group
/// when the tree goes. (A `closed` check before entering the stock allowed exactly that.)
#[test]
fn close_vs_refill() {
    model(|| {
        let tree = Arc::new(small_tree(Nothing));
        let g: Group<TestCpus, 2> = tree.root().create_child(GroupSpec::new()).unwrap();
        let t2 = tree.clone();
        let closer = thread::spawn(move || {
            // Close, then drain until drained (`Domain::close_caches`).
            assert!(t2.domain().close_caches());
        });
        on(0, || {
            let _ = g.try_charge(1).unwrap(); // a miss: charges a batch, then refills
        });
        closer.join().unwrap();

        assert_eq!(g.cached_units(), 0, "nothing cached after close + drain");
        assert_eq!(g.ref_count(), 2, "the handle and the base reference only");
        assert_eq!(g.counter().usage(), 1, "exactly the charge that is held");
        on(0, || g.uncharge(1));
        assert_eq!(tree.root().counter().usage(), 0);
    });
}
