//! DESIGN.md rule 4, proved: everything an allocator reaches (charge, uncharge, handle
//! clone and drop, including the last drop, owner-cell swaps, `tryget`) never allocates,
//! never frees, and so never re-enters the allocator.
//!
//! This test binary installs a global allocator that counts every allocation and free made
//! while the current thread is inside a "forbidden" window. The windows wrap exactly the
//! library calls under test; a call made from inside `dealloc` (a put from the allocator's own
//! free path) is checked the same way.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};

use chargetree::cpu::ThreadCpus;
use chargetree::group::{Group, GroupSpec, OwnerCell, Tree};
use chargetree::objgroup::ObjGroup;

struct Checked;

std::thread_local! {
    // `const` initialisers and no destructors: touching these never allocates.
    static FORBIDDEN: Cell<bool> = const { Cell::new(false) };
    static REENTRIES: Cell<usize> = const { Cell::new(0) };
    static DROP_IN_DEALLOC: Cell<bool> = const { Cell::new(false) };
}

std::thread_local! {
    // Has a destructor: touched once outside the windows (see `arm`).
    static PENDING: RefCell<Option<Group>> = const { RefCell::new(None) };
}

fn note_call() {
    let _ = FORBIDDEN.try_with(|f| {
        if f.get() {
            REENTRIES.with(|r| r.set(r.get() + 1));
        }
    });
}

// SAFETY: forwards to `System`, adding only thread-local bookkeeping that does not allocate.
unsafe impl GlobalAlloc for Checked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_call();
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) };
        // A put from inside the allocator's free path: the library must not call back.
        if DROP_IN_DEALLOC.try_with(|d| d.replace(false)).unwrap_or(false) {
            let pending = PENDING.with(|p| p.borrow_mut().take());
            forbidden(|| drop(pending));
        }
    }
}

#[global_allocator]
static ALLOCATOR: Checked = Checked;

/// Runs `f` with allocation forbidden on this thread and returns how many allocator calls it
/// made.
fn forbidden<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = REENTRIES.with(Cell::get);
    let was = FORBIDDEN.with(|x| x.replace(true));
    let r = f();
    FORBIDDEN.with(|x| x.set(was));
    (r, REENTRIES.with(Cell::get) - before)
}

/// Takes this thread's CPU index and registers its thread-local destructors outside the
/// windows (the first use of a thread-local with a destructor may allocate in the C library).
fn warm_up() {
    let _ = ThreadCpus::register_current_thread();
    PENDING.with(|p| drop(p.borrow_mut().take()));
}

#[test]
fn clone_and_drop_of_a_live_handle_never_allocate() {
    warm_up();
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
    let (_, calls) = forbidden(|| {
        for _ in 0..1000 {
            let h = g.clone();
            drop(h);
        }
    });
    assert_eq!(calls, 0);
}

#[test]
fn charge_and_uncharge_never_allocate_even_when_refused() {
    warm_up();
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
    let (results, calls) = forbidden(|| {
        let ok = g.counter().try_charge(60).is_ok();
        let refused = g.counter().try_charge(60).is_err();
        let _ = g.counter().try_uncharge(1000); // bad input: clamped, counted, no allocation
        (ok, refused)
    });
    assert_eq!(calls, 0);
    assert_eq!(results, (true, true));
    assert_eq!(g.counter().usage(), 0);
}

#[test]
fn the_last_drop_queues_without_allocating_and_frees_later() {
    warm_up();
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    let child = g.create_child(GroupSpec::new()).unwrap();
    child.offline().unwrap();
    g.offline().unwrap();
    let before = tree.stats();
    let (_, calls) = forbidden(|| {
        drop(child); // last reference of the child
        drop(g); // last outside reference of the parent (the child's is freed later)
    });
    assert_eq!(calls, 0, "the last put must not allocate or free");
    let after = tree.stats();
    assert_eq!(after.released, before.released + 1, "the child is released at once");
    assert_eq!(after.freed, before.freed, "but not freed inside the window");
    tree.reclaim();
    let done = tree.stats();
    assert_eq!(done.freed, before.freed + 2, "child then parent are freed by reclamation");
}

#[test]
fn a_put_from_inside_dealloc_does_not_reenter_the_allocator() {
    warm_up();
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    g.offline().unwrap();
    let before = tree.stats();
    PENDING.with(|p| *p.borrow_mut() = Some(g));
    let reentries_before = REENTRIES.with(Cell::get);
    // The next free on this thread drops the group's last handle from inside `dealloc`.
    DROP_IN_DEALLOC.with(|d| d.set(true));
    drop(Box::new(42u64));
    assert!(!DROP_IN_DEALLOC.with(Cell::get), "the dealloc hook ran");
    assert_eq!(REENTRIES.with(Cell::get), reentries_before, "no allocator call from the put");
    assert_eq!(tree.stats().released, before.released + 1);
    tree.reclaim();
    assert_eq!(tree.stats().freed, before.freed + 1);
}

#[test]
fn owner_cell_swaps_and_tryget_never_allocate() {
    warm_up();
    let tree = Tree::new();
    let a = tree.root().create_child(GroupSpec::new()).unwrap();
    let b = tree.root().create_child(GroupSpec::new()).unwrap();
    let cell = OwnerCell::new(a.clone());
    let guard = tree.pin(); // pinning is not an allocator path: done outside the window
    let (got, calls) = forbidden(|| {
        let got = cell.get(&guard).map(|g| g.id());
        let old = cell.replace(Some(b.clone()));
        drop(old);
        let back = cell.take();
        drop(back);
        got
    });
    drop(guard);
    assert_eq!(calls, 0);
    assert_eq!(got, Some(a.id()));
    assert!(cell.is_empty());
}

#[test]
fn the_checker_sees_allocations_and_frees() {
    // The harness itself can fail: an allocation and a free inside a window are counted.
    let ((), calls) = forbidden(|| drop(std::hint::black_box(Box::new(7u32))));
    assert_eq!(calls, 2);
}

#[test]
fn object_charges_and_their_references_never_allocate() {
    warm_up();
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new().max(64)).unwrap();
    let o = g.obj_group().unwrap();
    let (objects, calls) = forbidden(|| {
        let mut kept = [None; 64];
        // Misses and hits of the object stock, batches of spare references taken and given
        // back, and a charge refused at the limit (64 units of 4 KiB).
        for round in 0..100 {
            for (i, slot) in kept.iter_mut().enumerate() {
                if let Some((obj, size)) = slot.take() {
                    // SAFETY: from `charge_object` below, given back once.
                    unsafe { ObjGroup::<ThreadCpus>::uncharge_object(obj, size) };
                } else if let Ok(c) = o.charge_object(64 + (i * 97 + round) % 3000) {
                    *slot = Some((c.object, 64 + (i * 97 + round) % 3000));
                }
            }
        }
        let refused = o.charge_object(1 << 30).is_err();
        (kept, refused)
    });
    assert_eq!(calls, 0);
    let (kept, refused) = objects;
    assert!(refused);
    // The group goes offline with objects alive; the last object's reference is then the
    // ObjGroup's last: giving it back releases the ObjGroup without allocating.
    g.offline().unwrap();
    drop(o);
    let before = tree.stats();
    let (_, calls) = forbidden(|| {
        for (obj, size) in kept.into_iter().flatten() {
            // SAFETY: as above.
            unsafe { ObjGroup::<ThreadCpus>::uncharge_object(obj, size) };
        }
        let _ = tree.drain_local();
    });
    assert_eq!(calls, 0, "the last object's put queues the ObjGroup without allocating");
    tree.reclaim();
    assert_eq!(tree.stats().objgroups_freed, before.objgroups_freed + 1);
    // Every byte came back: to the root, which the ObjGroup points at since the offline.
    let _ = tree.drain_all(&tree.root());
    assert_eq!(tree.root().counter().usage(), 0);
}

/// The same rule once the `Tree` handle is gone (the dropped-tree state): the last object's
/// reference, the last `ObjGroup` handle, an owner cell's last reference and the last
/// `Group` handle, dropped inside the window, neither allocate nor free (nor pin, lock or
/// drop the observer); the next reclamation point outside frees everything.
#[test]
fn the_last_puts_of_a_dropped_tree_never_allocate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chargetree::group::{GroupId, Observer, TreeConfig, reclaim_orphans};

    #[derive(Default)]
    struct Freed(AtomicUsize);
    struct Count(Arc<Freed>);
    impl Observer for Count {
        fn freed(&self, _: GroupId) {
            self.0.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    warm_up();
    let freed = Arc::new(Freed::default());
    let tree = Tree::with_config(TreeConfig::new().observer(Count(freed.clone())));
    let a = tree.root().create_child(GroupSpec::new()).unwrap();
    let b = a.create_child(GroupSpec::new()).unwrap();
    let o = b.obj_group().unwrap();
    let object = o.charge_object(100).unwrap().object;
    let cell = OwnerCell::new(a.clone());
    let created = tree.stats().created;
    drop(tree);
    assert_eq!(freed.0.load(Ordering::Relaxed), 0, "every group is still held");

    let (_, calls) = forbidden(|| {
        // SAFETY: from `charge_object` above, given back once.
        unsafe { ObjGroup::<ThreadCpus>::uncharge_object(object, 100) };
    });
    assert_eq!(calls, 0, "uncharge_object of a detached tree's last object");
    let (_, calls) = forbidden(|| drop(o));
    assert_eq!(calls, 0, "the last ObjGroup handle");
    let (_, calls) = forbidden(|| drop(cell.take()));
    assert_eq!(calls, 0, "an owner cell's reference");
    let (_, calls) = forbidden(|| drop(b));
    assert_eq!(calls, 0, "a group's last handle");
    let root = a.parent().unwrap();
    drop(a);
    let (_, calls) = forbidden(|| drop(root));
    assert_eq!(calls, 0, "the root's last handle, which would free the tree's bookkeeping");
    drop(cell);
    assert_eq!(Arc::strong_count(&freed), 2, "the bookkeeping (and its observer) is still there");

    reclaim_orphans();
    assert_eq!(freed.0.load(Ordering::Relaxed), created, "the next reclamation point frees every group");
    assert_eq!(Arc::strong_count(&freed), 1, "and the tree's bookkeeping with its observer");
}
