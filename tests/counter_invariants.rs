//! Counter tests, chapter 4: 1.13 the invariants (I1 usage sums, I2 limits, I3 protected
//! usage) after long random well-behaved sequences, and exactly at quiescence after
//! concurrent updates.
//!
//! Black-box tests of [`chargetree::counter`], one group per rule of Linux's
//! `mm/page_counter.c` *as the library implements it*, numbered like the sections of that
//! behaviour (1.1 data model … 1.14 bad input) across the chapters `counter_charging.rs`
//! (1.1, 1.3–1.6, 1.14), `counter_limits.rs` (1.7–1.10), `counter_protection.rs` (1.2, 1.11)
//! and `counter_invariants.rs` (1.13); their helpers are in `support/counter.rs`. Where the
//! library deliberately differs from Linux (module docs of `src/counter/mod.rs`), the tests
//! pin the library's behaviour and say what Linux would do instead.
//!
//! Trees are built on the stack (`with_tree`, `fixture`), so nothing leaks and the file runs
//! under miri with strict provenance (the long loops shrink there).

mod support;

use support::Rng;
use support::counter::*;

use core::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use chargetree::counter::{Counter, LimitError};

// ---------------------------------------------------------------------------------------------
// 1.13 Invariants
// ---------------------------------------------------------------------------------------------

/// Random well-behaved operation sequences (a node only ever uncharges what it charged itself)
/// on random trees. After every step: I1 exactly at every node, I3 exactly, the outcome of
/// every try_charge / set_max as predicted from the state, exact fail counts and peaks.
#[test]
fn rule_1_13_random_well_behaved_sequences_keep_every_invariant() {
    for seed in 0..scaled(400) as u64 {
        let mut rng = Rng::new(seed);
        let len = 1 + rng.below(8);
        let spec: Vec<NodeSpec> = (0..len)
            .map(|i| NodeSpec {
                parent: if i == 0 || rng.percent(10) { None } else { Some(rng.below(i)) },
                protection: rng.percent(85),
                failcnt: rng.percent(85),
            })
            .collect();
        with_tree(&spec, |nodes| {
            let children: Vec<Vec<usize>> =
                (0..len).map(|p| (0..len).filter(|&c| spec[c].parent == Some(p)).collect()).collect();
            let path = |mut i: usize| {
                let mut p = vec![i];
                while let Some(up) = spec[i].parent {
                    p.push(up);
                    i = up;
                }
                p
            };
            let mut local = vec![0usize; len];
            let mut failcnt = vec![0usize; len];
            let mut peak = vec![0usize; len];
            for step in 0..150 {
                let i = rng.below(len);
                let node = nodes[i];
                let ctx = format!("seed {seed} step {step} node {i}");
                match rng.below(10) {
                    0..=2 => {
                        let n = rng.below(40);
                        let lowest_over = path(i)
                            .into_iter()
                            .enumerate()
                            .find(|&(_, j)| nodes[j].usage() + n > nodes[j].max());
                        match (n, lowest_over) {
                            (0, _) | (_, None) => {
                                assert!(node.try_charge(n).is_ok(), "{ctx}");
                                local[i] += n;
                            }
                            (_, Some((level, j))) => {
                                assert_limit(node.try_charge(n), nodes[j], level);
                                if spec[j].failcnt {
                                    failcnt[j] += 1;
                                }
                            }
                        }
                    }
                    3 => {
                        let n = rng.below(20);
                        node.charge(n).unwrap();
                        local[i] += n;
                    }
                    4..=5 => {
                        let n = rng.below(local[i] + 1);
                        if rng.percent(50) {
                            node.uncharge(n);
                        } else {
                            assert_eq!(node.try_uncharge(n), Ok(()), "{ctx}");
                        }
                        local[i] -= n;
                    }
                    6 => {
                        let limit = rng.below(200);
                        let usage = node.usage();
                        let r = node.set_max(limit);
                        if usage > limit {
                            assert_eq!(r, Err(LimitError::Busy { usage, limit }), "{ctx}");
                        } else {
                            assert_eq!((r, node.max()), (Ok(()), limit), "{ctx}");
                        }
                    }
                    7 => {
                        let v = rng.below(60);
                        if rng.percent(50) {
                            node.set_min(v).unwrap();
                        } else {
                            node.set_low(v).unwrap();
                        }
                    }
                    8 => {
                        node.reset_peak();
                        peak[i] = node.usage();
                    }
                    _ => {
                        let limit = rng.below(200);
                        node.swap_max(limit).unwrap();
                    }
                }
                for (j, c) in nodes.iter().enumerate() {
                    let kids: Vec<&Counter<'_>> = children[j].iter().map(|&k| nodes[k]).collect();
                    assert_balanced(c, local[j], &kids);
                    // Peaks: raised only by committed charges, to the usage they produced.
                    peak[j] = peak[j].max(c.usage());
                    assert_eq!((c.peak(), c.local_peak()), (peak[j], peak[j]), "{ctx}: peak {j}");
                    assert_eq!(c.failcnt(), failcnt[j], "{ctx}: failcnt {j}");
                    assert_eq!((c.underflows(), c.forgiven()), (0, 0), "{ctx}");
                }
            }
            // Uncharge everything: every counter and every sum returns to zero.
            for (i, c) in nodes.iter().enumerate() {
                c.uncharge(local[i]);
            }
            for c in nodes {
                assert_eq!(c.usage(), 0);
                assert_eq!((c.min_usage(), c.low_usage()), (0, 0));
                assert_eq!((c.children_min_usage(), c.children_low_usage()), (0, 0));
            }
        });
    }
}

/// I1 and I3 at quiescence after threads charged and uncharged their own leaves while another
/// thread kept rewriting the leaves' `min` / `low` (protocol P promises exact sums).
#[test]
fn rule_1_13_concurrent_updates_balance_exactly_at_quiescence() {
    const WORKERS: usize = 4;
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let leaves: [Counter<'_>; WORKERS] = core::array::from_fn(|_| Counter::new(Some(&b)));
    root.set_max(2000).unwrap();
    b.set_min(300).unwrap();
    let stop = AtomicBool::new(false);
    let tallies = thread::scope(|s| {
        let configurer = s.spawn(|| {
            let mut rng = Rng::new(99);
            while !stop.load(Ordering::Relaxed) {
                let leaf = &leaves[rng.below(WORKERS)];
                leaf.set_min(rng.below(600)).unwrap();
                leaf.set_low(rng.below(600)).unwrap();
                b.set_low(rng.below(3000)).unwrap();
            }
        });
        let workers: Vec<_> = leaves
            .iter()
            .enumerate()
            .map(|(w, leaf)| {
                s.spawn(move || {
                    let mut rng = Rng::new(w as u64 + 1);
                    let mut tally = 0usize;
                    for _ in 0..scaled(20_000) {
                        if rng.percent(55) {
                            let n = 1 + rng.below(32);
                            if leaf.try_charge(n).is_ok() {
                                tally += n;
                            }
                        } else {
                            let n = rng.below(tally + 1);
                            leaf.uncharge(n);
                            tally -= n;
                        }
                    }
                    tally
                })
            })
            .collect();
        let tallies: Vec<usize> = workers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        configurer.join().unwrap();
        tallies
    });
    for (leaf, &tally) in leaves.iter().zip(&tallies) {
        assert_eq!(leaf.usage(), tally);
        assert_eq!(leaf.underflows(), 0);
    }
    let refs: Vec<&Counter<'_>> = leaves.iter().collect();
    assert_balanced(&b, 0, &refs);
    assert_balanced(&root, 0, &[&b]);
    assert!(root.usage() <= root.max(), "I2 at quiescence (no forced charges)");
    // I4 (sequentially exact here, only approximate under races).
    for c in refs.iter().copied().chain([&b, &root]) {
        assert!(c.local_peak() <= c.peak());
        assert!(c.usage() <= c.peak());
    }
}
