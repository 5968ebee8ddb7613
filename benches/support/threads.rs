//! The multi-threaded bench harness shared by `benches/group.rs` and `benches/stock.rs`
//! (sharded-slab's `MultithreadedBench` shape).

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Runs `op` `iters` times on each of `threads` threads at once, started together at a
/// barrier so thread start is not timed; returns the slowest thread's time.
pub(crate) fn on_threads<T: Sync>(
    threads: usize,
    iters: u64,
    shared: &T,
    op: impl Fn(&T) + Sync,
) -> Duration {
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
