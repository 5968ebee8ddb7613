//! chargetree's stocked charge against Apache DataFusion's memory pool, all measured in the
//! same run (one criterion group, `peer datafusion`).
//!
//! * `datafusion greedy`: a `GreedyMemoryPool` with a large limit; each thread has its own
//!   `MemoryReservation`, registered from its own `MemoryConsumer`; one op is
//!   `try_grow(1)` + `shrink(1)`.
//! * `datafusion track(greedy, top 5)`: the same on a `TrackConsumersPool` wrapping a
//!   `GreedyMemoryPool` with top-K 5, the pool `RuntimeEnvBuilder::with_memory_limit` builds.
//! * `chargetree stocked depth 4`: `Group::try_charge(1)` + `Group::uncharge(1)` on a
//!   depth-4 group (root → a → b → leaf, limits of 2^40 below the root), served by the
//!   current CPU's stock; both threads charge the same group. Written as in
//!   benches/stock.rs (the returned `Charged` passed whole to `black_box`).
//! * `chargetree stocked depth 4 (checked)`: the same pair with the result unwrapped and
//!   `over_high` checked, as the DataFusion cases unwrap their `Result<()>`.
//!
//! Each case runs from one thread and from two threads at once on the same pool / group.
//! Two-thread cases time only the loop: the threads start at a barrier, each times its own
//! loop, and the slowest thread's time is the sample.
//!
//! Goal (issue "Benchmark suite"): chargetree ≥ 4× faster than the flat greedy pool on one
//! thread and ≥ 20× on two threads.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chargetree::group::{Group, GroupSpec, Tree};
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion_execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, TrackConsumersPool,
};

/// The pools' limit: large enough that `try_grow(1)` never fails.
const POOL_SIZE: usize = 1 << 50;
/// `RuntimeEnvBuilder::with_memory_limit`'s top-K.
const TOP_K: usize = 5;

/// Runs `op(&per_thread[i])` `iters` times on thread `i`, all threads released by one
/// barrier; returns the slowest thread's loop time.
fn on_threads<T: Sync>(iters: u64, per_thread: &[T], op: impl Fn(&T) + Sync) -> Duration {
    let start = Barrier::new(per_thread.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|state| {
                let (start, op) = (&start, &op);
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        op(state);
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

/// A reservation on a cache line (pair) of its own: a `MemoryReservation` is 16 bytes, and
/// two of them side by side in a `Vec` would falsely share a line, charging DataFusion for
/// contention on the reservations' own `size` counters that real operators (each holding its
/// reservation in its own state) do not have.
#[repr(align(128))]
struct Padded(MemoryReservation);

/// One reservation per thread, each registered from its own consumer.
fn reservations(pool: &Arc<dyn MemoryPool>, threads: usize) -> Vec<Padded> {
    (0..threads).map(|i| Padded(MemoryConsumer::new(format!("bench-{i}")).register(pool))).collect()
}

fn df_pair(r: &Padded) {
    r.0.try_grow(black_box(1)).unwrap();
    r.0.shrink(black_box(1));
}

/// A chain of `depth` groups below the root, each with a large limit; returns the deepest.
fn chain(tree: &Tree, depth: usize) -> Group {
    let mut g = tree.root();
    for _ in 0..depth {
        g = g.create_child(GroupSpec::new().max(1 << 40)).unwrap();
    }
    g
}

/// benches/stock.rs's stocked pair: the whole `Charged` goes through `black_box`.
fn stocked_pair(g: &Group) {
    let c = g.try_charge(black_box(1)).unwrap();
    let _ = black_box(c);
    g.uncharge(black_box(1));
}

/// The same pair as a caller writes it: the `Result` is unwrapped and `over_high` checked,
/// the way the DataFusion cases unwrap their `Result<()>`. (Passing the whole `Charged` to
/// `black_box` copies it through the stack with loads that only partly overlap the stores
/// that built it, a store-forwarding stall; see README.)
fn stocked_pair_checked(g: &Group) {
    let c = g.try_charge(black_box(1)).unwrap();
    black_box(c.over_high.is_some());
    g.uncharge(black_box(1));
}

fn bench(c: &mut Criterion) {
    let greedy: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(POOL_SIZE));
    let track: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
        GreedyMemoryPool::new(POOL_SIZE),
        NonZeroUsize::new(TOP_K).unwrap(),
    ));
    let greedy_res = reservations(&greedy, 2);
    let track_res = reservations(&track, 2);

    let tree = Tree::new();
    // Depth 4 counting the leaf itself: root → a → b → leaf.
    let leaf = chain(&tree, 3);
    let same_group = [&leaf, &leaf];

    let mut g = c.benchmark_group("peer datafusion");
    g.bench_function("datafusion greedy, 1 thread", |b| b.iter(|| df_pair(black_box(&greedy_res[0]))));
    g.bench_function("datafusion track(greedy, top 5), 1 thread", |b| {
        b.iter(|| df_pair(black_box(&track_res[0])))
    });
    g.bench_function("chargetree stocked depth 4, 1 thread", |b| b.iter(|| stocked_pair(black_box(&leaf))));
    g.bench_function("chargetree stocked depth 4 (checked), 1 thread", |b| {
        b.iter(|| stocked_pair_checked(black_box(&leaf)))
    });
    g.bench_function("datafusion greedy, 2 threads", |b| {
        b.iter_custom(|iters| on_threads(iters, &greedy_res, |r| df_pair(black_box(r))))
    });
    g.bench_function("datafusion track(greedy, top 5), 2 threads", |b| {
        b.iter_custom(|iters| on_threads(iters, &track_res, |r| df_pair(black_box(r))))
    });
    g.bench_function("chargetree stocked depth 4, 2 threads", |b| {
        b.iter_custom(|iters| on_threads(iters, &same_group, |l| stocked_pair(black_box(l))))
    });
    g.bench_function("chargetree stocked depth 4 (checked), 2 threads", |b| {
        b.iter_custom(|iters| on_threads(iters, &same_group, |l| stocked_pair_checked(black_box(l))))
    });
    g.finish();

    // Everything charged was returned.
    assert_eq!((greedy.reserved(), track.reserved()), (0, 0));
    assert!(greedy_res.iter().chain(&track_res).all(|r| r.0.size() == 0));
}

criterion_group!(benches, bench);
criterion_main!(benches);
