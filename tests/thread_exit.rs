//! A thread's exit is this library's CPU going away (Linux drains a dead CPU's stock in
//! `memcg_hotplug_cpu_dead`): with `ThreadCpus`, what a thread cached in the stocks of every
//! tree it used is back in the counters once the thread has exited, without anybody calling
//! a drain, and the exit path neither allocates nor frees.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use chargetree::cpu::{EXIT_HOOKS, ThreadCpus};
use chargetree::group::{Group, GroupSpec, Tree};
use chargetree::objgroup::ObjGroup;

struct Counting;

std::thread_local! {
    // `const`, no destructor: readable during the thread's teardown.
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

/// Allocator calls made by threads after they marked themselves exiting.
static EXIT_CALLS: AtomicUsize = AtomicUsize::new(0);

fn note() {
    if EXITING.try_with(Cell::get).unwrap_or(false) {
        EXIT_CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to `System`, adding a counter that does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Charges and uncharges `g` and objects of `o` on a new thread, so that its stocks keep
/// units, bytes and references cached when it exits; then waits for it to exit.
fn cache_on_a_thread_and_exit(groups: &[(Group, ObjGroup)]) {
    let groups: Vec<(Group, ObjGroup)> = groups.to_vec();
    let t = thread::spawn(move || {
        // Outside the measured part: the thread's index and its thread-local destructors.
        let _ = ThreadCpus::register_current_thread();
        for (g, o) in &groups {
            let _ = g.try_charge(2).unwrap();
            g.uncharge(2);
            let object = o.charge_object(100).unwrap().object;
            // SAFETY: from `charge_object` just above, given back once.
            unsafe { ObjGroup::<ThreadCpus>::uncharge_object(object, 100) };
            assert!(g.cached_units() > 0, "the thread's stock caches units");
            assert!(o.cached_bytes() > 0, "and bytes");
        }
        drop(groups);
        EXITING.with(|e| e.set(true));
    });
    t.join().unwrap();
}

#[test]
fn an_exited_threads_stocks_are_back_in_the_counters_of_every_tree_it_used() {
    let trees: Vec<Tree> = (0..3).map(|_| Tree::new()).collect();
    let groups: Vec<(Group, ObjGroup)> = trees
        .iter()
        .map(|t| {
            let g = t.root().create_child(GroupSpec::new()).unwrap();
            let o = g.obj_group().unwrap();
            (g, o)
        })
        .collect();
    let refs: Vec<(usize, usize)> = groups.iter().map(|(g, o)| (g.ref_count(), o.ref_count())).collect();
    // The baseline: a thread that caches nothing (the standard library's own teardown of
    // the thread may free its thread-local bookkeeping).
    let before = EXIT_CALLS.load(Ordering::Relaxed);
    cache_on_a_thread_and_exit(&[]);
    let baseline = EXIT_CALLS.load(Ordering::Relaxed) - before;
    let before = EXIT_CALLS.load(Ordering::Relaxed);
    cache_on_a_thread_and_exit(&groups);
    for (i, (g, o)) in groups.iter().enumerate() {
        assert_eq!(g.cached_units(), 0, "tree {i}: nothing cached for the exited thread");
        assert_eq!(o.cached_bytes(), 0, "tree {i}: no bytes either");
        assert_eq!(g.counter().usage(), 0, "tree {i}: every unit is back, without a drain");
        assert_eq!((g.ref_count(), o.ref_count()), refs[i], "tree {i}: the stock's references are back");
    }
    assert_eq!(
        EXIT_CALLS.load(Ordering::Relaxed) - before,
        baseline,
        "the exit hooks made allocator calls of their own"
    );
}

/// A thread that uses more trees at once than its index can carry exit hooks for caches
/// nothing in the others (so that nothing stays behind when it exits).
#[test]
fn a_thread_using_more_trees_than_it_has_hooks_for_leaves_nothing_behind() {
    let trees: Vec<Tree> = (0..EXIT_HOOKS + 2).map(|_| Tree::new()).collect();
    let groups: Vec<(Group, ObjGroup)> = trees
        .iter()
        .map(|t| {
            let g = t.root().create_child(GroupSpec::new()).unwrap();
            let o = g.obj_group().unwrap();
            (g, o)
        })
        .collect();
    let t = {
        let groups = groups.clone();
        thread::spawn(move || {
            let mut cached = 0;
            for (g, _) in &groups {
                let _ = g.try_charge(2).unwrap();
                g.uncharge(2);
                cached += usize::from(g.cached_units() > 0);
            }
            cached
        })
    };
    let cached = t.join().unwrap();
    assert!(cached <= EXIT_HOOKS, "{cached} trees cached for one thread");
    assert!(cached >= 1);
    for (g, _) in &groups {
        assert_eq!((g.cached_units(), g.counter().usage()), (0, 0));
    }
}

/// Dropping a tree forgets its hooks: threads that used it exit without touching it.
#[test]
fn threads_outliving_a_tree_exit_cleanly() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let t = thread::spawn(move || {
        let tree = Tree::new();
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        let _ = g.try_charge(1).unwrap();
        g.uncharge(1);
        tx.send(tree).unwrap();
        drop(g);
        go_rx.recv().unwrap();
    });
    let tree = rx.recv().unwrap();
    drop(tree); // drains the thread's stock remotely and forgets the hook
    go_tx.send(()).unwrap();
    t.join().unwrap();
}
