//! What a group costs when a tree holds many: bytes per group, nanoseconds to create one, and
//! nanoseconds to take one offline, drop its handle and free it. The quick form of
//! `benches/scale.rs` (which times creation and removal at a fixed population with criterion).
//!
//! Usage: `cargo run --release --example scale -- [N] [--shards S] [--limit BYTES]`
//! (default N = 100000; several sizes: `-- 10000 100000 1000000`).
//!
//! Shape: N children of one parent group, which is the root's only child (a flat tree, every
//! group at depth 2), default [`TreeConfig`] unless `--shards` sets the reference-count
//! shards. For each N, in one fresh tree:
//!
//! * **bytes/group**: heap bytes live after creating the N groups minus before, over N,
//!   counted by this binary's global allocator (the bytes requested, without the C
//!   allocator's own overhead); **rss/group**: the growth of the process's resident set over
//!   the same span, over N (what the machine pays, malloc's headers and alignment included);
//! * **create ns/group**: the time to create the N groups (`create_child`), over N;
//! * **offline+free ns/group**: the time to take each group offline and drop its handle, then
//!   one [`Tree::reclaim`], over N. An `offline` frees the groups released before it once a batch
//!   of them waits (`OFFLINE_PUMP_BATCH`), and the final `reclaim` frees the rest: the figure includes every
//!   free (the tree's statistics are checked to say all N were freed); **heap left** is what
//!   the heap holds then beyond what it held before the creations (the epoch collector's
//!   own state, created on first use, and its bags: a few KiB, whatever N).
//!
//! `--limit BYTES` (`1G`, `512M`, ...) makes the global allocator refuse to grow the heap past
//! that many bytes; creation then stops at the first `GroupError::OutOfMemory` and the
//! example says how many groups fitted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chargetree::group::{Group, GroupError, GroupSpec, Tree, TreeConfig};

/// The system allocator, counting the bytes live and refusing to go past a limit.
struct Counting {
    live: AtomicUsize,
    peak: AtomicUsize,
    limit: AtomicUsize,
}

// SAFETY: forwards to `System` with the same layouts; the counters only add bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let was = self.live.fetch_add(size, Ordering::Relaxed);
        if was + size > self.limit.load(Ordering::Relaxed) {
            self.live.fetch_sub(size, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        self.peak.fetch_max(was + size, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            self.live.fetch_sub(size, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting =
    Counting { live: AtomicUsize::new(0), peak: AtomicUsize::new(0), limit: AtomicUsize::new(usize::MAX) };

fn live() -> usize {
    ALLOC.live.load(Ordering::Relaxed)
}

/// The process's resident set in bytes (Linux; 0 elsewhere).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn parse_bytes(s: &str) -> usize {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().unwrap_or_else(|_| panic!("not a byte count: {s}")) * mul
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

struct Row {
    n: usize,
    created: usize,
    bytes: f64,
    rss: f64,
    create_ns: f64,
    remove_ns: f64,
    left: isize,
}

fn run(n: usize, shards: Option<usize>) -> Row {
    let config = match shards {
        Some(s) => TreeConfig::new().refcount_shards(s),
        None => TreeConfig::new(),
    };
    let tree = Tree::with_config(config);
    let parent = tree.root().create_child(GroupSpec::new()).unwrap();
    // The handles' vector is allocated before the first count, so only the groups are counted.
    let mut groups: Vec<Group> = Vec::with_capacity(n);
    let (heap0, rss0) = (live(), rss());
    let start = Instant::now();
    for _ in 0..n {
        match parent.create_child(GroupSpec::new()) {
            Ok(g) => groups.push(g),
            Err(GroupError::OutOfMemory) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    let create = start.elapsed();
    let created = groups.len();
    let (heap1, rss1) = (live(), rss());
    // Removal pins the epoch, which allocates (the collector on first use, its bags): lift
    // the limit, which was only there to see how many groups fit.
    let limit = ALLOC.limit.swap(usize::MAX, Ordering::Relaxed);

    let freed0 = tree.stats().freed;
    let start = Instant::now();
    for g in groups.drain(..) {
        g.offline().unwrap();
        drop(g);
    }
    tree.reclaim();
    let remove = start.elapsed();
    let freed = tree.stats().freed - freed0;
    assert_eq!(freed, created, "every removed group is freed by the time it is measured");
    let left = live() as isize - heap0 as isize;
    drop(parent);
    drop(tree);
    ALLOC.limit.store(limit, Ordering::Relaxed);
    Row {
        n,
        created,
        bytes: (heap1 - heap0) as f64 / created.max(1) as f64,
        rss: rss1.saturating_sub(rss0) as f64 / created.max(1) as f64,
        create_ns: per(create, created.max(1)),
        remove_ns: per(remove, created.max(1)),
        left,
    }
}

fn main() {
    let mut sizes = Vec::new();
    let mut shards: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shards" => shards = Some(args.next().and_then(|s| s.parse().ok()).expect("--shards S")),
            "--limit" => {
                ALLOC.limit.store(parse_bytes(&args.next().expect("--limit BYTES")), Ordering::Relaxed)
            }
            "-h" | "--help" => {
                println!("usage: scale [N ...] [--shards S] [--limit BYTES]");
                return;
            }
            n => {
                sizes.push(n.replace('_', "").parse::<usize>().unwrap_or_else(|_| panic!("not a size: {n}")))
            }
        }
    }
    if sizes.is_empty() {
        sizes.push(100_000);
    }
    let limit = ALLOC.limit.load(Ordering::Relaxed);
    println!(
        "flat tree: N children of one parent at depth 2; refcount shards {}; heap limit {}",
        shards.map_or("default".to_string(), |s| s.to_string()),
        if limit == usize::MAX { "none".to_string() } else { format!("{limit} bytes") },
    );
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>16} {:>22} {:>10}",
        "groups",
        "created",
        "bytes/group",
        "rss/group",
        "create ns/group",
        "offline+free ns/group",
        "heap left"
    );
    for n in sizes {
        let r = run(n, shards);
        println!(
            "{:>10} {:>10} {:>12.1} {:>12.1} {:>16.1} {:>22.1} {:>10}",
            r.n, r.created, r.bytes, r.rss, r.create_ns, r.remove_ns, r.left
        );
    }
    println!("heap peak: {} bytes", ALLOC.peak.load(Ordering::Relaxed));
}
