//! `TenantAlloc` keeps `GlobalAlloc`'s contract towards its caller and its inner allocator
//! (SOUNDNESS.md): it never hands the inner allocator a size no layout can have, and it never
//! unwinds, even when the embedder's code that the accounting runs panics.
//!
//! The inner allocator here is `Strict`: the system allocator, plus a record of every call
//! whose size is outside what `GlobalAlloc` allows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use chargetree::alloc::{self, TenantAlloc};
use chargetree::group::{Group, GroupSpec, Reclaimer, Tree, TreeConfig};

/// The system allocator, counting the calls that break `GlobalAlloc`'s size rule.
struct Strict;

static VIOLATIONS: AtomicUsize = AtomicUsize::new(0);

fn check(size: usize, align: usize) {
    if Layout::from_size_align(size, align).is_err() {
        VIOLATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to `System` unchanged; the checks only count.
unsafe impl GlobalAlloc for Strict {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size, layout.align());
        if Layout::from_size_align(new_size, layout.align()).is_err() {
            return std::ptr::null_mut(); // out of contract: refuse rather than pass it on
        }
        // SAFETY: forwarded, within the contract (checked just above).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: TenantAlloc<Strict> = TenantAlloc::new(Strict);

/// A growth to just under `isize::MAX` bytes is within the caller's contract, but the block
/// plus `TenantAlloc`'s header is not: `realloc` refuses it without calling the inner
/// allocator, charged tenant or not.
#[test]
fn a_realloc_past_what_a_layout_can_hold_is_refused_before_the_inner_allocator() {
    let huge = isize::MAX as usize - 5;
    let mut outside: Vec<u8> = vec![1];
    assert!(outside.try_reserve_exact(huge).is_err());
    assert_eq!(outside, [1], "the block is unchanged");

    let tree = Tree::new();
    let group = tree.root().create_child(GroupSpec::new().name("t")).unwrap();
    let tenant = group.obj_group().unwrap();
    let refused_before = alloc::stats().refused;
    {
        let _inside = alloc::enter(&tenant);
        let mut inside: Vec<u8> = vec![2];
        assert!(inside.try_reserve_exact(huge).is_err());
        assert_eq!(inside, [2]);
    }
    assert_eq!(VIOLATIONS.load(Ordering::Relaxed), 0, "no out-of-contract size reached the inner allocator");
    assert_eq!(alloc::stats().refused, refused_before, "refused for its size, not by a limit");
    let _ = tree.drain_all(&group);
    assert_eq!(group.counter().usage(), 0, "nothing was charged for the refused growth");
}

/// A reclaimer that panics.
struct Panics;

impl Reclaimer for Panics {
    fn reclaim(&self, _group: &Group, _amount: usize) -> usize {
        panic!("the embedder's reclaimer panics");
    }
}

const CHILD: &str = "CHARGETREE_TENANT_CONTRACT_CHILD";

/// In a child process (this test binary again): an allocation over a tenant's limit runs a
/// reclaimer that panics. Unwinding out of `GlobalAlloc::alloc` is undefined behaviour; the
/// allocator aborts instead, so the child dies of `SIGABRT` and never reaches its own end
/// (where an unwound panic would have been caught by the test harness: exit code 101).
#[test]
fn a_panicking_reclaimer_aborts_instead_of_unwinding_out_of_the_allocator() {
    if std::env::var_os(CHILD).is_some() {
        let tree = Tree::with_config(TreeConfig::new().reclaimer(Panics));
        let group = tree.root().create_child(GroupSpec::new().name("small").max(1)).unwrap();
        let tenant = group.obj_group().unwrap();
        let _inside = alloc::enter(&tenant);
        let mut v: Vec<u8> = Vec::new();
        let _ = v.try_reserve_exact(1 << 20); // over the limit: the reclaimer runs
        eprintln!("child: still alive after the reclaimer's panic");
        std::process::exit(3);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_panicking_reclaimer_aborts_instead_of_unwinding_out_of_the_allocator"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the embedder's reclaimer panics"), "the reclaimer ran: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "killed by SIGABRT: {:?}\n{stderr}", out.status);
    }
    #[cfg(not(unix))]
    assert!(!out.status.success() && out.status.code() != Some(101) && out.status.code() != Some(3));
}
