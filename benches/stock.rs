//! The per-CPU stock against its baselines, all measured in the same run.
//!
//! * `thread-local add/sub`: a `Cell<usize>` in a thread-local, +1 then −1 (the floor).
//! * `atomic pair`: one shared `AtomicUsize` `fetch_add(1)` + `fetch_sub(1)` (SeqCst, the
//!   strength of the counter's RMW), from one thread and from two threads at once.
//! * `stocked pair`: `Group::try_charge(1)` + `Group::uncharge(1)` on a depth-4 group (three
//!   ancestors above it) served by this CPU's stock, from one and from two threads.
//! * `64-byte object pair`: `ObjGroup::charge_bytes(64)` + `uncharge_bytes(64)` through the
//!   object stock (issue "Byte-granular object charging": ≤ 0.5 × one atomic pair).
//! * `unstocked depth 4`: `Counter::try_charge(1)` + `uncharge(1)` on the same group: the
//!   hierarchical walk the stock avoids.
//! * `thrash`: charging 1 unit round-robin over N sibling groups from one thread, with N
//!   below, at and above the stock's capacity (8 entries per CPU).
//!
//! Targets (issue "Per-CPU charge stock"): stocked pair ≤ 0.5 × one uncontended atomic pair
//! and ≤ 2.5 × the thread-local pair; two threads on one group within 1.3 × one thread; at
//! two threads ≥ 10 × faster than the shared atomic.
//!
//! Two-thread cases time only the loop (barrier start; the slowest thread's time).

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chargetree::group::{Group, GroupSpec, Tree};
use criterion::{Criterion, criterion_group, criterion_main};

fn on_threads<T: Sync>(threads: usize, iters: u64, shared: &T, op: impl Fn(&T) + Sync) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        op(shared);
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

std::thread_local! {
    static LOCAL: Cell<usize> = const { Cell::new(0) };
}

/// A chain of `depth` groups below the root; returns the deepest.
fn chain(tree: &Tree, depth: usize) -> Group {
    let mut g = tree.root();
    for _ in 0..depth {
        g = g.create_child(GroupSpec::new().max(1 << 40)).unwrap();
    }
    g
}

fn stocked_pair(g: &Group) {
    let c = g.try_charge(black_box(1)).unwrap();
    let _ = black_box(c);
    g.uncharge(black_box(1));
}

fn bench(c: &mut Criterion) {
    let tree = Tree::new();
    // Depth 4 counting the group itself: the root and two more ancestors above it.
    let leaf = chain(&tree, 3);
    let atomic = AtomicUsize::new(0);

    let mut g = c.benchmark_group("stock");
    g.bench_function("thread-local add/sub", |b| {
        b.iter(|| {
            LOCAL.with(|l| l.set(black_box(l.get() + 1)));
            LOCAL.with(|l| l.set(black_box(l.get() - 1)));
        })
    });
    g.bench_function("atomic pair, 1 thread", |b| {
        b.iter(|| {
            black_box(&atomic).fetch_add(1, Ordering::SeqCst);
            black_box(&atomic).fetch_sub(1, Ordering::SeqCst);
        })
    });
    g.bench_function("stocked pair depth 4, 1 thread", |b| b.iter(|| stocked_pair(black_box(&leaf))));
    let objgroup = leaf.obj_group().unwrap();
    g.bench_function("64-byte object pair, 1 thread", |b| {
        b.iter(|| {
            let c = objgroup.charge_bytes(black_box(64)).unwrap();
            let _ = black_box(c);
            objgroup.uncharge_bytes(black_box(64));
        })
    });
    g.bench_function("unstocked depth 4, 1 thread", |b| {
        b.iter(|| {
            leaf.counter().try_charge(black_box(1)).unwrap();
            leaf.counter().uncharge(black_box(1));
        })
    });
    g.bench_function("atomic pair, 2 threads", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, &atomic, |a| {
                black_box(a).fetch_add(1, Ordering::SeqCst);
                black_box(a).fetch_sub(1, Ordering::SeqCst);
            })
        })
    });
    g.bench_function("stocked pair depth 4, 2 threads", |b| {
        b.iter_custom(|iters| on_threads(2, iters, &leaf, |l| stocked_pair(black_box(l))))
    });
    g.bench_function("unstocked depth 4, 2 threads", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, &leaf, |l| {
                l.counter().try_charge(black_box(1)).unwrap();
                l.counter().uncharge(black_box(1));
            })
        })
    });
    g.finish();

    // More groups charging on one CPU than the stock has entries.
    let mut t = c.benchmark_group("stock thrash");
    for n in [4usize, 8, 9, 16] {
        let groups: Vec<Group> =
            (0..n).map(|_| leaf.parent().unwrap().create_child(GroupSpec::new()).unwrap()).collect();
        let mut i = 0;
        t.bench_function(format!("{n} groups round-robin, 1 thread"), |b| {
            b.iter(|| {
                let g = &groups[i % n];
                i += 1;
                stocked_pair(g);
            })
        });
        for g in &groups {
            g.offline().unwrap();
        }
    }
    t.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
