//! Black-box tests of [`chargetree::group`]: the lifecycle of groups, reference counting
//! (Linux's `percpu_ref` and css references), owner cells and lockless readers, charge moving
//! (`mem_cgroup_move_account`) and events, through the public API only.
//!
//! Every test that asserts "freed exactly once" installs an [`Observer`] that logs each
//! release and free (`Log`), and checks the log for double releases, double frees and frees
//! without a release (`Log::check`). Trees are built with
//! `TreeConfig::with_cpus(TestCpus::new(4))` (deterministic CPU impersonation with
//! `TestCpus::run_on`) or the default `ThreadCpus`.
//!
//!
//! Under miri the loops shrink (`scaled`), and the file passes with
//! `MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-stacked-borrows"` (use-after-free,
//! data races and leaks are still checked). It cannot run with `-Zmiri-strict-provenance`:
//! crossbeam-epoch 0.9.21 casts integers to pointers (`atomic.rs:204`) on the first pin. Nor
//! under an aliasing model: Stacked Borrows rejects crossbeam-epoch's `List` iteration, and
//! Tree Borrows rejects `Local::finalize` dropping the last `Collector` reference while
//! `&self` is live (crossbeam-rs/crossbeam#545). Every tree's collector hits the second one,
//! because the thread-local participant cache outlives the tree.

extern crate alloc;

use alloc::sync::Arc;
use core::panic::AssertUnwindSafe;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::collections::HashSet;
use std::panic::catch_unwind;
use std::sync::Mutex;
use std::thread;

use chargetree::COUNTER_MAX;
use chargetree::counter::LimitError;
use chargetree::cpu::{CpuProvider, TestCpus, ThreadCpus};
use chargetree::group::{
    Event, EventCounts, Group, GroupError, GroupId, GroupSpec, MoveError, Observer, OwnerCell, Tree,
    TreeConfig, TreeStats, reclaim_orphans,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Iterations of the loops and threaded tests (small under miri).
const fn scaled(n: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { n }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Released,
    Freed,
}

/// Everything the observer saw, in order.
#[derive(Debug, Default)]
struct Log {
    events: Mutex<Vec<(Ev, GroupId)>>,
}

impl Log {
    fn push(&self, ev: Ev, id: GroupId) {
        self.events.lock().unwrap().push((ev, id));
    }

    fn count(&self, ev: Ev, id: GroupId) -> usize {
        let events = self.events.lock().unwrap();
        events.iter().filter(|&&e| e == (ev, id)).count()
    }

    fn released(&self, id: GroupId) -> usize {
        self.count(Ev::Released, id)
    }

    fn freed(&self, id: GroupId) -> usize {
        self.count(Ev::Freed, id)
    }

    fn total(&self, ev: Ev) -> usize {
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| e.0 == ev).count()
    }

    fn is_freed(&self, id: GroupId) -> bool {
        self.freed(id) > 0
    }

    /// Position of an event in the log.
    fn position(&self, ev: Ev, id: GroupId) -> Option<usize> {
        let events = self.events.lock().unwrap();
        events.iter().position(|&e| e == (ev, id))
    }

    /// Ids freed, in order.
    fn freed_ids(&self) -> Vec<GroupId> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| e.0 == Ev::Freed).map(|e| e.1).collect()
    }

    /// No group released or freed twice; every free comes after its release.
    #[track_caller]
    fn check(&self) {
        let events = self.events.lock().unwrap();
        let mut released = HashSet::new();
        let mut freed = HashSet::new();
        for &(ev, id) in events.iter() {
            match ev {
                Ev::Released => assert!(released.insert(id), "{id} released twice: {events:?}"),
                Ev::Freed => {
                    assert!(released.contains(&id), "{id} freed before its release: {events:?}");
                    assert!(freed.insert(id), "{id} freed twice: {events:?}");
                }
            }
        }
    }
}

struct Obs(Arc<Log>);

impl Observer for Obs {
    fn released(&self, id: GroupId) {
        self.0.push(Ev::Released, id);
    }
    fn freed(&self, id: GroupId) {
        self.0.push(Ev::Freed, id);
    }
}

/// A tree with four impersonated CPUs and a logging observer.
/// Runs `f` on impersonated CPU `cpu`.
fn on<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    // SAFETY: the tests here never run two threads on one impersonated CPU at once (each
    // thread of a threaded test is given a CPU of its own).
    unsafe { TestCpus::run_on(cpu, f) }
}

fn test_tree() -> (Tree<TestCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    let config = TreeConfig::with_cpus(TestCpus::new(4)).observer(Obs(log.clone()));
    (Tree::with_config(config), log)
}

/// A tree with the default CPU provider (one slot per thread) and a logging observer.
fn thread_tree() -> (Tree<ThreadCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    (Tree::with_config(TreeConfig::new().observer(Obs(log.clone()))), log)
}

/// Reclaims until nothing more is freed (a released chain may need one round per level).
fn settle<P: CpuProvider>(tree: &Tree<P>) {
    for _ in 0..64 {
        let before = tree.stats();
        tree.reclaim();
        let after = tree.stats();
        if after.freed == after.released && after == before {
            return;
        }
    }
}

/// Moves whatever `Tree::pin` on this thread handed to the thread's own epoch bag to the
/// collector, so that `Tree::reclaim` on another thread can free it (see
/// `groups_handed_over_by_pin_on_an_idle_thread_are_freed_by_reclaim`). Called at the end of
/// worker threads: the thread-local bag is otherwise only flushed by the thread's TLS
/// destructors, which may run after `join` returns.
fn flush_thread<P: CpuProvider>(tree: &Tree<P>) {
    tree.pin().flush();
}

fn child<P: CpuProvider>(parent: &Group<P>, name: &str) -> Group<P> {
    parent.create_child(GroupSpec::new().name(name)).unwrap()
}

/// `(created, offlined, released, freed)`, to compare with [`lifecycle`].
fn stats(created: usize, offlined: usize, released: usize, freed: usize) -> (usize, usize, usize, usize) {
    (created, offlined, released, freed)
}

/// The lifecycle counts of a tree's stats.
fn lifecycle(s: TreeStats) -> (usize, usize, usize, usize) {
    (s.created, s.offlined, s.released, s.freed)
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The id of the group `cell` points at, if any (under a guard of `tree`).
fn cell_id<P: CpuProvider>(tree: &Tree<P>, cell: &OwnerCell<P>) -> Option<GroupId> {
    let guard = tree.pin();
    cell.load(&guard).map(|r| r.id())
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle: creation
// ---------------------------------------------------------------------------------------------

#[test]
fn root_is_online_named_and_has_no_parent() {
    let (tree, log) = test_tree();
    let root = tree.root();
    assert!(root.is_root());
    assert!(root.is_online());
    assert_eq!(root.name(), Some("root"));
    assert!(root.parent().is_none());
    assert_eq!(root.counter().max(), COUNTER_MAX);
    assert_eq!(root.counter().usage(), 0);
    assert_eq!(lifecycle(tree.stats()), stats(1, 0, 0, 0));
    assert!(tree.root().ptr_eq(&root));
    assert_eq!(tree.root(), root);
    drop(root);
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 1);
    log.check();
}

#[test]
fn create_child_applies_names_unique_ids_and_spec_limits() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let a = root.create_child(GroupSpec::new().name("a").max(1000).high(800).min(100).low(200)).unwrap();
    let b = root.create_child(GroupSpec::new()).unwrap();
    let c = a.create_child(GroupSpec::new().name("c").track_protection(false).track_failcnt(false)).unwrap();

    assert_eq!((a.name(), b.name(), c.name()), (Some("a"), None, Some("c")));
    let ids: HashSet<GroupId> = [root.id(), a.id(), b.id(), c.id()].into_iter().collect();
    assert_eq!(ids.len(), 4, "ids are unique");
    assert!(!a.is_root() && !b.is_root() && !c.is_root());
    assert!(a.is_online() && b.is_online() && c.is_online());

    let ac = a.counter();
    assert_eq!((ac.max(), ac.high(), ac.min(), ac.low()), (1000, 800, 100, 200));
    let bc = b.counter();
    assert_eq!(
        (bc.max(), bc.high(), bc.min(), bc.low()),
        (COUNTER_MAX, COUNTER_MAX, 0, 0),
        "GroupSpec::new() is unlimited and unprotected"
    );
    assert!(ac.tracks_protection() && ac.tracks_failcnt());
    assert!(!c.counter().tracks_protection());
    assert!(!c.counter().tracks_failcnt());

    // The counters are linked into the hierarchy.
    assert_eq!(c.parent().unwrap(), a);
    assert_eq!(a.parent().unwrap(), root);
    assert!(c.is_descendant_of(&a) && c.is_descendant_of(&root) && c.is_descendant_of(&c));
    assert!(!c.is_descendant_of(&b) && !a.is_descendant_of(&c));
    c.counter().try_charge(7).unwrap();
    assert_eq!((c.counter().usage(), a.counter().usage(), root.counter().usage()), (7, 7, 7));
    assert_eq!(b.counter().usage(), 0);
    // The limit from the spec is enforced, on the child and for its descendants.
    assert!(c.counter().try_charge(994).is_err());
    assert_eq!(a.counter().failcnt(), 1);
    c.counter().uncharge(7);
    assert_eq!(root.counter().usage(), 0);

    assert_eq!(lifecycle(tree.stats()), stats(4, 0, 0, 0));
    // Ids keep growing: a later group never reuses one.
    let d = child(&b, "d");
    assert!(!ids.contains(&d.id()));
    assert_eq!(format!("{}", GroupId::from_index(3)), "#3");
}

#[test]
fn create_child_refuses_limits_above_counter_max() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let too_big = COUNTER_MAX + 1;
    let specs = [
        GroupSpec::new().max(too_big),
        GroupSpec::new().high(too_big),
        GroupSpec::new().min(too_big),
        GroupSpec::new().low(too_big),
    ];
    let refs_before = root.ref_count();
    for spec in specs {
        let err = root.create_child(spec.name("bad")).unwrap_err();
        assert_eq!(err, GroupError::Limit(LimitError::TooLarge { value: too_big }));
        assert!(!err.to_string().is_empty());
    }
    // Nothing was created, linked or referenced.
    assert_eq!(lifecycle(tree.stats()), stats(1, 0, 0, 0));
    assert!(root.children().is_empty());
    assert_eq!(root.ref_count(), refs_before);
    assert_eq!(log.total(Ev::Released), 0);
    // COUNTER_MAX itself is fine (it means "no limit").
    let ok = root.create_child(GroupSpec::new().max(COUNTER_MAX).high(COUNTER_MAX).min(COUNTER_MAX)).unwrap();
    assert_eq!(ok.counter().min(), COUNTER_MAX);
    assert_eq!(tree.stats().created, 2);
}

#[test]
#[should_panic(expected = "invalid root spec")]
fn root_spec_above_counter_max_panics() {
    let config = TreeConfig::with_cpus(TestCpus::new(1)).root(GroupSpec::new().max(COUNTER_MAX + 1));
    let _tree = Tree::with_config(config);
}

#[test]
fn root_spec_panic_does_not_leak_the_tree() {
    let log = Arc::new(Log::default());
    let config = TreeConfig::with_cpus(TestCpus::new(1))
        .observer(Obs(log.clone()))
        .root(GroupSpec::new().max(COUNTER_MAX + 1));
    let r = catch_unwind(AssertUnwindSafe(|| Tree::with_config(config)));
    assert!(r.is_err());
    // The observer was moved into the tree's bookkeeping; if that was dropped, we hold the
    // last reference to the log again.
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping was leaked");
}

#[test]
fn root_spec_is_applied() {
    let config = TreeConfig::with_cpus(TestCpus::new(2)).root(GroupSpec::new().name("top").max(50));
    let tree = Tree::with_config(config);
    let root = tree.root();
    assert_eq!(root.name(), Some("top"));
    assert_eq!(root.counter().max(), 50);
    let a = child(&root, "a");
    assert!(a.counter().try_charge(51).is_err());
    a.counter().try_charge(50).unwrap();
    a.counter().uncharge(50);
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle: offline and its refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_refusals_are_typed() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    assert_eq!(root.offline(), Err(GroupError::Root));
    assert!(root.is_online(), "a refused offline changes nothing");

    let p = child(&root, "p");
    let c1 = child(&p, "c1");
    let c2 = child(&p, "c2");
    assert_eq!(p.offline(), Err(GroupError::HasOnlineChildren { online_children: 2 }));
    assert!(p.is_online());
    assert_eq!(tree.stats().offlined, 0);

    c1.offline().unwrap();
    assert!(!c1.is_online());
    assert_eq!(c1.offline(), Err(GroupError::Offline));
    assert_eq!(p.offline(), Err(GroupError::HasOnlineChildren { online_children: 1 }));
    c2.offline().unwrap();
    // Offline children (still referenced) do not block their parent.
    p.offline().unwrap();
    assert_eq!(p.offline(), Err(GroupError::Offline));
    assert_eq!(root.offline(), Err(GroupError::Root));
    assert_eq!(lifecycle(tree.stats()), stats(4, 3, 0, 0));

    for e in [
        GroupError::ParentOffline,
        GroupError::Offline,
        GroupError::HasOnlineChildren { online_children: 3 },
        GroupError::Root,
    ] {
        assert!(!e.to_string().is_empty());
    }
    assert!(GroupError::HasOnlineChildren { online_children: 3 }.to_string().contains('3'));
}

#[test]
fn refused_creations_take_no_id() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    assert_eq!(p.id(), GroupId::from_index(1));
    // A spec above COUNTER_MAX, then an offline parent: both refused.
    assert!(root.create_child(GroupSpec::new().max(COUNTER_MAX + 1)).is_err());
    p.offline().unwrap();
    assert_eq!(p.create_child(GroupSpec::new()), Err(GroupError::ParentOffline));
    // The next creation gets the next number: ids are 0..created, no holes.
    let q = child(&root, "q");
    assert_eq!(q.id(), GroupId::from_index(2));
    assert_eq!(tree.stats().created, 3);
}

/// The soak's check (ids `0..created`, each released and freed once) with creations racing
/// offlines of their parents, which refuse some of them.
#[test]
fn racing_refused_creations_keep_ids_dense() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let refused = AtomicUsize::new(0);
    let rounds = scaled(300, 10);
    for _ in 0..rounds {
        let parent = child(&root, "parent");
        thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..4 {
                    match parent.create_child(GroupSpec::new()) {
                        Ok(c) => {
                            // Offline children first, or the parent's offline is refused.
                            let _ = c.offline();
                        }
                        Err(e) => {
                            assert_eq!(e, GroupError::ParentOffline);
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
            s.spawn(|| {
                while parent.offline().is_err() {
                    thread::yield_now();
                }
            });
        });
        // And one refusal every round for certain.
        assert_eq!(parent.create_child(GroupSpec::new()), Err(GroupError::ParentOffline));
        refused.fetch_add(1, Ordering::Relaxed);
    }
    let created = tree.stats().created;
    drop(root);
    drop(tree);
    // Every id below `created` was a group (released and freed once), none above.
    for id in 0..created {
        assert_eq!(
            (log.released(GroupId::from_index(id)), log.freed(GroupId::from_index(id))),
            (1, 1),
            "id {id}"
        );
    }
    assert_eq!(log.total(Ev::Released), created);
    assert_eq!(log.total(Ev::Freed), created);
    assert_eq!(created, 1 + rounds * 6 - refused.load(Ordering::Relaxed));
    log.check();
}

/// The last put publishes the node on the released list from a thread that is not pinned,
/// so another thread's reclamation may free it at once: the releasing thread must read
/// nothing of the node after the push. It used to read the node's tree pointer there (found
/// by miri in the stress test below); under miri this test reports such a read as a data
/// race with the free on the reclaiming thread. Everywhere it checks that each group is
/// released and freed exactly once.
#[test]
fn a_last_put_races_reclamation_on_another_thread() {
    let (tree, log) = thread_tree();
    let root = tree.root();
    let stop = AtomicBool::new(false);
    let rounds = scaled(2000, 30);
    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                tree.reclaim();
                thread::yield_now();
            }
        });
        for _ in 0..rounds {
            let g = child(&root, "g");
            let o = g.obj_group().unwrap();
            g.offline().unwrap();
            drop(g); // the ObjGroup still holds the group
            drop(o); // the last put of the ObjGroup, then of the group when it is freed
        }
        stop.store(true, Ordering::Relaxed);
    });
    tree.reclaim();
    assert_eq!(log.total(Ev::Freed), rounds, "every child freed");
    drop(root);
    let created = tree.stats().created;
    drop(tree);
    assert_eq!(log.total(Ev::Released), created);
    assert_eq!(log.total(Ev::Freed), created);
    log.check();
}

#[test]
fn create_child_of_offline_parent_is_refused() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    p.offline().unwrap();
    let refs = p.ref_count();
    assert_eq!(p.create_child(GroupSpec::new().name("late")), Err(GroupError::ParentOffline));
    assert_eq!(p.ref_count(), refs, "the refused child holds no reference on its parent");
    assert!(p.children().is_empty());
    assert_eq!(lifecycle(tree.stats()), stats(2, 1, 0, 0));
    assert_eq!(log.total(Ev::Released), 0);
    // Its parent is freed normally afterwards.
    let id = p.id();
    drop(p);
    tree.reclaim();
    assert_eq!((log.released(id), log.freed(id)), (1, 1));
    log.check();
}

#[test]
fn offline_zeroes_protection_and_the_parents_protected_sums() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let a = p.create_child(GroupSpec::new().name("a").min(100).low(200)).unwrap();
    let b = p.create_child(GroupSpec::new().name("b").min(10).low(20)).unwrap();
    a.counter().try_charge(50).unwrap();
    b.counter().try_charge(50).unwrap();
    assert_eq!((a.counter().min_usage(), a.counter().low_usage()), (50, 50));
    assert_eq!((p.counter().children_min_usage(), p.counter().children_low_usage()), (60, 70));

    a.offline().unwrap();
    assert_eq!((a.counter().min(), a.counter().low()), (0, 0));
    assert_eq!((a.counter().min_usage(), a.counter().low_usage()), (0, 0));
    assert_eq!(
        (p.counter().children_min_usage(), p.counter().children_low_usage()),
        (10, 20),
        "only the online sibling's protected usage is left in the parent's sums"
    );
    // Limits other than protection are kept; usage stays where it is.
    assert_eq!(a.counter().usage(), 50);
    assert_eq!(p.counter().usage(), 100);
    a.counter().uncharge(50);
    b.counter().uncharge(50);
    assert_eq!((p.counter().children_min_usage(), p.counter().children_low_usage()), (0, 0));
}

#[test]
fn charging_an_offline_group_is_allowed_and_balances() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let c = c_with_max(&p, 40);
    c.offline().unwrap();
    c.counter().try_charge(30).unwrap();
    assert_eq!((c.counter().usage(), p.counter().usage(), root.counter().usage()), (30, 30, 30));
    assert!(c.counter().try_charge(11).is_err(), "an offline group keeps its max");
    c.counter().charge(5).unwrap();
    c.counter().uncharge(35);
    assert_eq!((c.counter().usage(), p.counter().usage(), root.counter().usage()), (0, 0, 0));
    // Charges own no references: a charged, unreferenced group is released and freed.
    // (References follow pointers, never charges: a group still charged is freed once
    // unreferenced; its charge stays in the ancestors' counters, where the caller who owns
    // the charge returns it. The object layer reparents such charges in one step.)
    c.counter().try_charge(3).unwrap();
    let id = c.id();
    assert_eq!(c.ref_count(), 1);
    drop(c);
    tree.reclaim();
    assert_eq!((log.released(id), log.freed(id)), (1, 1));
    assert_eq!((p.counter().usage(), root.counter().usage()), (3, 3));
    p.counter().uncharge(3);
    assert_eq!(root.counter().usage(), 0);
    log.check();
}

fn c_with_max<P: CpuProvider>(parent: &Group<P>, max: usize) -> Group<P> {
    parent.create_child(GroupSpec::new().name("limited").max(max)).unwrap()
}

#[test]
fn tryget_online_fails_after_offline_and_tryget_fails_once_released() {
    let (tree, log) = test_tree();
    let root = tree.root();
    let g = child(&root, "g");
    let id = g.id();
    let cell = OwnerCell::new(g.clone());

    let guard = tree.pin();
    let r = cell.load(&guard).unwrap();
    assert!(r.is(&g) && r.is_online() && r.id() == id);
    let online = r.tryget_online().expect("online");
    assert_eq!(online, g);
    drop(online);

    g.offline().unwrap();
    assert!(!r.is_online());
    assert!(r.tryget_online().is_none(), "no tryget_online after offline");
    let held = r.tryget().expect("tryget succeeds while references exist");
    assert_eq!(g.ref_count(), 3, "g, the cell and `held`");
    drop(held);
    assert_eq!(g.ref_count(), 2);

    // Drop every reference while the guard is pinned: released, not freed.
    drop(g);
    let old = cell.take().unwrap();
    assert_eq!(old.ref_count(), 1);
    drop(old);
    assert_eq!(log.released(id), 1);
    assert!(r.tryget().is_none(), "tryget fails once released");
    assert!(r.tryget_online().is_none());
    assert_eq!(r.id(), id, "the memory is still valid under the guard");
    assert_eq!(r.counter().usage(), 0);
    tree.reclaim();
    assert_eq!(log.freed(id), 0, "not freed while a guard that loaded it is pinned");
    assert_eq!(tree.stats().freed, 0);
    drop(guard);
    tree.reclaim();
    assert_eq!(log.freed(id), 1);
    assert_eq!(lifecycle(tree.stats()), stats(2, 1, 1, 1));
    log.check();
}

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

// ---------------------------------------------------------------------------------------------
// 6. move_charge
// ---------------------------------------------------------------------------------------------

#[test]
fn move_charge_between_siblings() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = child(&root, "p");
    let a = child(&p, "a");
    let b = child(&p, "b");
    a.counter().try_charge(10).unwrap();
    a.counter().try_charge(4).unwrap(); // another object of a, not moved
    let obj = OwnerCell::new(a.clone());
    let (ra, rb) = (a.ref_count(), b.ref_count());
    obj.move_charge(&b, 10).unwrap();
    assert_eq!((a.counter().usage(), b.counter().usage()), (4, 10));
    assert_eq!((p.counter().usage(), root.counter().usage()), (14, 14), "common ancestors unchanged");
    assert_eq!(cell_id(&tree, &obj), Some(b.id()));
    assert_eq!((a.ref_count(), b.ref_count()), (ra - 1, rb + 1), "the cell's reference moved");
    // And back.
    obj.move_charge(&a, 10).unwrap();
    assert_eq!((a.counter().usage(), b.counter().usage(), p.counter().usage()), (14, 0, 14));
    assert_eq!((a.ref_count(), b.ref_count()), (ra, rb));
    a.counter().uncharge(14);
    drop(obj);
    assert_eq!(root.counter().usage(), 0);
}

#[test]
fn move_charge_up_down_and_across_subtrees() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let x = child(&root, "x");
    let x1 = child(&x, "x1");
    let x11 = child(&x1, "x11");
    let y = child(&root, "y");
    let y1 = child(&y, "y1");
    let usage = |gs: &[&Group<TestCpus>]| gs.iter().map(|g| g.counter().usage()).collect::<Vec<_>>();

    x11.counter().try_charge(8).unwrap();
    let obj = OwnerCell::new(x11.clone());
    // Up to the grandparent: the path below it loses, the grandparent and above keep.
    obj.move_charge(&x, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &root]), [0, 0, 8, 8]);
    // Down again.
    obj.move_charge(&x11, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &root]), [8, 8, 8, 8]);
    // Across: the common ancestor (root) unchanged, both paths updated.
    obj.move_charge(&y1, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &y1, &y, &root]), [0, 0, 0, 8, 8, 8]);
    // To the root itself.
    obj.move_charge(&root, 8).unwrap();
    assert_eq!(usage(&[&y1, &y, &root]), [0, 0, 8]);
    obj.move_charge(&x1, 8).unwrap();
    assert_eq!(usage(&[&x11, &x1, &x, &y, &root]), [0, 8, 8, 0, 8]);
    // Peaks saw the moves; nothing failed.
    assert_eq!(y1.counter().peak(), 8);
    assert_eq!(root.counter().failcnt(), 0);
    let g = obj.take().unwrap();
    g.counter().uncharge(8);
    assert_eq!(root.counter().usage(), 0);
}

#[test]
fn move_charge_errors_are_typed_and_change_nothing() {
    let (tree, _log) = test_tree();
    let (other, _olog) = test_tree();
    let root = tree.root();
    let r = root.create_child(GroupSpec::new().name("r").max(100)).unwrap();
    let q = child(&r, "q");
    let t = q.create_child(GroupSpec::new().name("t").max(50)).unwrap();
    let f = child(&root, "f");
    let dead = child(&root, "dead");
    dead.offline().unwrap();
    let foreign = child(&other.root(), "foreign");

    // r already holds 70 through a sibling of q.
    let s = child(&r, "s");
    s.counter().try_charge(70).unwrap();
    f.counter().try_charge(40).unwrap();
    let obj = OwnerCell::new(f.clone());
    let snapshot = |tree: &Tree<TestCpus>| {
        tree.groups().iter().map(|g| (g.id(), g.counter().usage())).collect::<Vec<_>>()
    };
    let before = snapshot(&tree);
    let refs_before = (f.ref_count(), t.ref_count());

    assert_eq!(OwnerCell::empty(&tree).move_charge(&t, 1), Err(MoveError::Empty));
    assert_eq!(obj.move_charge(&dead, 40), Err(MoveError::TargetOffline));
    assert_eq!(obj.move_charge(&foreign, 40), Err(MoveError::OtherTree));
    assert_eq!(obj.move_charge(&t, COUNTER_MAX + 1), Err(MoveError::TooLarge));
    // 40 fits t (max 50) but not r (70 + 40 > 100): the error names r, two levels up.
    assert_eq!(obj.move_charge(&t, 40), Err(MoveError::Limit { group: r.id(), max: 100, usage: 70 }));
    assert_eq!(r.counter().failcnt(), 1);
    // 60 does not fit t itself: named at level 0.
    s.counter().uncharge(70);
    assert_eq!(obj.move_charge(&t, 60), Err(MoveError::Limit { group: t.id(), max: 50, usage: 0 }));
    s.counter().try_charge(70).unwrap();

    assert_eq!(snapshot(&tree), before, "no failed move leaves a charge behind");
    assert_eq!((f.ref_count(), t.ref_count()), refs_before, "nor a reference");
    assert_eq!(cell_id(&tree, &obj), Some(f.id()));
    assert_eq!(foreign.counter().usage(), 0);

    // Moving to the group the cell already points at: Ok, nothing changes (even if the
    // amount could not be charged, or the group is offline).
    obj.move_charge(&f, 40).unwrap();
    obj.move_charge(&f, COUNTER_MAX + 1).unwrap();
    assert_eq!(snapshot(&tree), before);
    assert_eq!(f.ref_count(), refs_before.0);
    f.offline().unwrap();
    obj.move_charge(&f, 40).unwrap();
    assert_eq!(f.counter().usage(), 40);

    // Moving *out of* an offline group is fine.
    s.counter().uncharge(70);
    obj.move_charge(&t, 40).unwrap();
    assert_eq!((f.counter().usage(), t.counter().usage(), r.counter().usage()), (0, 40, 40));

    for e in [
        MoveError::Empty,
        MoveError::TargetOffline,
        MoveError::OtherTree,
        MoveError::Limit { group: GroupId::from_index(7), max: 1, usage: 2 },
        MoveError::TooLarge,
        MoveError::Raced,
    ] {
        assert!(!e.to_string().is_empty());
    }
    obj.take().unwrap().counter().uncharge(40);
    assert_eq!(root.counter().usage(), 0);
}

/// Like Linux's v1 charge moving (which precharges `mc.to` through its whole hierarchy and
/// uncharges `mc.from` afterwards), a move charges the target's path *before* uncharging the
/// source's: a common ancestor at its limit refuses a move that would not change its usage.
#[test]
fn move_charge_precharges_through_the_common_ancestor() {
    let (tree, _log) = test_tree();
    let root = tree.root();
    let p = root.create_child(GroupSpec::new().name("p").max(10)).unwrap();
    let a = child(&p, "a");
    let b = child(&p, "b");
    a.counter().try_charge(10).unwrap();
    let obj = OwnerCell::new(a.clone());
    assert_eq!(obj.move_charge(&b, 10), Err(MoveError::Limit { group: p.id(), max: 10, usage: 10 }));
    assert_eq!((a.counter().usage(), b.counter().usage(), p.counter().usage()), (10, 0, 10));
    p.counter().set_max(20).unwrap();
    obj.move_charge(&b, 10).unwrap();
    assert_eq!((a.counter().usage(), b.counter().usage(), p.counter().usage()), (0, 10, 10));
    assert_eq!(p.counter().peak(), 20, "transiently double-charged");
    obj.take().unwrap().counter().uncharge(10);
}

/// The seed's question ("what prevents `from` from being released?"), with real threads:
/// thread A moves objects between F and T; thread B takes F offline and drops the last
/// outside handle of F. Every counter balances, F is freed exactly once, and never while a
/// cell still points at it.
fn move_vs_offline<P: CpuProvider>(tree: Tree<P>, log: Arc<Log>, impersonate: bool) {
    let rounds = scaled(3000, 16);
    let root = tree.root();
    let p = child(&root, "p");
    let f = child(&p, "F");
    let t = child(&p, "T");
    let (fid, tid) = (f.id(), t.id());
    // Where new objects find F: a shared pointer that owns one reference (like a task's
    // memcg); B empties it. It is the last outside pointer to F besides the objects.
    let lookup = OwnerCell::new(f);
    let progress = AtomicUsize::new(0);
    let run = |cpu: usize, f: &mut dyn FnMut()| {
        if impersonate { on(cpu, f) } else { f() }
    };

    let objs: Objs<P> = thread::scope(|s| {
        let a = s.spawn(|| {
            let mut objs: Objs<P> = Vec::new();
            let mut rng = Rng::new(1);
            run(0, &mut || {
                for i in 0..rounds {
                    let lookup_f = || {
                        let guard = tree.pin();
                        lookup.load(&guard).and_then(|r| r.tryget_online())
                    };
                    // A new object, charged to F while F is online, else to T.
                    let amount = 1 + rng.below(8);
                    let home = lookup_f().unwrap_or_else(|| t.clone());
                    home.counter().try_charge(amount).unwrap();
                    objs.push((OwnerCell::new(home), amount));
                    // Move every object to T and back to F.
                    for (cell, amount) in &objs {
                        cell.move_charge(&t, *amount).unwrap();
                        if let Some(f) = lookup_f() {
                            match cell.move_charge(&f, *amount) {
                                Ok(()) | Err(MoveError::TargetOffline) => {}
                                Err(e) => panic!("unexpected {e:?}"),
                            }
                        }
                        // Nothing a cell points at is freed.
                        let guard = tree.pin();
                        let id = cell.load(&guard).unwrap().id();
                        assert!(id == fid || id == tid);
                        assert!(!log.is_freed(id), "{id} freed while a cell points at it");
                    }
                    // Free the oldest object now and then.
                    if objs.len() > 3 {
                        let (cell, amount) = objs.remove(0);
                        cell.take().unwrap().counter().uncharge(amount);
                    }
                    progress.store(i + 1, Ordering::Release);
                }
                flush_thread(&tree);
            });
            objs
        });
        s.spawn(|| {
            run(1, &mut || {
                while progress.load(Ordering::Acquire) < rounds / 3 {
                    thread::yield_now();
                }
                let f = lookup.take().expect("F is in the lookup cell");
                f.offline().unwrap();
                assert_eq!(f.offline(), Err(GroupError::Offline));
                drop(f); // the last outside handle of F
            });
        });
        a.join().unwrap()
    });

    // Balance: every group holds exactly what the objects charged to it hold.
    let guard = tree.pin();
    let on = |id: GroupId| -> usize {
        objs.iter().filter(|(c, _)| c.load(&guard).unwrap().id() == id).map(|(_, a)| a).sum()
    };
    let total: usize = objs.iter().map(|(_, a)| a).sum();
    assert_eq!(t.counter().usage(), on(tid));
    assert_eq!(p.counter().usage(), total);
    assert_eq!(root.counter().usage(), total);
    if let Some((cell, _)) = objs.iter().find(|(c, _)| c.load(&guard).unwrap().id() == fid) {
        let f = cell.load(&guard).unwrap();
        assert!(!f.is_online());
        assert_eq!(f.counter().usage(), on(fid));
    }
    drop(guard);
    let f_still_used = objs.iter().any(|(c, _)| cell_id(&tree, c) == Some(fid));
    assert_eq!(log.released(fid), usize::from(!f_still_used));

    // Move everything off F, watching F's counter reach zero under a guard.
    let guard = tree.pin();
    let mut f_ref = None;
    for (cell, amount) in &objs {
        let r = cell.load(&guard).unwrap();
        if r.id() == fid {
            f_ref = Some(r);
            cell.move_charge(&t, *amount).unwrap();
        }
    }
    assert_eq!(t.counter().usage(), total);
    assert_eq!(log.released(fid), 1, "released once the last cell moved away");
    if let Some(f) = f_ref {
        assert_eq!(f.counter().usage(), 0);
        assert!(f.tryget().is_none());
    }
    drop(guard);
    tree.reclaim();
    assert_eq!((log.released(fid), log.freed(fid)), (1, 1));

    for (cell, amount) in objs {
        cell.take().unwrap().counter().uncharge(amount);
    }
    assert_eq!((t.counter().usage(), p.counter().usage(), root.counter().usage()), (0, 0, 0));
    assert_eq!(p.counter().underflows() + t.counter().underflows(), 0);
    let st = tree.stats();
    assert_eq!(lifecycle(st), stats(4, 1, 1, 1));
    drop((root, p, t));
    drop(tree);
    assert_eq!(log.total(Ev::Freed), 4);
    log.check();
}

#[test]
fn move_vs_offline_test_cpus() {
    let (tree, log) = test_tree();
    move_vs_offline(tree, log, true);
}

#[test]
fn move_vs_offline_thread_cpus() {
    let (tree, log) = thread_tree();
    move_vs_offline(tree, log, false);
}

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

fn names<P: CpuProvider>(gs: &[Group<P>]) -> Vec<String> {
    gs.iter().map(|g| g.name().unwrap_or("?").to_string()).collect()
}

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

// ---------------------------------------------------------------------------------------------
// 9. Randomised multi-threaded stress
// ---------------------------------------------------------------------------------------------

/// Objects: an owner cell and the amount charged for it.
type Objs<P> = Vec<(OwnerCell<P>, usize)>;

struct Shared<P: CpuProvider> {
    pool: Mutex<Vec<Group<P>>>,
    created: Mutex<Vec<GroupId>>,
    offlined: AtomicUsize,
    /// Successful charges, moves, refused moves (offline target or limit).
    charged: AtomicUsize,
    moved: AtomicUsize,
    refused: AtomicUsize,
}

fn stress<P: CpuProvider>(tree: Tree<P>, log: Arc<Log>, impersonate: bool) {
    const THREADS: usize = 4;
    let ops = scaled(3000, 16);
    let shared = Shared::<P> {
        pool: Mutex::new(Vec::new()),
        created: Mutex::new(vec![tree.root().id()]),
        offlined: AtomicUsize::new(0),
        charged: AtomicUsize::new(0),
        moved: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    };

    let results: Vec<(Vec<Group<P>>, Objs<P>)> = thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (tree, shared) = (&tree, &shared);
                s.spawn(move || {
                    let mut rng = Rng::new(0xC0FFEE + t as u64);
                    let mut handles = vec![tree.root()];
                    let mut objs: Objs<P> = Vec::new();
                    let mut body = || {
                        for _ in 0..ops {
                            stress_op(tree, shared, &mut rng, &mut handles, &mut objs);
                        }
                        flush_thread(tree);
                    };
                    if impersonate {
                        on(t, body)
                    } else {
                        body()
                    }
                    (handles, objs)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut handles, mut objs): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (h, o) in results {
        handles.extend(h);
        objs.extend(o);
    }
    handles.extend(shared.pool.lock().unwrap().drain(..));
    log.check();

    // Usage of every live group = what the objects charged in its subtree hold.
    {
        let guard = tree.pin();
        let owners: Vec<(Group<P>, usize)> = objs.iter().map(|(c, a)| (c.get(&guard).unwrap(), *a)).collect();
        drop(guard);
        let all = tree.groups();
        let walked: HashSet<GroupId> = all.iter().map(|g| g.id()).collect();
        // Offline groups still referenced by an object or a handle are walked too.
        for g in owners.iter().map(|(g, _)| g).chain(handles.iter()) {
            assert!(walked.contains(&g.id()), "{} is referenced, so it is walked", g.id());
        }
        for g in all.iter().chain(handles.iter()) {
            let expected: usize = owners.iter().filter(|(o, _)| o.is_descendant_of(g)).map(|(_, a)| a).sum();
            assert_eq!(g.counter().usage(), expected, "usage of {}", g.id());
            assert_eq!(g.counter().underflows(), 0);
            assert!(!log.is_freed(g.id()));
        }
    }

    // Uncharge everything: every usage is zero.
    for (cell, amount) in objs.drain(..) {
        cell.take().unwrap().counter().uncharge(amount);
    }
    for g in tree.groups() {
        assert_eq!(g.counter().usage(), 0, "{}", g.id());
    }

    let created = shared.created.lock().unwrap().clone();
    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    if !cfg!(miri) {
        // Not vacuous: every kind of operation happened, and succeeded, many times.
        let done = [
            created.len(),
            load(&shared.offlined),
            load(&shared.charged),
            load(&shared.moved),
            load(&shared.refused),
        ];
        assert!(done.iter().all(|&n| n >= 20), "created, offlined, charged, moved, refused: {done:?}");
    }
    let st = tree.stats();
    assert_eq!(st.created, created.len());
    assert_eq!(st.offlined, shared.offlined.load(Ordering::Relaxed));
    assert!(st.freed <= st.released && st.released <= st.offlined);
    assert_eq!(st.dying(), st.offlined - st.released);
    assert_eq!(log.total(Ev::Released), st.released);

    // Offline what is left (children first) and drop every handle: all released.
    for g in tree.groups().iter().rev() {
        if !g.is_root() && g.is_online() {
            g.offline().unwrap();
        }
    }
    drop(handles);
    settle(&tree);
    let st = tree.stats();
    assert_eq!(
        (st.offlined, st.released, st.freed),
        (created.len() - 1, created.len() - 1, created.len() - 1)
    );
    assert_eq!(st.dying(), 0);
    assert_eq!(names(&tree.groups()), ["root"]);

    drop(tree);
    for id in &created {
        assert_eq!((log.released(*id), log.freed(*id)), (1, 1), "{id}");
    }
    assert_eq!(log.total(Ev::Freed), created.len());
    assert_eq!(Arc::strong_count(&log), 1);
    log.check();
}

fn stress_op<P: CpuProvider>(
    tree: &Tree<P>,
    shared: &Shared<P>,
    rng: &mut Rng,
    handles: &mut Vec<Group<P>>,
    objs: &mut Objs<P>,
) {
    if handles.is_empty() {
        handles.push(tree.root());
    }
    let pick = rng.below(handles.len());
    match rng.below(14) {
        // Clone (bounded).
        0 | 1 if handles.len() < 24 => handles.push(handles[pick].clone()),
        0 | 1 => drop(handles.swap_remove(pick)),
        2 => drop(handles.swap_remove(pick)),
        // Create a child, sometimes with a limit.
        3 | 4 => {
            let parent = &handles[pick];
            let spec = match rng.below(3) {
                0 => GroupSpec::new().name("lim").max(200),
                1 => GroupSpec::new().min(50).low(30),
                _ => GroupSpec::new(),
            };
            match parent.create_child(spec) {
                Ok(c) => {
                    shared.created.lock().unwrap().push(c.id());
                    handles.push(c);
                }
                Err(GroupError::ParentOffline) => assert!(!parent.is_online()),
                Err(e) => panic!("create_child: {e:?}"),
            }
        }
        // Offline.
        5 => {
            let g = &handles[pick];
            match g.offline() {
                Ok(()) => {
                    shared.offlined.fetch_add(1, Ordering::Relaxed);
                    assert!(!g.is_online());
                    assert_eq!(g.counter().min(), 0);
                }
                Err(GroupError::Offline) => assert!(!g.is_online()),
                Err(GroupError::Root) => assert!(g.is_root()),
                Err(GroupError::HasOnlineChildren { online_children }) => {
                    assert!(online_children > 0)
                }
                Err(e) => panic!("offline: {e:?}"),
            }
        }
        // Charge a new object.
        6 | 7 => {
            let g = &handles[pick];
            let amount = 1 + rng.below(64);
            if g.counter().try_charge(amount).is_ok() {
                shared.charged.fetch_add(1, Ordering::Relaxed);
                objs.push((OwnerCell::new(g.clone()), amount));
            }
        }
        // Free an object.
        8 if !objs.is_empty() => {
            let (cell, amount) = objs.swap_remove(rng.below(objs.len()));
            cell.take().unwrap().counter().uncharge(amount);
        }
        // Move an object.
        9 | 10 if !objs.is_empty() => {
            let (cell, amount) = &objs[rng.below(objs.len())];
            let to = &handles[pick];
            let counter = match cell.move_charge(to, *amount) {
                Ok(()) => &shared.moved,
                Err(MoveError::TargetOffline) => {
                    assert!(!to.is_online());
                    &shared.refused
                }
                Err(MoveError::Limit { max, .. }) => {
                    assert_eq!(max, 200);
                    &shared.refused
                }
                Err(e) => panic!("move_charge: {e:?}"),
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // A handle from an object, through the guard-protected reader path.
        11 if !objs.is_empty() => {
            let (cell, _) = &objs[rng.below(objs.len())];
            let guard = tree.pin();
            let r = cell.load(&guard).unwrap();
            let g = cell.get(&guard).unwrap();
            assert!(r.is(&g), "no one else writes this cell");
            if let Some(online) = r.tryget_online() {
                handles.push(online);
            }
            drop(guard);
            handles.push(g);
        }
        // Share handles with other threads (dropped or used there).
        12 => {
            let g = handles.swap_remove(pick);
            shared.pool.lock().unwrap().push(g);
        }
        13 => {
            if let Some(g) = shared.pool.lock().unwrap().pop() {
                handles.push(g);
            }
            if let Some(p) = handles[pick.min(handles.len() - 1)].parent() {
                handles.push(p);
            }
        }
        _ => {
            if rng.below(8) == 0 {
                tree.reclaim();
            }
        }
    }
}

#[test]
fn stress_random_operations_balance_test_cpus() {
    let (tree, log) = test_tree();
    stress(tree, log, true);
}

#[test]
fn stress_random_operations_balance_thread_cpus() {
    let (tree, log) = thread_tree();
    stress(tree, log, false);
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
