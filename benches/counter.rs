//! Cost of the counter's hot path against the floor of one atomic RMW per level each way.
//!
//! Every case is one *pair*: charge 1 then uncharge 1, so the state is the same before and
//! after each iteration. All cases are in the criterion group `pair`, measured in one run.
//!
//! Depth convention: **depth D = D counters in total**, the leaf the charge is made on plus
//! its D − 1 ancestors (depth 1 is a lone root). A pair at depth D therefore does exactly D
//! atomic increments and D atomic decrements of `usage`, so the floor is D atomic
//! pairs and its target is "pair at depth D ≤ 1.2 × D × (one atomic pair)".
//!
//! Cases:
//!
//! * `atomic_seqcst`, `atomic_acqrel`: the unit. One shared, cache-line-aligned
//!   `AtomicUsize`, `fetch_add(1)` then `fetch_sub(1)`, both results used (so x86 emits
//!   `lock xadd` for both, as on the counter's path, rather than `lock add`). `SeqCst` matches
//!   the counter's `fetch_add` (`try_charge`); the counter's `fetch_sub` (`uncharge`) is
//!   `AcqRel`. On x86-64 both orderings compile to the same `lock xadd`, so the two cases
//!   should agree; both are kept to show that.
//! * `atomic_blackbox`: `atomic_seqcst` written naively with `black_box` on the inputs and
//!   both results. Not used for the ratios; it shows how much the stack stores cost.
//! * `atomic_xD`: D independent atomic pairs, each on its own cache line, in one iteration
//!   (D `fetch_add`s, then D `fetch_sub`s, unrolled): the literal "D × atomic pair" as one
//!   loop body, for D = 4, 8.
//! * `floor_dD`: a minimal hierarchical counter written here (per level: one `SeqCst`
//!   `fetch_add`, one `SeqCst` load of `max`, a compare, the parent pointer; uncharge: one
//!   `AcqRel` `fetch_sub` and the parent pointer). The shape of Linux's `page_counter` with
//!   protection and peaks compiled out: what a chained walk costs on this machine.
//! * `counter_dD`: `chargetree::counter::Counter` with its defaults (protection tracking and
//!   fail counting on, no limits, `min = low = 0`), `try_charge(1)` + `uncharge(1)` on the
//!   leaf. This is the case the target is about.
//! * `counter_noprot_dD`: the same chain built with `.without_protection().without_failcnt()`,
//!   to separate the protection check's share of the per-level cost.
//!
//! Chains are `Box::leak`ed (so parents are `&'static`) and warmed once so that the peaks
//! already hold 1 and the peak check stays on its "no new peak" branch, as in steady state.
//! Amounts and the leaf reference go through `opaque` (an empty register-only `asm!`) each
//! iteration, so nothing is constant-folded or hoisted out of the loop, and RMW results are
//! consumed by `sink`; see `opaque` for why not `std::hint::black_box` (the naive
//! `black_box` baseline is kept as the extra case `atomic_blackbox`).
//!
//! # Instruction counts (callgrind)
//!
//! With `CHARGETREE_CALLGRIND=<case>` (and optionally `CHARGETREE_ITERS=<n>`, default
//! 1_000_000) `main` skips criterion and runs only that case's loop body `n` times. Running
//! it under `valgrind --tool=callgrind` with `n` and `2n` and dividing the difference of the
//! total `Ir` by `n` gives the exact instructions per pair (setup and process start-up
//! cancel; the loop's own increment/compare/branch is included, as in every case). See
//! BENCHMARKS.md for the script.

use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chargetree::counter::Counter;
use criterion::Criterion;

/// Cache-line (pair) aligned, like the crate's `CachePadded` on x86-64.
#[repr(align(128))]
struct Pad<T>(T);

const DEPTHS: [usize; 3] = [1, 4, 8];

// ---------------------------------------------------------------------------------------
// Loop bodies. `#[inline(always)]` so criterion's loop and the callgrind loop run the same
// code.

// `opaque`, `sink` and `opaque_ref`: register-only value hiding, shared with the stock
// bench (see benches/support/opaque.rs for why `std::hint::black_box` is not used here).
#[path = "support/opaque.rs"]
mod opaque;
use opaque::{opaque, opaque_ref, sink};

#[inline(always)]
fn atomic_pair(a: &'static AtomicUsize, rmw: Ordering) {
    let a = opaque_ref(a);
    let n = opaque(1);
    sink(a.fetch_add(n, rmw));
    sink(a.fetch_sub(n, rmw));
}

/// The naive baseline: `black_box` on the inputs and on both results (four stack stores per
/// iteration, two of them between the RMWs). Kept to document the measurement artefact.
#[inline(always)]
fn atomic_pair_blackbox(a: &'static AtomicUsize) {
    let a = black_box(a);
    let n = black_box(1usize);
    black_box(a.fetch_add(n, Ordering::SeqCst));
    black_box(a.fetch_sub(n, Ordering::SeqCst));
}

#[inline(always)]
fn atomic_pairs<const D: usize>(lines: &'static [Pad<AtomicUsize>; D]) {
    let lines = opaque_ref(lines);
    let n = opaque(1);
    for a in lines {
        sink(a.0.fetch_add(n, Ordering::SeqCst));
    }
    for a in lines {
        sink(a.0.fetch_sub(n, Ordering::AcqRel));
    }
}

#[inline(always)]
fn counter_pair(leaf: &'static Counter<'static>) {
    let leaf = opaque_ref(leaf);
    let n = opaque(1);
    match leaf.try_charge(n) {
        Ok(()) => leaf.uncharge(n),
        Err(e) => panic!("unexpected charge failure: {e:?}"),
    }
}

#[inline(always)]
fn floor_pair(leaf: &'static Floor) {
    let leaf = opaque_ref(leaf);
    let n = opaque(1);
    if leaf.try_charge(n) {
        leaf.uncharge(n);
    } else {
        panic!("unexpected charge failure");
    }
}

// ---------------------------------------------------------------------------------------
// The reference floor: Linux's `page_counter_try_charge()` / `page_counter_cancel()` loop
// with protection, peaks and failcnt removed. Same field layout idea as `Counter` (usage on
// its own line, read-mostly fields on another).

struct Floor {
    usage: Pad<AtomicIsize>,
    conf: Pad<FloorConf>,
}

struct FloorConf {
    max: AtomicUsize,
    parent: Option<&'static Floor>,
}

impl Floor {
    #[inline(always)]
    fn try_charge(&self, n: usize) -> bool {
        let delta = n as isize;
        let mut c = self;
        loop {
            let new = c.usage.0.fetch_add(delta, Ordering::SeqCst).wrapping_add(delta);
            if new as usize > c.conf.0.max.load(Ordering::SeqCst) {
                c.usage.0.fetch_sub(delta, Ordering::Relaxed);
                let mut u = self;
                while !std::ptr::eq(u, c) {
                    u.usage.0.fetch_sub(delta, Ordering::AcqRel);
                    u = u.conf.0.parent.unwrap();
                }
                return false;
            }
            match c.conf.0.parent {
                Some(p) => c = p,
                None => return true,
            }
        }
    }

    #[inline(always)]
    fn uncharge(&self, n: usize) {
        let delta = n as isize;
        let mut c = self;
        loop {
            c.usage.0.fetch_sub(delta, Ordering::AcqRel);
            match c.conf.0.parent {
                Some(p) => c = p,
                None => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures.

fn leak_atomic() -> &'static AtomicUsize {
    &Box::leak(Box::new(Pad(AtomicUsize::new(0)))).0
}

fn leak_lines<const D: usize>() -> &'static [Pad<AtomicUsize>; D] {
    Box::leak(Box::new(core::array::from_fn(|_| Pad(AtomicUsize::new(0)))))
}

/// A chain of `depth` counters (leaf + `depth − 1` ancestors); returns the leaf.
fn counter_chain(
    depth: usize,
    make: fn(Option<&'static Counter<'static>>) -> Counter<'static>,
) -> &'static Counter<'static> {
    assert!(depth >= 1);
    let mut node: &'static Counter<'static> = Box::leak(Box::new(make(None)));
    for _ in 1..depth {
        node = Box::leak(Box::new(make(Some(node))));
    }
    assert_eq!(node.depth() + 1, depth);
    counter_pair(node); // warm: peaks become 1, so the steady state raises no peak
    node
}

fn floor_chain(depth: usize) -> &'static Floor {
    assert!(depth >= 1);
    let mut parent: Option<&'static Floor> = None;
    for _ in 0..depth {
        parent = Some(Box::leak(Box::new(Floor {
            usage: Pad(AtomicIsize::new(0)),
            conf: Pad(FloorConf { max: AtomicUsize::new(usize::MAX >> 13), parent }),
        })));
    }
    let leaf = parent.unwrap();
    floor_pair(leaf);
    leaf
}

// ---------------------------------------------------------------------------------------
// The measured loops. One `#[inline(never)]` function per kind, with the `#[inline(always)]`
// pair body inside, so that every case runs as a tight loop with no call per iteration
// (with `Bencher::iter` and a closure, LLVM inlined the atomic and floor bodies into
// criterion's loop but called the counter's body out of line, which would have charged the
// counter an extra call/ret per pair). Criterion times these through `iter_custom`; the
// callgrind mode calls the very same functions.

macro_rules! hot_loops {
    ($($name:ident($arg:ident: $ty:ty) => $body:expr;)*) => {$(
        #[inline(never)]
        fn $name($arg: $ty, iters: u64) {
            for _ in 0..iters {
                $body;
            }
        }
    )*};
}

hot_loops! {
    loop_atomic_seqcst(a: &'static AtomicUsize) => atomic_pair(a, Ordering::SeqCst);
    loop_atomic_acqrel(a: &'static AtomicUsize) => atomic_pair(a, Ordering::AcqRel);
    loop_atomic_blackbox(a: &'static AtomicUsize) => atomic_pair_blackbox(a);
    loop_atomic_x4(l: &'static [Pad<AtomicUsize>; 4]) => atomic_pairs(l);
    loop_atomic_x8(l: &'static [Pad<AtomicUsize>; 8]) => atomic_pairs(l);
    loop_floor(leaf: &'static Floor) => floor_pair(leaf);
    loop_counter(leaf: &'static Counter<'static>) => counter_pair(leaf);
}

// ---------------------------------------------------------------------------------------
// One list of cases, run either by criterion or by the callgrind loop.

trait Runner {
    /// `run(iters)` executes the case's loop body `iters` times.
    fn case(&mut self, name: &str, run: &dyn Fn(u64));
}

fn all_cases(r: &mut impl Runner) {
    let a = leak_atomic();
    r.case("atomic_seqcst", &|i| loop_atomic_seqcst(a, i));
    let a = leak_atomic();
    r.case("atomic_acqrel", &|i| loop_atomic_acqrel(a, i));
    let a = leak_atomic();
    r.case("atomic_blackbox", &|i| loop_atomic_blackbox(a, i));
    let lines = leak_lines::<4>();
    r.case("atomic_x4", &|i| loop_atomic_x4(lines, i));
    let lines = leak_lines::<8>();
    r.case("atomic_x8", &|i| loop_atomic_x8(lines, i));
    for d in DEPTHS {
        let leaf = floor_chain(d);
        r.case(&format!("floor_d{d}"), &|i| loop_floor(leaf, i));
    }
    for d in DEPTHS {
        let leaf = counter_chain(d, Counter::new);
        r.case(&format!("counter_d{d}"), &|i| loop_counter(leaf, i));
    }
    for d in DEPTHS {
        let leaf = counter_chain(d, |p| Counter::new(p).without_protection().without_failcnt());
        r.case(&format!("counter_noprot_d{d}"), &|i| loop_counter(leaf, i));
    }
}

struct CriterionRunner<'a>(criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>);

impl Runner for CriterionRunner<'_> {
    fn case(&mut self, name: &str, run: &dyn Fn(u64)) {
        self.0.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                run(iters);
                start.elapsed()
            });
        });
    }
}

struct CallgrindRunner {
    want: String,
    iters: u64,
    ran: bool,
}

impl Runner for CallgrindRunner {
    fn case(&mut self, name: &str, run: &dyn Fn(u64)) {
        if name == self.want {
            run(black_box(self.iters));
            self.ran = true;
        }
    }
}

fn main() {
    if let Ok(want) = std::env::var("CHARGETREE_CALLGRIND") {
        let iters = std::env::var("CHARGETREE_ITERS")
            .ok()
            .map_or(1_000_000, |s| s.parse().expect("CHARGETREE_ITERS: an integer"));
        let mut r = CallgrindRunner { want, iters, ran: false };
        all_cases(&mut r);
        assert!(r.ran, "CHARGETREE_CALLGRIND: no case named {:?}", r.want);
        return;
    }

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    {
        let mut r = CriterionRunner(c.benchmark_group("pair"));
        all_cases(&mut r);
        r.0.finish();
    }
    c.final_summary();
}
