//! Creation under allocation failure, tested the way SQLite tests its malloc failures: a
//! global allocator that fails the Nth allocation of the current thread inside a window, run
//! for every N until the creation succeeds. After each failure the creation returned
//! `GroupError::OutOfMemory` and left nothing behind: every byte allocated inside the window
//! was freed, no id was taken, the parent is unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use chargetree::group::{GroupError, GroupSpec, Tree, TreeConfig};

struct FailNth;

std::thread_local! {
    // `const` initialisers and no destructors: touching these never allocates.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Allocations left before the one that fails.
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System` (or returns null, which `GlobalAlloc` allows), adding only
// thread-local bookkeeping that does not allocate.
unsafe impl GlobalAlloc for FailNth {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ACTIVE.try_with(Cell::get).unwrap_or(false) {
            match LEFT.with(Cell::get) {
                Some(0) => {
                    LEFT.with(|l| l.set(None));
                    return std::ptr::null_mut();
                }
                Some(n) => LEFT.with(|l| l.set(Some(n - 1))),
                None => {}
            }
            LIVE_BYTES.with(|b| b.set(b.get() + layout.size() as isize));
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ACTIVE.try_with(Cell::get).unwrap_or(false) {
            LIVE_BYTES.with(|b| b.set(b.get() - layout.size() as isize));
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) };
    }
}

#[global_allocator]
static ALLOCATOR: FailNth = FailNth;

/// Runs `f` with the `n`th allocation of this thread failing (`None`: none fails). Returns
/// its result, the bytes it left allocated, and whether the failure was used.
fn with_failure<R>(n: Option<usize>, f: impl FnOnce() -> R) -> (R, isize, bool) {
    LIVE_BYTES.with(|b| b.set(0));
    LEFT.with(|l| l.set(n));
    ACTIVE.with(|a| a.set(true));
    let r = f();
    ACTIVE.with(|a| a.set(false));
    let used = n.is_some() && LEFT.with(Cell::get).is_none();
    LEFT.with(|l| l.set(None));
    (r, LIVE_BYTES.with(Cell::get), used)
}

/// Tries `create` with each of its allocations failing in turn, then without failure.
/// Returns how many allocations the successful attempt made.
fn every_failure<T>(
    mut create: impl FnMut() -> Result<T, GroupError>,
    mut check_unchanged: impl FnMut(usize),
) -> (T, usize) {
    for n in 0.. {
        let (r, live, used) = with_failure(Some(n), &mut create);
        match r {
            Err(GroupError::OutOfMemory) => {
                assert!(used, "allocation {n}: OutOfMemory without a refused allocation");
                assert_eq!(live, 0, "allocation {n} refused: {live} bytes left allocated");
                check_unchanged(n);
            }
            Err(e) => panic!("allocation {n} refused: unexpected {e:?}"),
            Ok(t) => {
                assert!(!used, "allocation {n} was refused, yet the creation succeeded");
                return (t, n);
            }
        }
    }
    unreachable!()
}

#[test]
fn create_child_under_every_allocation_failure_leaves_nothing_behind() {
    let tree = Tree::new();
    let parent = tree.root().create_child(GroupSpec::new().name("parent")).unwrap();
    // Outside the windows: this thread's CPU index and epoch participant exist.
    drop(tree.pin());
    let before = tree.stats();
    let refs = parent.ref_count();
    let (child, allocations) = every_failure(
        || parent.create_child(GroupSpec::new().name("a tenant with a name").max(100)),
        |n| {
            assert_eq!(tree.stats(), before, "allocation {n} refused: the tree counted something");
            assert!(parent.children().is_empty(), "allocation {n} refused: a child was linked");
            assert_eq!(parent.ref_count(), refs, "allocation {n} refused: a reference was taken");
        },
    );
    assert!(allocations >= 2, "the node, its name and its reference count allocate");
    assert_eq!(child.name(), Some("a tenant with a name"));
    assert_eq!(child.id().index(), before.created, "the next id: no refused creation took one");
    assert_eq!(tree.stats().created, before.created + 1);
    let _ = child.try_charge(10).unwrap();
    child.uncharge(10);
}

#[test]
fn obj_group_under_every_allocation_failure_leaves_nothing_behind() {
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    drop(tree.pin());
    let before = tree.stats();
    let refs = g.ref_count();
    let (o, allocations) = every_failure(
        || g.try_obj_group(),
        |n| {
            assert_eq!(tree.stats(), before, "allocation {n} refused: an ObjGroup was counted");
            assert_eq!(g.ref_count(), refs, "allocation {n} refused: a reference on the group was kept");
        },
    );
    assert!(allocations >= 1);
    assert_eq!(tree.stats().objgroups_created, before.objgroups_created + 1);
    let _ = o.charge_bytes(100).unwrap();
    o.uncharge_bytes(100);
}

#[test]
fn tree_creation_under_every_allocation_failure_leaves_nothing_behind() {
    let (tree, allocations) = every_failure(
        || Tree::try_with_config(TreeConfig::new().root(GroupSpec::new().name("machine"))),
        |_| {},
    );
    assert!(allocations >= 3, "the stocks, the tree's state and the root allocate");
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    let _ = g.try_charge(1).unwrap();
    g.uncharge(1);
    assert_eq!(tree.root().name(), Some("machine"));
}

/// The harness can fail: a refused allocation is seen, and a leak in the window is counted.
#[test]
fn the_harness_sees_refusals_and_leaks() {
    let (r, live, used) = with_failure(Some(0), || {
        // SAFETY: a valid, non-zero layout.
        unsafe { std::alloc::alloc(Layout::new::<u64>()) }.is_null()
    });
    assert!(r && used && live == 0);
    let (b, live, used) = with_failure(None, || Box::new(1u64));
    assert!(!used);
    assert_eq!(live, 8);
    drop(b);
}
