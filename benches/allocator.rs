//! The shipped accounting allocator (`chargetree::alloc::TenantAlloc`) against the same
//! workloads on its inner allocator (`System`) and on `cap::Cap<System>` (a global byte
//! counter in one shared atomic, the one-line alternative), in the same run.
//!
//! This bench binary's global allocator dispatches each allocation to one of the three by a
//! per-thread mode, behind one small prefix that every block gets in every mode (it records
//! the mode, so a block is always freed by the allocator that made it): the dispatch costs
//! the same in every mode, so the differences are the accounting's.
//!
//! * `collections`: grow a `Vec<u64>` to 20,000 elements by pushing, fill a
//!   `HashMap<u64, String>` with 500 entries, drop both, on one thread. Target: accounting
//!   at most 5 % above the inner allocator.
//! * `box16 pair, N threads`: N threads (1, 2, 4) each do `Box::new([0u8; 16])` + drop in a
//!   loop, all in one tenant. Target: at most 2 ns more per pair than the inner allocator,
//!   and at least 5 × less added cost than `cap`, on 2 threads.
//! * `allocator_api2 GroupAlloc`: one collection charged to one group, against the same
//!   collection on `allocator_api2`'s `Global`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use cap::Cap;
use chargetree::alloc::{self, GroupAlloc, TenantAlloc};
use chargetree::group::{GroupSpec, LazyTree, TreeConfig};
use chargetree::objgroup::ObjGroup;
use criterion::{Criterion, criterion_group, criterion_main};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    System = 0,
    Cap = 1,
    Tenant = 2,
}

std::thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::System) };
}

/// The dispatching global allocator (see the module docs).
struct Switch {
    cap: Cap<System>,
    tenant: TenantAlloc<System>,
}

/// The prefix every block gets: enough for any alignment up to 16 (larger ones use their
/// alignment), the mode in its last byte.
const PREFIX: usize = 16;

fn prefix(layout: Layout) -> usize {
    layout.align().max(PREFIX)
}

impl Switch {
    /// # Safety
    ///
    /// `GlobalAlloc`'s contracts, with `mode` the block's.
    unsafe fn inner(&self, mode: Mode) -> &dyn GlobalAlloc {
        match mode {
            Mode::System => &System,
            Mode::Cap => &self.cap,
            Mode::Tenant => &self.tenant,
        }
    }
}

// SAFETY: every block is an inner block of the mode's allocator offset by `prefix(layout)`
// (a multiple of the alignment); the mode byte right before the block selects the allocator
// that frees or grows it, with the layout it was allocated with.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mode = MODE.try_with(Cell::get).unwrap_or(Mode::System);
        let p = prefix(layout);
        let Ok(full) = Layout::from_size_align(layout.size() + p, p) else { return std::ptr::null_mut() };
        // SAFETY: non-zero size; the mode byte is inside the prefix.
        unsafe {
            let base = self.inner(mode).alloc(full);
            if base.is_null() {
                return base;
            }
            let block = base.add(p);
            block.sub(1).write(mode as u8);
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let p = prefix(layout);
        // SAFETY: as in `alloc`.
        unsafe {
            let mode = match block.sub(1).read() {
                0 => Mode::System,
                1 => Mode::Cap,
                _ => Mode::Tenant,
            };
            let full = Layout::from_size_align_unchecked(layout.size() + p, p);
            self.inner(mode).dealloc(block.sub(p), full);
        }
    }
}

#[global_allocator]
static ALLOC: Switch = Switch { cap: Cap::new(System, usize::MAX), tenant: TenantAlloc::new(System) };

static TREE: LazyTree = LazyTree::new(TreeConfig::new);

fn collections() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..20_000u64 {
        v.push(black_box(i));
    }
    let mut m: HashMap<u64, String> = HashMap::new();
    for i in 0..500u64 {
        m.insert(i, format!("value-{i}"));
    }
    black_box((&v, &m));
}

/// Runs `iters` iterations of `op` on `threads` threads in `mode` (inside `tenant` for
/// `Mode::Tenant`), started together; the slowest thread's time.
fn on_threads(threads: usize, iters: u64, mode: Mode, tenant: &ObjGroup, op: impl Fn() + Sync) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let _inside = (mode == Mode::Tenant).then(|| alloc::enter(tenant));
                    MODE.with(|m| m.set(mode));
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    let elapsed = t.elapsed();
                    MODE.with(|m| m.set(Mode::System));
                    elapsed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn box16_pair() {
    drop(black_box(Box::new([0u8; 16])));
}

fn bench(c: &mut Criterion) {
    let tenant = TREE.root().create_child(GroupSpec::new().name("tenant")).unwrap();
    let objgroup = tenant.obj_group().unwrap();

    let mut g = c.benchmark_group("allocator");
    for mode in [Mode::System, Mode::Cap, Mode::Tenant] {
        g.bench_function(format!("collections, {mode:?}"), |b| {
            b.iter_custom(|iters| on_threads(1, iters, mode, &objgroup, collections))
        });
    }
    for threads in [1, 2, 4] {
        for mode in [Mode::System, Mode::Cap, Mode::Tenant] {
            g.bench_function(format!("box16 pair, {threads} threads, {mode:?}"), |b| {
                b.iter_custom(|iters| on_threads(threads, iters, mode, &objgroup, box16_pair))
            });
        }
    }
    g.bench_function("allocator_api2 vec, Global", |b| {
        b.iter(|| {
            let mut v = allocator_api2::vec::Vec::new_in(allocator_api2::alloc::Global);
            for i in 0..20_000u64 {
                v.push(black_box(i));
            }
            black_box(&v);
        })
    });
    let group_alloc = GroupAlloc::new(objgroup.clone());
    g.bench_function("allocator_api2 vec, GroupAlloc", |b| {
        b.iter(|| {
            let mut v = allocator_api2::vec::Vec::new_in(group_alloc.clone());
            for i in 0..20_000u64 {
                v.push(black_box(i));
            }
            black_box(&v);
        })
    });
    g.finish();
    assert_eq!(alloc::stats().nested, 0, "the accounting allocated inside the allocator");
}

criterion_group!(benches, bench);
criterion_main!(benches);
