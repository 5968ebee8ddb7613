//! The counter under racing writers: over-uncharges, refused charges, peak resets and
//! protection setters from several threads at once, checked at quiescence against the exact
//! invariants (`parent = Σ children`, `peak ≤ max`, `peak ≥ usage`, protection sums exact,
//! no underflow counted where every uncharge was legal).
//!
//! Each test was written against a race that corrupted the counts before: the round
//! numbers are large enough that the old code failed within a fraction of them.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use chargetree::counter::{ChargeError, Counter, PeakWatcher};

/// Fewer rounds under miri, which interprets every instruction.
const fn scaled(n: usize) -> usize {
    if cfg!(miri) { n / 200 + 1 } else { n }
}

/// A barrier that spins (yielding now and then), so that the threads it releases start
/// within nanoseconds of each other instead of the microseconds a sleeping barrier's
/// wake-ups take: the races below are windows of a few instructions.
struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        Self { parties, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::SeqCst);
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 == self.parties {
            self.arrived.store(0, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::SeqCst) == generation {
            spins += 1;
            if spins % 1024 == 0 {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Runs `rounds` rounds of `a` and `b` on two threads, started together each round, with
/// `check` run alone after every round. A panic anywhere ends the rounds and is re-raised
/// once every thread has left (no thread is left waiting at a barrier).
fn race(rounds: usize, a: impl Fn(usize) + Sync, b: impl Fn(usize) + Sync, mut check: impl FnMut(usize)) {
    let start = SpinBarrier::new(2);
    let done = SpinBarrier::new(3);
    let next = SpinBarrier::new(3);
    let stop = AtomicBool::new(false);
    let failure = Mutex::new(None);
    let note = |r: thread::Result<()>| {
        if let Err(e) = r {
            stop.store(true, Ordering::SeqCst);
            failure.lock().unwrap().get_or_insert(e);
        }
    };
    thread::scope(|s| {
        for f in [&a as &(dyn Fn(usize) + Sync), &b] {
            let (start, done, next, stop, note) = (&start, &done, &next, &stop, &note);
            s.spawn(move || {
                for round in 0..rounds {
                    start.wait();
                    if !stop.load(Ordering::SeqCst) {
                        note(catch_unwind(AssertUnwindSafe(|| f(round))));
                    }
                    done.wait();
                    next.wait();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            });
        }
        for round in 0..rounds {
            done.wait();
            if !stop.load(Ordering::SeqCst) {
                note(catch_unwind(AssertUnwindSafe(|| check(round))));
            }
            let last = stop.load(Ordering::SeqCst);
            next.wait();
            if last {
                break;
            }
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        resume_unwind(e);
    }
}

/// Two threads each charge a leaf 5 and then uncharge it 10, over and over, next to a
/// sibling holding 1,000. Every uncharge asks for more than its thread charged, so the leaf
/// is clamped at zero again and again, with the other thread's charges and uncharges in the
/// clamp's way. The parent must still equal its children, never clamp itself, and the leaf
/// must have forgiven exactly what it was asked for beyond what it gave.
#[test]
fn concurrent_over_uncharges_leave_the_parent_equal_to_its_children() {
    let root = Counter::new_root();
    let sibling = Counter::new(Some(&root));
    let leaf = Counter::new(Some(&root));
    sibling.try_charge(1000).unwrap();
    let per_thread = scaled(50_000);
    let rounds = scaled(10).min(10);
    let worker = |_| {
        for _ in 0..per_thread {
            leaf.try_charge(5).unwrap();
            let _ = leaf.try_uncharge(10);
        }
    };
    race(rounds, worker, worker, |round| {
        let charged = 5 * 2 * per_thread * (round + 1);
        assert_eq!(sibling.usage(), 1000, "round {round}");
        assert_eq!(root.usage(), sibling.usage() + leaf.usage(), "round {round}: parent = Σ children");
        assert_eq!((root.underflows(), sibling.underflows()), (0, 0), "round {round}: nothing clamped above");
        // Conservation at the leaf: usage = charged − applied, forgiven = asked − applied.
        assert_eq!(leaf.forgiven(), 2 * charged - (charged - leaf.usage()), "round {round}");
        assert!(root.peak() <= 1000 + 2 * 5 * 2, "round {round}: peak {}", root.peak());
    });
}

/// The same with refused charges in the mix: the leaf has a limit, one thread keeps trying
/// charges that overshoot it while the other over-uncharges, so refused charges' own adds
/// are taken back while a clamped uncharge may have taken them first.
#[test]
fn over_uncharges_racing_refused_charges_balance() {
    let root = Counter::new_root();
    let sibling = Counter::new(Some(&root));
    let leaf = Counter::new(Some(&root));
    sibling.try_charge(1000).unwrap();
    leaf.set_max(12).unwrap();
    let charged = AtomicUsize::new(0);
    let per_thread = scaled(50_000);
    let charger = |_| {
        for i in 0..per_thread {
            let n = 3 + i % 10;
            if leaf.try_charge(n).is_ok() {
                charged.fetch_add(n, Ordering::Relaxed);
            }
        }
    };
    let uncharger = |_| {
        for _ in 0..per_thread {
            if leaf.try_charge(2).is_ok() {
                charged.fetch_add(2, Ordering::Relaxed);
            }
            let _ = leaf.try_uncharge(7);
        }
    };
    race(scaled(10).min(10), charger, uncharger, |round| {
        assert_eq!(root.usage(), sibling.usage() + leaf.usage(), "round {round}: parent = Σ children");
        assert_eq!(sibling.usage(), 1000);
        assert_eq!(root.underflows(), 0, "round {round}");
        assert!(leaf.usage() <= leaf.max(), "round {round}: usage {} above max", leaf.usage());
        assert!(leaf.peak() <= leaf.max(), "round {round}: peak {} above max", leaf.peak());
        assert!(leaf.peak() >= leaf.usage());
        // Every unit charged was either given back by an uncharge or is still there.
        let asked = 7 * per_thread * (round + 1);
        let applied = charged.load(Ordering::Relaxed) - leaf.usage();
        assert_eq!(leaf.forgiven(), asked - applied, "round {round}: forgiven = asked − applied");
    });
}

/// A charge that never fits, tried over and over next to charges that commit, must never
/// show up in the peak: peaks are raised from a committed charge's own value at each level.
/// Also a charge that fits alone but not next to the other one, so that refusals happen in
/// the commit pass too (after a pre-check that passed).
#[test]
fn the_peak_never_exceeds_max_when_refused_charges_race_committed_ones() {
    let root = Counter::new_root();
    root.set_max(400).unwrap();
    let a = Counter::new(Some(&root));
    let b = Counter::new(Some(&root));
    let stop = AtomicBool::new(false);
    let rounds = scaled(1_000_000);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..rounds / 4 {
                // Restart the peak, then climb to the limit in steps of 100: every step is a
                // new high, raised while b's refused charges come and go.
                root.reset_peak();
                let mut held = 0;
                for _ in 0..4 {
                    if a.try_charge(100).is_ok() {
                        held += 100;
                    }
                }
                a.uncharge(held);
            }
            stop.store(true, Ordering::Relaxed);
        });
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // 512 never fits; 301 fits alone (301 <= 400), not with a's 100.
                let n = if i % 2 == 0 { 512 } else { 301 };
                if b.try_charge(n).is_ok() {
                    b.uncharge(n);
                }
                i += 1;
            }
        });
        while !stop.load(Ordering::Relaxed) {
            assert!(root.peak() <= 400, "peak {} above max 400", root.peak());
            thread::yield_now();
        }
    });
    assert!(root.peak() <= 400, "peak {} above max 400", root.peak());
    assert!(a.peak() <= 400 && b.peak() <= 301, "peaks {} {}", a.peak(), b.peak());
    assert_eq!(root.usage(), 0);
}

/// A refused charge's speculative add, seen by a concurrent uncharge or `set_min` on the
/// same node, must not leave the protected-usage sums inflated: the refusing level refreshes
/// them when it takes its add back.
#[test]
fn refused_charges_leave_no_stale_protection_sums() {
    let root = Counter::new_root();
    let leaf = Counter::new(Some(&root));
    leaf.set_max(1048).unwrap();
    leaf.set_min(1000).unwrap();
    leaf.try_charge(48).unwrap();
    race(
        scaled(10_000),
        |_| {
            // 48 + 1000 = 1048 fits, 49 + 1000 does not: refused in the commit pass when the
            // other thread's unit lands in between.
            if leaf.try_charge(1000).is_ok() {
                leaf.uncharge(1000);
            }
        },
        |round| {
            // Forced: a plain charge of 1 may be refused while the other thread's 1000 is
            // in flight (the documented transient refusal).
            leaf.charge(1).unwrap();
            leaf.uncharge(1);
            if round % 3 == 0 {
                leaf.set_min(1000).unwrap();
            }
            leaf.charge(1).unwrap();
        },
        |round| {
            assert_eq!(leaf.usage(), 49, "round {round}");
            assert_eq!(leaf.min_usage(), 49, "round {round}: min_usage stale");
            assert_eq!(root.children_min_usage(), 49, "round {round}: parent's sum stale");
            leaf.uncharge(1);
        },
    );
}

/// `reset_peak` racing a charge: after both are done the peak is at least the usage (the
/// charge either saw the reset's new watermark or the reset's re-read saw the charge). The
/// old watermark is high when each round starts, so a charge that compared its value with
/// it, before the reset installed the lower usage, raises nothing by itself.
#[test]
fn a_charge_racing_a_peak_reset_is_not_lost_from_the_new_window() {
    let c = Counter::new_root();
    c.try_charge(10).unwrap();
    c.uncharge(10);
    race(
        scaled(10_000),
        |_| c.try_charge(10).unwrap(),
        |_| c.reset_peak(),
        |round| {
            assert_eq!(c.usage(), 10);
            assert!(c.peak() >= 10, "round {round}: peak {} below usage 10", c.peak());
            assert!(c.local_peak() >= 10, "round {round}: local peak {} below usage", c.local_peak());
            c.uncharge(10);
        },
    );
}

/// The same for a reader's own resettable peak.
#[test]
fn a_charge_racing_a_watcher_reset_is_not_lost_from_the_watchers_window() {
    let c = Counter::new_root();
    let watcher = Box::pin(PeakWatcher::new(&c));
    c.try_charge(10).unwrap();
    c.uncharge(10);
    watcher.as_ref().reset();
    let w = &watcher;
    race(
        scaled(10_000),
        |_| c.try_charge(10).unwrap(),
        |_| w.as_ref().reset(),
        |round| {
            assert!(w.read() >= c.usage(), "round {round}: watcher {} below usage {}", w.read(), c.usage());
            c.uncharge(10);
        },
    );
}

/// Random operation mixes on a small tree from three threads at once: charges (some
/// refused by limits), legal uncharges of what the thread charged, over-uncharges on one
/// designated leaf, `min`/`low` setters and peak resets. At quiescence every invariant holds
/// exactly, and no node but the over-uncharged leaf ever counted an underflow.
#[test]
fn random_racing_mixes_keep_every_invariant_at_quiescence() {
    // root ← {p ← {a, b}, q}; `b` is the leaf that gets over-uncharged.
    for seed in 0..scaled(40) as u64 {
        let root = Counter::new_root();
        let p = Counter::new(Some(&root));
        let q = Counter::new(Some(&root));
        let a = Counter::new(Some(&p));
        let b = Counter::new(Some(&p));
        root.set_max(120).unwrap();
        p.set_max(90).unwrap();
        a.set_max(50).unwrap();
        let leaves = [&a, &b, &q];
        let held: [AtomicUsize; 3] = Default::default();
        thread::scope(|s| {
            for t in 0..3u64 {
                let (leaves, held, p) = (&leaves, &held, &p);
                s.spawn(move || {
                    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(t + 1) | 1;
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as usize
                    };
                    let mut mine = [0usize; 3];
                    for _ in 0..scaled(3_000) {
                        let i = next() % 3;
                        let leaf = leaves[i];
                        match next() % 8 {
                            0..=2 => {
                                let n = 1 + next() % 30;
                                match leaf.try_charge(n) {
                                    Ok(()) => mine[i] += n,
                                    Err(ChargeError::Limit { .. }) => {}
                                    Err(e) => panic!("{e:?}"),
                                }
                            }
                            3 => {
                                let n = next() % (mine[i] + 1);
                                if i == 1 {
                                    // Over-uncharges live on b only: whatever it gives is fine.
                                    let _ = leaf.try_uncharge(n + next() % 8);
                                    mine[i] = 0;
                                } else {
                                    leaf.try_uncharge(n).expect("a legal uncharge is never clamped");
                                    mine[i] -= n;
                                }
                            }
                            4 => {
                                let v = next() % 40;
                                if next() % 2 == 0 { leaf.set_min(v) } else { leaf.set_low(v) }.unwrap();
                            }
                            5 => leaf.reset_peak(),
                            6 => {
                                let v = next() % 60;
                                let _ = p.set_min(v);
                            }
                            _ => {
                                if i != 1 && mine[i] > 0 {
                                    leaf.uncharge(mine[i]);
                                    mine[i] = 0;
                                }
                            }
                        }
                    }
                    for (slot, m) in held.iter().zip(mine) {
                        slot.fetch_add(m, Ordering::Relaxed);
                    }
                });
            }
        });
        let all = [&root, &p, &q, &a, &b];
        assert_eq!(p.usage(), a.usage() + b.usage(), "seed {seed}: p = a + b");
        assert_eq!(root.usage(), p.usage() + q.usage(), "seed {seed}: root = p + q");
        assert_eq!(a.usage(), held[0].load(Ordering::Relaxed), "seed {seed}: a holds what was charged");
        assert_eq!(q.usage(), held[2].load(Ordering::Relaxed), "seed {seed}: q holds what was charged");
        for c in all {
            assert!(c.peak() >= c.usage(), "seed {seed}: peak {} < usage {}", c.peak(), c.usage());
            assert!(c.peak() <= c.max(), "seed {seed}: peak {} > max {}", c.peak(), c.max());
            assert_eq!(c.min_usage(), if c.parent().is_some() { c.usage().min(c.min()) } else { 0 });
            assert_eq!(c.low_usage(), if c.parent().is_some() { c.usage().min(c.low()) } else { 0 });
        }
        assert_eq!(p.children_min_usage(), a.min_usage() + b.min_usage(), "seed {seed}");
        assert_eq!(p.children_low_usage(), a.low_usage() + b.low_usage(), "seed {seed}");
        assert_eq!(root.children_min_usage(), p.min_usage() + q.min_usage(), "seed {seed}");
        assert_eq!(root.children_low_usage(), p.low_usage() + q.low_usage(), "seed {seed}");
        for c in [&root, &p, &q, &a] {
            assert_eq!(c.underflows(), 0, "seed {seed}: an underflow counted where every uncharge was legal");
        }
    }
}
