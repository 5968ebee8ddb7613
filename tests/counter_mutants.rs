//! Tests written against the survivors of mutation testing of the counter (`ci/mutants.sh`):
//! each one pins down a behaviour of `src/counter/{charge,peak,protection,limits}.rs` that
//! the rule-by-rule tests (`tests/counter_*.rs`) and the race tests (`tests/counter_races.rs`)
//! left open, so that a wrong operator or a dropped call there fails a test.
//!
//! Grouped by the file whose mistakes they catch. Each test says which kind of mistake.
//!
//! The threaded tests race a few instructions wide windows and are tuned to hit them many
//! times per run on two cores; where a window is too narrow for real threads, the loom
//! models at the end of this file (built only with `--cfg loom`) explore every
//! interleaving instead.

#[cfg(not(loom))]
mod threads {
    use core::pin::pin;
    use core::ptr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::thread;

    use chargetree::counter::{COUNTER_MAX, ChargeError, Counter, LimitError, PeakWatcher};
    use chargetree::group::{GroupSpec, Tree};

    /// Fewer iterations under miri.
    const fn scaled(n: usize) -> usize {
        if cfg!(miri) { n / 500 + 1 } else { n }
    }

    /// Runs `f` on a chain of `depth` counters built on the stack: `chain[0]` is the top,
    /// `chain[depth - 1]` the leaf, and `chain[i]` is the parent of `chain[i + 1]`.
    fn with_chain<R>(depth: usize, f: impl FnOnce(&[&Counter<'_>]) -> R) -> R {
        fn grow<R>(above: &[&Counter<'_>], left: usize, f: impl FnOnce(&[&Counter<'_>]) -> R) -> R {
            if left == 0 {
                return f(above);
            }
            let c = Counter::new(above.last().copied());
            let mut longer = above.to_vec();
            longer.push(&c);
            grow(&longer, left - 1, f)
        }
        grow(&[], depth, f)
    }

    /// The node `level` parents above the leaf of `chain` (0 = the leaf).
    fn at_level<'a, 'p>(chain: &[&'a Counter<'p>], level: usize) -> &'a Counter<'p> {
        chain[chain.len() - 1 - level]
    }

    /// Runs `other` on a second thread until `main` returns, and returns what `main` returned.
    /// `other` is called over and over; it gets the number of its call.
    fn alongside<R>(other: impl Fn(usize) + Sync, main: impl FnOnce() -> R) -> R {
        let stop = AtomicBool::new(false);
        let started = AtomicBool::new(false);
        thread::scope(|s| {
            let helper = s.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    other(i);
                    started.store(true, Ordering::Relaxed);
                    i += 1;
                }
            });
            while !started.load(Ordering::Relaxed) && !helper.is_finished() {
                thread::yield_now();
            }
            // Stop the helper even if `main` panics, so the scope can end.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            main()
        })
    }

    /// Two threads meeting again and again: the `k`-th `wait` of each returns `true` once
    /// both have called it, or `false` as soon as the other side gave up (it panicked), so
    /// that a failing check never leaves the other thread waiting. Spins (the races below
    /// are a few instructions wide; a sleeping barrier would start the threads microseconds
    /// apart), yielding now and then for a loaded machine.
    #[derive(Default)]
    struct Rendezvous {
        arrivals: AtomicUsize,
        abandoned: AtomicBool,
    }

    impl Rendezvous {
        #[must_use]
        fn wait(&self, k: usize) -> bool {
            self.arrivals.fetch_add(1, Ordering::AcqRel);
            let mut spins = 0u32;
            while self.arrivals.load(Ordering::Acquire) < 2 * (k + 1) {
                if self.abandoned.load(Ordering::Relaxed) {
                    return false;
                }
                spins = spins.wrapping_add(1);
                if spins % 256 == 0 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            true
        }

        /// Gives up when dropped: hold one on the side that runs the checks.
        fn abandon_on_drop(&self) -> impl Drop + '_ {
            struct Abandon<'a>(&'a AtomicBool);
            impl Drop for Abandon<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            Abandon(&self.abandoned)
        }
    }

    // -----------------------------------------------------------------------------------------
    // charge.rs: the commit walk, its chunks and its rollback
    // -----------------------------------------------------------------------------------------

    /// Chains around the commit walk's chunk boundaries (16 and 32 levels), with new peaks
    /// only at the top `j + 1` levels: the leaf's charge produces a new high there (a side
    /// node keeps usage at the top) and no new high below. Catches a walk that raises the
    /// peaks of one chunk with another chunk's values, skips the peaks of the levels above
    /// the first chunk (or of the last, partial one), or raises peaks with a re-read instead
    /// of the value its own add produced.
    #[test]
    fn new_peaks_only_at_the_top_of_deep_chains_are_raised_exactly_there() {
        for depth in [15, 16, 17, 31, 32, 33, 34, 48, 49] {
            with_chain(depth, |chain| {
                let leaf = chain[depth - 1];
                for j in 0..depth {
                    for c in chain {
                        c.reset_peak();
                    }
                    leaf.try_charge(10).unwrap();
                    leaf.uncharge(10);
                    // Every level has peak 10 now; the top j + 1 levels get usage 8 from the
                    // side, so the leaf's 5 makes 13 there (a new peak) and 5 below (none).
                    let side = Counter::new(Some(chain[j]));
                    side.try_charge(8).unwrap();
                    leaf.try_charge(5).unwrap();
                    for (i, c) in chain.iter().enumerate() {
                        let want = if i <= j { 13 } else { 10 };
                        assert_eq!(c.peak(), want, "depth {depth}, side at {j}: peak of chain[{i}]");
                        assert_eq!(
                            c.local_peak(),
                            want,
                            "depth {depth}, side at {j}: local peak of chain[{i}]"
                        );
                        assert_eq!(c.usage(), if i <= j { 13 } else { 5 });
                    }
                    leaf.uncharge(5);
                    side.uncharge(8);
                }
            });
        }
    }

    /// The same chains, with the peaks that a *forced* charge raises (the walk is shared
    /// with `try_charge`, but compares with `COUNTER_MAX`): the top `j + 1` levels only.
    #[test]
    fn forced_charges_raise_new_peaks_only_at_the_top_of_deep_chains() {
        for depth in [17, 33, 40] {
            with_chain(depth, |chain| {
                let leaf = chain[depth - 1];
                leaf.charge(10).unwrap();
                leaf.uncharge(10);
                for j in [0, depth / 2, depth - 2] {
                    let side = Counter::new(Some(chain[j]));
                    side.charge(8).unwrap();
                    leaf.charge(5).unwrap();
                    for (i, c) in chain.iter().enumerate() {
                        assert_eq!(
                            c.peak(),
                            if i <= j { 13 } else { 10 },
                            "depth {depth}, side at {j}, chain[{i}]"
                        );
                    }
                    leaf.uncharge(5);
                    side.uncharge(8);
                    for c in chain {
                        c.reset_peak();
                    }
                    leaf.charge(10).unwrap();
                    leaf.uncharge(10);
                }
            });
        }
    }

    /// Refusals in the commit pass (after a pre-check that passed), made frequent by a
    /// second thread that flips the limit of a few levels of a 20-level chain between
    /// "none" and 0: the lowest chunk is levels 0–15, the upper one 16–19, and the flipped
    /// levels are the leaf's parent, the top of the lowest chunk (15) and a level of the
    /// upper chunk (19). After every refusal:
    ///
    /// * the error names a flipped level and the node at that level (catches a wrong level
    ///   from the walk's chunk arithmetic, and a fallback that names some other node);
    /// * every level is back to zero usage (catches a rollback that gives the refused
    ///   level's units back at the wrong node, or skips the levels above it);
    /// * no level of the lowest chunk raised a peak (catches peaks raised before the whole
    ///   walk committed; the upper chunk raises its own as soon as its checks pass, see
    ///   `CHUNK` in `charge.rs`).
    #[test]
    fn commit_pass_refusals_in_a_deep_chain_roll_back_exactly_and_name_their_level() {
        const DEPTH: usize = 20;
        const FLIPPED: [usize; 3] = [1, 15, 19];
        with_chain(DEPTH, |chain| {
            let leaf = chain[DEPTH - 1];
            let refusals = AtomicUsize::new(0);
            let rounds = scaled(300_000);
            let in_commit = alongside(
                |i| {
                    let c = at_level(chain, FLIPPED[i % FLIPPED.len()]);
                    // Busy while a charge holds units there: then the next level.
                    let _ = c.set_max(0);
                    let _ = c.set_max(COUNTER_MAX);
                },
                || {
                    let mut in_commit = 0;
                    for round in 0..rounds {
                        // Refusals in the pre-check and in the commit pass must both leave
                        // nothing behind, so both are checked alike.
                        match leaf.try_charge(3) {
                            Ok(()) => {
                                for c in chain {
                                    assert_eq!(c.usage(), 3, "round {round}: committed everywhere");
                                }
                                leaf.uncharge(3);
                                for c in chain {
                                    c.reset_peak();
                                }
                            }
                            Err(ChargeError::Limit { at, level }) => {
                                refusals.fetch_add(1, Ordering::Relaxed);
                                assert!(FLIPPED.contains(&level), "round {round}: refused at level {level}");
                                assert!(
                                    ptr::eq(at, at_level(chain, level)),
                                    "round {round}: the error names another node than level {level}"
                                );
                                for (i, c) in chain.iter().enumerate() {
                                    assert_eq!(
                                        c.usage(),
                                        0,
                                        "round {round}: chain[{i}] kept units of a refused charge"
                                    );
                                }
                                for lvl in 0..16 {
                                    let c = at_level(chain, lvl);
                                    assert_eq!(
                                        (c.peak(), c.local_peak()),
                                        (0, 0),
                                        "round {round}: a refused charge raised a peak at level {lvl}"
                                    );
                                }
                                // A refusal at level l left the upper chunk's peaks raised only
                                // if it came in the commit pass.
                                if at_level(chain, DEPTH - 1).peak() != 0 {
                                    in_commit += 1;
                                }
                                for c in &chain[..DEPTH - 16] {
                                    c.reset_peak();
                                }
                            }
                            Err(e) => panic!("round {round}: {e:?}"),
                        }
                    }
                    in_commit
                },
            );
            eprintln!("{} refusals, {in_commit} seen in the commit pass", refusals.load(Ordering::Relaxed));
        });
    }

    /// Rule 5 of the counter's docs and the README: a refused charge raises no peak, also in
    /// a chain deeper than the commit walk's chunk (16 levels). Before the fix the levels
    /// above the lowest chunk raised their peaks as soon as their own checks passed, so a
    /// charge refused further down left its value there: levels 16–19 of this 20-level
    /// chain showed peak 3 although no charge ever committed there.
    #[test]
    fn a_refused_charge_raises_no_peak_at_any_depth() {
        const DEPTH: usize = 20;
        with_chain(DEPTH, |chain| {
            let leaf = chain[DEPTH - 1];
            let parent = at_level(chain, 1);
            alongside(
                |_| {
                    let _ = parent.set_max(0);
                    let _ = parent.set_max(COUNTER_MAX);
                },
                || {
                    for round in 0..scaled(300_000) {
                        if leaf.try_charge(3).is_ok() {
                            leaf.uncharge(3);
                            for c in chain {
                                c.reset_peak();
                            }
                            continue;
                        }
                        for (i, c) in chain.iter().enumerate() {
                            assert_eq!(
                                c.peak(),
                                0,
                                "round {round}: a refused charge raised the peak of chain[{i}]"
                            );
                        }
                    }
                },
            );
        });
    }

    /// The library's own uncharges (stock drains) reach the counter: a drained stock entry
    /// gives its cached units back. Catches `uncharge_counted` doing nothing.
    #[test]
    fn a_stock_drain_gives_the_cached_units_back_to_the_counter() {
        let tree = Tree::new();
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        // One batch of 64 charged; 60 handed out, 4 cached in this thread's stock.
        let _ = g.try_charge(60).unwrap();
        assert_eq!((g.counter().usage(), g.cached_units()), (64, 4));
        assert_eq!(tree.drain_local(), 4);
        assert_eq!((g.counter().usage(), g.cached_units()), (60, 0));
        assert_eq!(tree.root().counter().usage(), 60);
        assert_eq!(g.counter().underflows(), 0);
        g.uncharge(60);
        tree.drain_local();
        assert_eq!((g.counter().usage(), tree.root().counter().usage()), (0, 0));
    }

    /// The engine's attempts go through the counter's uncounted charge: an amount of exactly
    /// `COUNTER_MAX` is representable and charged (one above is refused by the engine
    /// before it reaches the counter). Catches an off-by-one in that charge's size check.
    #[test]
    fn a_group_charge_of_exactly_counter_max_is_charged() {
        let tree = Tree::new();
        let g = tree.root().create_child(GroupSpec::new()).unwrap();
        let _ = g.try_charge(COUNTER_MAX).unwrap();
        assert_eq!((g.counter().usage(), tree.root().counter().usage()), (COUNTER_MAX, COUNTER_MAX));
        assert!(g.try_charge(1).is_err());
        g.uncharge(COUNTER_MAX);
        tree.drain_local();
        assert_eq!(g.counter().usage(), 0);
    }

    /// A charge through a group that the engine gives up on counts one failure at the
    /// refusing node, however many attempts (the batch, the exact amount, the retries) it
    /// made, and none at a node that does not count failures. Catches the engine's single
    /// count doing nothing, and attempts that count each.
    #[test]
    fn a_refused_group_charge_counts_one_failure_at_the_refusing_node() {
        let tree = Tree::new();
        let parent = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
        let g = parent.create_child(GroupSpec::new()).unwrap();
        let quiet = parent.create_child(GroupSpec::new().max(10).track_failcnt(false)).unwrap();
        let _ = g.try_charge(90).unwrap();
        tree.drain_local();
        assert!(g.try_charge(20).is_err());
        assert_eq!((parent.counter().failcnt(), g.counter().failcnt()), (1, 0));
        assert!(g.try_charge(20).is_err());
        assert_eq!(parent.counter().failcnt(), 2);
        assert!(quiet.try_charge(11).is_err());
        assert_eq!((quiet.counter().failcnt(), parent.counter().failcnt()), (0, 2));
        g.uncharge(90);
        tree.drain_local();
    }

    /// A forced charge that leaves usage above `max` makes the next peak reset trust that
    /// usage (it is committed), at the node where it happened and at an ancestor whose limit
    /// it passed too. Catches the "usage may be above max" flag being set for the wrong
    /// comparison (a reset would then install `max`, below the usage).
    #[test]
    fn a_reset_after_a_forced_charge_past_max_restarts_the_peak_from_the_usage() {
        let root = Counter::new_root();
        let child = Counter::new(Some(&root));
        root.set_max(10).unwrap();
        child.set_max(10).unwrap();
        child.charge(15).unwrap();
        for c in [&root, &child] {
            c.reset_peak();
            assert_eq!((c.usage(), c.peak(), c.local_peak()), (15, 15, 15));
            let w = pin!(PeakWatcher::new(c));
            w.as_ref().reset();
            assert_eq!(w.read(), 15);
        }
    }

    // -----------------------------------------------------------------------------------------
    // peak.rs: watchers
    // -----------------------------------------------------------------------------------------

    /// A watcher answers for the counter it was made for, and its debug output shows its
    /// peak. Catches accessors that return something else.
    #[test]
    fn a_watcher_names_its_counter_and_shows_its_peak() {
        let c = Counter::new_root();
        c.charge(42).unwrap();
        let w = pin!(PeakWatcher::new(&c));
        assert!(ptr::eq(w.counter(), &c));
        let shown = format!("{:?}", *w);
        assert!(shown.contains("PeakWatcher") && shown.contains("42"), "{shown}");
    }

    /// A dropped watcher leaves the counter's list: the others keep folding the windows that
    /// resets end, whatever the order of drops (head, middle, tail of the list), and a
    /// watcher that never reset is not on the list at all (its drop must not unlink
    /// anybody). Catches a drop that does nothing, unlinks a never-registered watcher, or
    /// leaves a neighbour's link pointing at it.
    #[test]
    fn dropping_watchers_keeps_the_others_windows() {
        let c = Counter::new_root();
        let mut ws: Vec<_> = (0..4).map(|_| Some(Box::pin(PeakWatcher::new(&c)))).collect();
        for w in ws.iter().flatten() {
            w.as_ref().reset();
        }
        // Registered in order 0, 1, 2, 3: the list is 3, 2, 1, 0. Drop the middle one.
        ws[1] = None;
        {
            // Never reset, so never linked: its drop must change nothing.
            let idle = Box::pin(PeakWatcher::new(&c));
            assert_eq!(idle.read(), 0);
        }
        c.charge(30).unwrap();
        c.uncharge(30);
        // Watcher 3 resets: the others keep the window with 30 in it.
        ws[3].as_ref().unwrap().as_ref().reset();
        for (i, w) in ws.iter().enumerate() {
            let want = if i == 3 { 0 } else { 30 };
            if let Some(w) = w {
                assert_eq!(w.read(), want, "watcher {i}");
            }
        }
        // Drop the head (3) and the tail (0), then the last reset must still reach 2.
        ws[3] = None;
        ws[0] = None;
        c.charge(50).unwrap();
        c.uncharge(50);
        let fresh = Box::pin(PeakWatcher::new(&c));
        fresh.as_ref().reset();
        assert_eq!(ws[2].as_ref().unwrap().read(), 50);
        assert_eq!(fresh.read(), 0);
        drop(fresh);
        ws[2].as_ref().unwrap().as_ref().reset();
        c.charge(7).unwrap();
        assert_eq!(ws[2].as_ref().unwrap().read(), 7);
    }

    /// Watchers made one after another in the same place (a loop's stack slot), next to a
    /// long-lived one: every reset folds the window it ends into the long-lived watcher, and
    /// every new watcher starts clean. Catches a drop that leaves the watcher linked: the
    /// next watcher made at that address then heads a list that no longer reaches the others.
    #[test]
    fn watchers_made_where_dropped_ones_lived_leave_the_others_windows_intact() {
        let c = Counter::new_root();
        let long = pin!(PeakWatcher::new(&c));
        long.as_ref().reset();
        for i in 1..=4 {
            let w = pin!(PeakWatcher::new(&c));
            c.charge(10 * i).unwrap();
            c.uncharge(10 * i);
            w.as_ref().reset();
            assert_eq!(long.read(), 10 * i, "round {i}: the long-lived watcher lost a window");
            assert_eq!(w.read(), 0, "round {i}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // protection.rs: protocol P under racing updates
    // -----------------------------------------------------------------------------------------

    /// A node that declares only one kind of protection (`low`, with `min` 0, and then the
    /// other way round), whose usage two threads move at once. The protected-usage refresh
    /// installs `min(usage, low)` and then re-checks both kinds against the usage it re-reads;
    /// a re-check that stops when either kind matches (`min`'s always does, as `min` is 0)
    /// leaves the stale value of a refresh that another thread's overtook. At quiescence
    /// `low_usage` (or `min_usage`) must be `min(usage, declared)` exactly, and the parent's
    /// sum must be the child's value.
    #[test]
    fn protected_usage_is_exact_when_only_one_kind_is_declared() {
        for only_low in [true, false] {
            let root = Counter::new_root();
            let leaf = Counter::new(Some(&root));
            if only_low {
                leaf.set_low(1 << 20).unwrap();
            } else {
                leaf.set_min(1 << 20).unwrap();
            }
            let meet = Rendezvous::default();
            // Hit a few to a few hundred times in 20,000 rounds on two idle cores.
            let rounds = scaled(100_000);
            // One charge per thread and round, of different amounts, so that the two
            // refreshes install different values; both start at the same moment.
            let work = |amount: usize| leaf.try_charge(amount).unwrap();
            thread::scope(|s| {
                s.spawn(|| {
                    for round in 0..rounds {
                        if !meet.wait(2 * round) {
                            return;
                        }
                        work(2);
                        if !meet.wait(2 * round + 1) {
                            return;
                        }
                    }
                });
                let _abandon = meet.abandon_on_drop();
                for round in 0..rounds {
                    assert!(meet.wait(2 * round));
                    work(1);
                    assert!(meet.wait(2 * round + 1));
                    // Both threads are done with this round (the other waits for the next).
                    assert_eq!(leaf.usage(), 3);
                    let (own, sum) = if only_low {
                        (leaf.low_usage(), root.children_low_usage())
                    } else {
                        (leaf.min_usage(), root.children_min_usage())
                    };
                    assert_eq!(
                        (own, sum),
                        (3, 3),
                        "round {round} (only low: {only_low}): stale protected usage"
                    );
                    leaf.uncharge(3);
                }
            });
        }
    }

    // -----------------------------------------------------------------------------------------
    // limits.rs: retired protection (a group gone offline)
    // -----------------------------------------------------------------------------------------

    /// Offline revokes a group's protection for good: `min`/`low` read 0, the parent's sums
    /// drop its share, the counter says it is retired, and later `set_min`/`set_low` are
    /// refused. An online group is not retired and accepts them. Catches a retirement that
    /// does nothing, a wrong answer from `is_retired`, and setters that skip the check.
    #[test]
    fn an_offline_groups_protection_is_retired_for_good() {
        let tree = Tree::new();
        let parent = tree.root().create_child(GroupSpec::new()).unwrap();
        let g = parent.create_child(GroupSpec::new().min(30).low(40)).unwrap();
        let _ = g.try_charge(20).unwrap();
        tree.drain_local();
        let (c, p) = (g.counter(), parent.counter());
        assert!(!c.is_retired());
        assert_eq!((c.min_usage(), c.low_usage()), (20, 20));
        assert_eq!((p.children_min_usage(), p.children_low_usage()), (20, 20));
        c.set_min(31).unwrap();
        c.set_low(41).unwrap();
        assert_eq!((c.min(), c.low()), (31, 41));

        g.offline().unwrap();
        assert!(c.is_retired());
        assert_eq!((c.min(), c.low()), (0, 0));
        assert_eq!((c.min_usage(), c.low_usage()), (0, 0));
        assert_eq!((p.children_min_usage(), p.children_low_usage()), (0, 0));
        assert_eq!(c.set_min(5), Err(LimitError::Retired));
        assert_eq!(c.set_low(5), Err(LimitError::Retired));
        assert_eq!((c.min(), c.low(), p.children_min_usage(), p.children_low_usage()), (0, 0, 0, 0));
        // Limits that are not protection still work on an offline group.
        assert_eq!(c.set_high(100), Ok(()));
        assert!(!p.is_retired());
        g.uncharge(20);
        tree.drain_local();
        assert_eq!(c.usage(), 0);
    }
}

/// Loom models of the windows that real threads hit too rarely. Built and run with
/// `RUSTFLAGS="--cfg loom --cfg crossbeam_loom" cargo test --release --test counter_mutants`
/// (`ci/mutants.sh` runs them, next to the crate's own `loom_counter` models, on the
/// mutants that the threaded tests miss).
#[cfg(loom)]
mod loom_counter_models {
    use chargetree::counter::Counter;
    use loom::sync::Arc;
    use loom::thread;

    /// The preemption bound of the models that need more than loom's usual 2.
    const PREEMPTIONS: usize = 4;

    /// A charge refused in its commit pass, part of whose speculative add an over-uncharge
    /// took first: the refused charge gives back what is left and counts the rest as
    /// forgiven, so that `forgiven = asked − applied` holds exactly as if the refused charge
    /// had never happened. Catches a wrong amount (or none) noted as forgiven on the
    /// rollback.
    #[test]
    fn refused_charge_partly_taken_by_an_over_uncharge() {
        loom::model(|| {
            let c = Arc::new(Counter::new_root());
            c.set_max(3).unwrap();
            c.try_charge(1).unwrap();
            let t = {
                let c = c.clone();
                // Passes the pre-check at usage 1; refused in the commit pass if the forced
                // unit below lands first.
                thread::spawn(move || c.try_charge(2).is_ok())
            };
            c.charge(1).unwrap();
            // More than the 2 committed, less than 2 + the 2 in flight: may take part of them.
            let _ = c.try_uncharge(3);
            let charged = t.join().unwrap();
            let committed = 2 + if charged { 2 } else { 0 };
            let applied = committed - c.usage();
            assert_eq!(c.forgiven(), 3 - applied, "forgiven = asked − applied");
        });
    }

    /// Peak resets racing a charge that is refused in its commit pass, on a node whose
    /// usage never committed above `max` but that saw a forced charge up to exactly `max`
    /// and a `swap_max` to the same limit: the reset must not install the refused charge's
    /// speculative usage (above `max`) nor `max` itself when the usage it waits for is
    /// lower. Catches the "usage may be above max" flag set by operations that leave usage
    /// within `max`, and a peak floor that gives up waiting at once or miscounts its waits.
    #[test]
    fn reset_racing_a_refused_charge_installs_no_speculative_peak() {
        // The reset's read must fall between the refused charge's add and its rollback, and
        // that add after the other charge's add but its pre-check before it: four switches
        // between the threads, two more than loom's default bound.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(model.preemption_bound.unwrap_or(2).max(PREEMPTIONS));
        model.check(|| {
            let c = Arc::new(Counter::new_root());
            c.set_max(4).unwrap();
            c.charge(4).unwrap();
            c.uncharge(4);
            assert_eq!(c.swap_max(4), Ok(4));
            c.reset_peak();
            let t = {
                let c = c.clone();
                thread::spawn(move || c.try_charge(3).is_ok())
            };
            let mine = c.try_charge(3).is_ok();
            c.reset_peak();
            let theirs = t.join().unwrap();
            assert!(!(mine && theirs), "3 + 3 > 4");
            assert!(c.peak() <= 3, "peak {} above every committed usage", c.peak());
            assert!(c.peak() >= c.usage(), "peak {} below usage {}", c.peak(), c.usage());
        });
    }
}
