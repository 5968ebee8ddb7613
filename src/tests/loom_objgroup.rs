//! Loom models of the object layer: protocol R (reader of `ObjGroup → group` vs
//! reparenting) through a concurrent byte uncharge, an object-stock drain racing the release
//! of the `ObjGroup` it caches, and the object stock's spare references (S6) vs a drain.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use super::on;
use crate::cpu::TestCpus;
use crate::group::{GroupId, GroupSpec, Observer, Tree, TreeConfig};

/// Counts releases of one group.
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

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

/// One CPU, units of 10 bytes, no unit stock (counter walks only), so the models stay small.
fn tree() -> Tree<TestCpus, 2> {
    tree_with(Arc::new(Releases::default()))
}

fn tree_with(releases: Arc<Releases>) -> Tree<TestCpus, 2> {
    Tree::with_config(
        TreeConfig::<_, 2>::with_cpus_and_slots(TestCpus::new(1))
            .batch(0)
            .unit_bytes(10)
            .observer(CountReleases(releases)),
    )
}

/// A group goes offline (its ObjGroup is reparented) and loses its last handle while an
/// object charged through that ObjGroup is uncharged on another thread. The uncharge takes a
/// handle on the group or on the parent, never on a group whose count already reached zero
/// (protocol R): the group is released exactly once, and the parent ends at exactly zero.
#[test]
fn reparent_vs_concurrent_byte_uncharge() {
    model(|| {
        let releases = Arc::new(Releases::default());
        let tree = Arc::new(tree_with(releases.clone()));
        let parent = tree.root().create_child(GroupSpec::new()).unwrap();
        let child = parent.create_child(GroupSpec::new()).unwrap();
        releases.target.store(child.id().index(), Ordering::Relaxed);
        let o = child.obj_group().unwrap();
        // 25 bytes: 3 units charged, 5 bytes left in CPU 0's object stock.
        let _ = on(0, || o.charge_bytes(25).unwrap());
        assert_eq!(parent.counter().usage(), 3);

        let o2 = o.clone();
        let t = thread::spawn(move || {
            // Uncharging 25 with 5 cached: 30 bytes = 3 whole units go back to whichever
            // group owns the ObjGroup at that moment.
            on(0, || o2.uncharge_bytes(25));
        });
        child.offline().unwrap();
        drop(child); // the ObjGroup's reference, moved to the parent, was the last other one
        t.join().unwrap();

        assert_eq!(releases.count.load(Ordering::Relaxed), 1, "the child is released exactly once");
        assert!(o.group().ptr_eq(&parent), "reparented");
        let _ = tree.drain_all(&tree.root());
        assert_eq!(parent.counter().usage(), 0, "the parent is back at exactly zero");
        assert_eq!(tree.root().counter().usage(), 0);
    });
}

/// A drain takes CPU 0's object-stock entry (and the reference it holds) while the last
/// outside handle of that ObjGroup is dropped: the ObjGroup is released exactly once, and its
/// parked bytes reach the counters when it is freed.
#[test]
fn obj_stock_drain_vs_objgroup_release() {
    model(|| {
        let tree = Arc::new(tree());
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        let o = g.obj_group().unwrap();
        on(0, || {
            let _ = o.charge_bytes(4).unwrap(); // 1 unit; 6 bytes cached on CPU 0
            o.uncharge_bytes(4); // back into the stock: 10 bytes cached, none handed out
        });
        g.offline().unwrap(); // kills the ObjGroup's count (its zero becomes detectable)
        let before = tree.stats();

        let (t2, root) = (tree.clone(), tree.root());
        let drainer = thread::spawn(move || {
            let _ = t2.drain_all(&root);
        });
        drop(o); // the last outside handle
        drainer.join().unwrap();

        let _ = tree.drain_all(&tree.root());
        tree.reclaim();
        let after = tree.stats();
        assert_eq!(after.objgroups_freed, before.objgroups_freed + 1, "freed exactly once");
        assert_eq!(tree.root().counter().usage(), 0, "parked bytes reached the counters");
    });
}

/// Objects' references cached as spares (S6) vs a remote drain: an owner on CPU 0 charges
/// and gives back objects (crossing the batch boundaries: one reference per batch under
/// loom), while another thread drains every stock. Whatever the interleaving, no reference
/// is lost or counted twice: after a final drain the count is back where it started, and
/// once the group is offline and its handles dropped, the `ObjGroup` is freed exactly once.
#[test]
fn object_reference_spares_vs_remote_drain() {
    model(|| {
        let tree = Arc::new(tree());
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        let o = g.obj_group().unwrap();
        let r0 = o.ref_count();

        let (t2, root) = (tree.clone(), tree.root());
        let drainer = thread::spawn(move || {
            let _ = t2.drain_all(&root);
        });
        on(0, || {
            // 3 bytes each, units of 10: a miss (one unit, 7 bytes cached), then two hits,
            // each taking a batch of spares; giving the three back keeps two spares and puts
            // the third (above 2 × OBJ_REF_BATCH).
            let objects = [(); 3].map(|()| o.charge_object(3).unwrap().object);
            for obj in objects {
                // SAFETY: from `charge_object` on `o`, given back once.
                unsafe { crate::objgroup::ObjGroup::<TestCpus, 2>::uncharge_object(obj, 3) };
            }
        });
        drainer.join().unwrap();

        let _ = tree.drain_all(&tree.root());
        assert_eq!(o.ref_count(), r0, "every object reference and spare came back");
        assert_eq!(g.counter().usage(), 0);
        g.offline().unwrap();
        let before = tree.stats();
        drop(o);
        drop(g);
        tree.reclaim();
        assert_eq!(tree.stats().objgroups_freed, before.objgroups_freed + 1, "freed exactly once");
        assert_eq!(tree.root().counter().usage(), 0);
    });
}
