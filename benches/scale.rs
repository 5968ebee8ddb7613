//! Many groups in one tree: what creating a group, and taking one offline and freeing it,
//! cost when the tree already holds 10,000 / 100,000 / 1,000,000 groups, and how many bytes
//! each group takes.
//!
//! Shape: a flat tree. The population is N children of one parent group, itself the root's
//! only child (every group at depth 2), default [`TreeConfig`]; it is created once per size
//! and taken down after that size's benches.
//!
//! * `scale/create/N`: `create_child` on the parent, the population at N. Timed in chunks of
//!   N/100 creations; after each chunk, untimed, the new groups are taken offline and freed,
//!   so the population stays between N and N + N/100.
//! * `scale/offline+free/N`: a chunk of N/100 extra groups is created untimed; then, timed,
//!   each is taken offline and its handle dropped, and one [`Tree::reclaim`] ends the chunk.
//!   The cost includes every free: an `offline` frees the groups released before it once a
//!   batch of them waits (`OFFLINE_PUMP_BATCH`), and the final `reclaim` frees the rest (checked with the tree's
//!   statistics after every chunk: a chunk that left a group unfreed panics).
//! * bytes per group: heap bytes live after creating the population minus before, over N,
//!   counted by this binary's global allocator (the bytes requested from it, without the C
//!   allocator's own overhead), and the growth of the resident set over N (with it). Criterion
//!   cannot report bytes: the table is printed at the end and written to
//!   `target/criterion/scale-bytes.txt` (`$CARGO_TARGET_DIR/criterion/` if set).
//!
//! Criterion settings: 10 samples per bench, flat sampling, 1 s warm-up, 3 s measurement;
//! the whole bench takes about a minute and a half (most of it creating and taking down the
//! million-group population and the untimed halves of each chunk). In test mode (`cargo test
//! --benches`, no `--bench` argument) only N = 1,000 runs.
//!
//! `cargo run --release --example scale -- N` gives the same three figures for one N in
//! seconds, without criterion.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chargetree::group::{Group, GroupSpec, Tree};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

/// The system allocator, counting the bytes live.
struct Counting(AtomicUsize);

// SAFETY: forwards to `System` with the same layouts; the counter only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.0.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) };
        self.0.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting(AtomicUsize::new(0));

fn live() -> usize {
    ALLOC.0.load(Ordering::Relaxed)
}

/// The process's resident set in bytes (Linux; 0 elsewhere).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Takes `groups` offline, drops them and frees them; panics if any is left unfreed.
fn remove(tree: &Tree, groups: &mut Vec<Group>) {
    let n = groups.len();
    let freed = tree.stats().freed;
    for g in groups.drain(..) {
        g.offline().unwrap();
        drop(g);
    }
    tree.reclaim();
    assert_eq!(tree.stats().freed - freed, n, "every removed group is freed");
}

/// One size's population: bytes and creation time.
struct Population {
    n: usize,
    bytes: f64,
    rss: f64,
    create_ns: f64,
}

fn bench(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full { &[10_000, 100_000, 1_000_000] } else { &[1_000] };
    let mut table = Vec::new();
    let mut g = c.benchmark_group("scale");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &n in sizes {
        let tree = Tree::new();
        let parent = tree.root().create_child(GroupSpec::new()).unwrap();
        let chunk = (n / 100).max(1);
        // Reserved before the first count, so that only the groups are counted.
        let mut population: Vec<Group> = Vec::with_capacity(n);
        let mut extra: Vec<Group> = Vec::with_capacity(chunk);
        let (heap0, rss0) = (live(), rss());
        let start = Instant::now();
        for _ in 0..n {
            population.push(parent.create_child(GroupSpec::new()).unwrap());
        }
        let elapsed = start.elapsed();
        table.push(Population {
            n,
            bytes: (live() - heap0) as f64 / n as f64,
            rss: rss().saturating_sub(rss0) as f64 / n as f64,
            create_ns: elapsed.as_nanos() as f64 / n as f64,
        });

        g.bench_function(BenchmarkId::new("create", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let k = left.min(chunk);
                    let start = Instant::now();
                    for _ in 0..k {
                        extra.push(parent.create_child(GroupSpec::new()).unwrap());
                    }
                    timed += start.elapsed();
                    remove(&tree, &mut extra);
                    left -= k;
                }
                timed
            })
        });
        g.bench_function(BenchmarkId::new("offline+free", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let k = left.min(chunk);
                    for _ in 0..k {
                        extra.push(parent.create_child(GroupSpec::new()).unwrap());
                    }
                    let start = Instant::now();
                    remove(&tree, &mut extra);
                    timed += start.elapsed();
                    left -= k;
                }
                timed
            })
        });
        remove(&tree, &mut population);
    }
    g.finish();

    let mut out = String::new();
    writeln!(out, "scale: bytes per group (flat tree, N children of one parent, default TreeConfig)")
        .unwrap();
    writeln!(
        out,
        "{:>10} {:>12} {:>12} {:>26}",
        "groups", "heap bytes", "rss bytes", "create ns/group (0 to N)"
    )
    .unwrap();
    for p in &table {
        writeln!(out, "{:>10} {:>12.1} {:>12.1} {:>26.1}", p.n, p.bytes, p.rss, p.create_ns).unwrap();
    }
    print!("\n{out}");
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), std::path::PathBuf::from);
    let dir = dir.join("criterion");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("scale-bytes.txt"), out);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
