//! Counter tests, chapter 1: charging. 1.1 the data model, 1.3 / 1.6 uncharge and its
//! underflow clamp, 1.4 the forced charge, 1.5 `try_charge` and its rollback, 1.14 edge
//! cases and bad input.
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

use support::counter::*;

use core::ptr;
use std::panic::catch_unwind;

use core::panic::AssertUnwindSafe;

use chargetree::counter::{COUNTER_MAX, ChargeError, Counter, LimitError, Overflow, Underflow, parse_amount};

// ---------------------------------------------------------------------------------------------
// 1.1 Data model
// ---------------------------------------------------------------------------------------------

static STATIC_ROOT: Counter<'static> = Counter::new_root();
static STATIC_CHILD: Counter<'static> = Counter::new(Some(&STATIC_ROOT));

#[test]
fn rule_1_1_new_counter_starts_empty_and_unlimited() {
    let root = Counter::new_root();
    let child = Counter::new(Some(&root));
    let grandchild = Counter::new(Some(&child));
    for c in [&root, &child, &grandchild] {
        assert_eq!(
            snap(c),
            Snap {
                usage: 0,
                max: COUNTER_MAX,
                high: COUNTER_MAX,
                min: 0,
                low: 0,
                peak: 0,
                local_peak: 0,
                failcnt: 0,
                underflows: 0,
                forgiven: 0,
                min_usage: 0,
                low_usage: 0,
                children_min_usage: 0,
                children_low_usage: 0,
                effective_min: 0,
                effective_low: 0,
            }
        );
        assert!(c.tracks_protection() && c.tracks_failcnt());
        assert_eq!(c.margin(), COUNTER_MAX);
    }
    assert!(root.parent().is_none());
    assert!(ptr::eq(grandchild.parent().unwrap(), &child));
    assert_eq!((root.depth(), child.depth(), grandchild.depth()), (0, 1, 2));
    let path: Vec<*const Counter<'_>> =
        grandchild.ancestors_and_self().map(|c| c as *const Counter<'_>).collect();
    assert_eq!(
        path,
        [&grandchild as *const Counter<'_>, &child as *const Counter<'_>, &root as *const Counter<'_>]
    );
    assert!(Counter::default().parent().is_none());
    let plain = Counter::new_root().without_protection().without_failcnt();
    assert!(!plain.tracks_protection() && !plain.tracks_failcnt());
}

#[test]
fn rule_1_1_counter_max_is_page_counter_max() {
    #[cfg(target_pointer_width = "64")]
    assert_eq!(COUNTER_MAX, (1 << 51) - 1, "isize::MAX / 4096");
    #[cfg(not(target_pointer_width = "64"))]
    assert_eq!(COUNTER_MAX, isize::MAX as usize);
    // "max" means exactly COUNTER_MAX.
    assert_eq!(parse_amount("max", 4096), Ok(COUNTER_MAX));
}

#[test]
fn rule_1_1_static_counters_need_no_allocator() {
    STATIC_CHILD.try_charge(7).unwrap();
    assert_eq!((STATIC_CHILD.usage(), STATIC_ROOT.usage()), (7, 7));
    STATIC_CHILD.uncharge(7);
    assert_eq!((STATIC_CHILD.usage(), STATIC_ROOT.usage()), (0, 0));
    assert_eq!(STATIC_ROOT.peak(), 7);
}

// ---------------------------------------------------------------------------------------------
// 1.3 / 1.6 cancel and uncharge, with the underflow clamp
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_3_uncharge_subtracts_at_every_level_and_keeps_peaks() {
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let c = Counter::new(Some(&b));
    c.charge(10).unwrap();
    c.uncharge(4);
    for n in [&root, &b, &c] {
        assert_eq!((n.usage(), n.peak(), n.underflows()), (6, 10, 0));
    }
    assert_eq!(c.try_uncharge(6), Ok(()));
    for n in [&root, &b, &c] {
        assert_eq!((n.usage(), n.peak(), n.underflows(), n.forgiven()), (0, 10, 0, 0));
    }
}

#[test]
fn rule_1_3_over_uncharge_clamps_the_node_and_uncharges_ancestors_by_what_it_held() {
    fixture(|fx| {
        // c holds 10; ask for 14. Linux would take 14 from every ancestor (clamping each
        // independently); here b and root lose only the 10 that c really held.
        let err = fx.c.try_uncharge(14).unwrap_err();
        assert_eq!(err, Underflow { requested: 14, forgiven: 4 });
        assert_eq!(err.to_string(), "uncharged 14 but only 10 was charged; 4 forgiven");
        assert_eq!((fx.c.usage(), fx.b.usage(), fx.root.usage()), (0, 23, 28));
        assert_eq!((fx.c.underflows(), fx.c.forgiven()), (1, 4));
        for n in [fx.root, fx.b, fx.d, fx.s] {
            assert_eq!((n.underflows(), n.forgiven()), (0, 0), "{n:?}");
        }
        // The protection sums followed: c's min_usage is now 0.
        assert_eq!((fx.c.min_usage(), fx.b.children_min_usage()), (0, 20));
        fx.assert_balanced([1, 3, 0, 20, 4]);

        // Uncharging an empty node forgives everything and touches nobody else.
        let before = fx.snaps();
        assert_eq!(fx.c.try_uncharge(3), Err(Underflow { requested: 3, forgiven: 3 }));
        assert_eq!((fx.c.underflows(), fx.c.forgiven()), (2, 7));
        let after = fx.snaps();
        assert_eq!(before[..2], after[..2]);
        assert_eq!(before[3..], after[3..]);
        fx.assert_balanced([1, 3, 0, 20, 4]);
    });
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "uncharge of more than was charged")]
fn rule_1_6_uncharge_debug_asserts_on_underflow() {
    let root = Counter::new_root();
    let child = Counter::new(Some(&root));
    child.charge(3).unwrap();
    child.uncharge(5);
}

#[test]
fn rule_1_6_uncharge_repairs_and_balances_before_the_debug_assertion() {
    fixture(|fx| {
        // d holds 20 and declares min 100, so its whole usage was protected.
        let r = catch_unwind(AssertUnwindSafe(|| fx.d.uncharge(25)));
        assert_eq!(r.is_err(), cfg!(debug_assertions), "panics only in debug builds");
        // Whether or not the assertion fired, the clamp was applied and counted first.
        assert_eq!(fx.d.usage(), 0);
        assert_eq!((fx.d.underflows(), fx.d.forgiven()), (1, 5));
        assert_eq!((fx.b.usage(), fx.root.usage()), (13, 18));
        assert_eq!(fx.b.children_min_usage(), 5, "only c's 5 left");
        fx.assert_balanced([1, 3, 10, 0, 4]);
        // And the counters keep working.
        fx.d.try_charge(2).unwrap();
        fx.assert_balanced([1, 3, 10, 2, 4]);
    });
}

// ---------------------------------------------------------------------------------------------
// 1.4 charge: forced, ignores limits
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_4_forced_charge_ignores_max_and_raises_peaks() {
    let root = Counter::new_root();
    let child = Counter::new(Some(&root));
    root.set_max(5).unwrap();
    child.set_max(3).unwrap();
    assert_eq!(child.charge(10), Ok(()));
    for n in [&root, &child] {
        assert_eq!((n.usage(), n.peak(), n.local_peak()), (10, 10, 10));
        assert_eq!((n.margin(), n.failcnt()), (0, 0), "a forced charge never fails");
    }
    // Over the limit now: a limited charge fails at the lowest node that is over.
    assert_limit(child.try_charge(1), &child, 0);
    assert_eq!((child.failcnt(), root.failcnt()), (1, 0));
    child.uncharge(10);
    assert_eq!((root.usage(), root.peak(), child.peak()), (0, 10, 10));
}

#[test]
fn bad_input_forced_charge_past_counter_max_is_overflow_and_changes_nothing() {
    fixture(|fx| {
        // Fill the root up to COUNTER_MAX - 2 through s.
        let fill = COUNTER_MAX - 2 - fx.root.usage();
        fx.s.charge(fill).unwrap();
        let locals = [1, 3, 10, 20, 4 + fill];
        fx.assert_balanced(locals);
        let before = fx.snaps();
        // c and b have room; the root does not. Linux would wrap; here nothing changes, not
        // even the peaks or protection sums of c and b, which passed their own checks.
        assert_eq!(fx.c.charge(3), Err(Overflow { requested: 3 }));
        assert_eq!(fx.c.charge(COUNTER_MAX), Err(Overflow { requested: COUNTER_MAX }));
        assert_eq!(fx.c.charge(COUNTER_MAX + 1), Err(Overflow { requested: COUNTER_MAX + 1 }));
        assert_eq!(fx.c.charge(usize::MAX), Err(Overflow { requested: usize::MAX }));
        assert_eq!(fx.snaps(), before, "failcnt too: an overflow is not a limit failure");
        fx.assert_balanced(locals);
        // Exactly COUNTER_MAX still fits.
        fx.c.charge(2).unwrap();
        assert_eq!((fx.root.usage(), fx.root.peak()), (COUNTER_MAX, COUNTER_MAX));
        fx.assert_balanced([1, 3, 12, 20, 4 + fill]);
    });
}

// ---------------------------------------------------------------------------------------------
// 1.5 try_charge
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_5_try_charge_reports_lowest_failing_ancestor() {
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let c = Counter::new(Some(&b));
    root.set_max(100).unwrap();
    b.set_max(10).unwrap();
    c.set_max(50).unwrap();

    // Only b is exceeded.
    let err = c.try_charge(11).unwrap_err();
    assert_eq!(err.level(), Some(1));
    assert_limit(Err(err), &b, 1);
    assert_eq!((c.failcnt(), b.failcnt(), root.failcnt()), (0, 1, 0));

    // b and the root are both exceeded: the lowest one is reported and the walk stops there,
    // so the root is not even checked (its failcnt does not move).
    root.set_max(5).unwrap();
    assert_limit(c.try_charge(20), &b, 1);
    assert_eq!((c.failcnt(), b.failcnt(), root.failcnt()), (0, 2, 0));

    // Only the root is exceeded.
    let err = c.try_charge(8).unwrap_err();
    assert!(err.to_string().starts_with("limit exceeded 2 level(s) up: max 5"), "{err}");
    assert_limit(Err(err), &root, 2);
    assert_eq!((c.failcnt(), b.failcnt(), root.failcnt()), (0, 2, 1));

    // The node itself.
    c.set_max(1).unwrap();
    assert_limit(c.try_charge(2), &c, 0);
    assert_eq!((c.failcnt(), b.failcnt(), root.failcnt()), (1, 2, 1));

    for n in [&root, &b, &c] {
        assert_eq!((n.usage(), n.peak()), (0, 0), "nothing stays charged");
    }
}

#[test]
fn rule_1_5_failed_try_charge_rolls_back_lower_levels_their_protection_and_peaks() {
    fixture(|fx| {
        fx.root.set_max(40).unwrap(); // root holds 38
        let before = fx.snaps();
        // c (declares min 5, low 50) and b pass their checks, the root fails.
        assert_limit(fx.c.try_charge(3), fx.root, 2);
        let after = fx.snaps();
        assert_eq!(before[1..], after[1..], "c, b, d, s changed");
        // Linux would have raised c's and b's watermarks to 13 and 36 during the failed walk;
        // here peaks are raised only by charges that commit.
        assert_eq!((after[2].peak, after[1].peak), (10, 33));
        assert_eq!(after[0].failcnt, before[0].failcnt + 1);
        assert_eq!(Snap { failcnt: before[0].failcnt, ..after[0] }, before[0]);
        fx.assert_balanced(LOCALS);
        // A charge that fits the root commits at every level.
        fx.c.try_charge(2).unwrap();
        assert_eq!((fx.c.peak(), fx.b.peak(), fx.root.peak()), (12, 35, 40));
        fx.assert_balanced([1, 3, 12, 20, 4]);
    });
}

#[test]
fn rule_1_5_try_charge_succeeds_up_to_exactly_max() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    assert!(c.try_charge(10).is_ok());
    assert_eq!(c.margin(), 0);
    assert_limit(c.try_charge(1), &c, 0);
    c.uncharge(1);
    assert_eq!(c.margin(), 1);
    assert!(c.try_charge(1).is_ok());
    assert_eq!((c.usage(), root.usage(), c.failcnt()), (10, 10, 1));
}

#[test]
fn rule_1_5_without_failcnt_does_not_count_failures() {
    let root = Counter::new_root().without_failcnt();
    let counted = Counter::new(Some(&root));
    let uncounted = Counter::new(Some(&root)).without_failcnt();
    assert!(!root.tracks_failcnt() && counted.tracks_failcnt());
    counted.set_max(1).unwrap();
    uncounted.set_max(1).unwrap();
    assert_limit(counted.try_charge(2), &counted, 0);
    assert_limit(uncounted.try_charge(2), &uncounted, 0);
    assert_eq!((counted.failcnt(), uncounted.failcnt()), (1, 0));
    root.set_max(0).unwrap();
    assert_limit(counted.try_charge(1), &root, 1);
    assert_eq!((root.failcnt(), counted.failcnt()), (0, 1));
}

#[test]
fn rule_1_5_without_protection_charges_like_any_other_node() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root)).without_protection();
    c.set_min(100).unwrap();
    c.set_max(10).unwrap();
    c.try_charge(10).unwrap();
    assert_limit(c.try_charge(1), &c, 0);
    assert_eq!((c.usage(), c.failcnt(), c.peak()), (10, 1, 10));
    assert_eq!((c.min_usage(), root.children_min_usage()), (0, 0));
    assert_balanced(&root, 0, &[&c]);
}

// ---------------------------------------------------------------------------------------------
// 1.14 Edge cases and bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_14_zero_amounts_are_no_ops() {
    fixture(|fx| {
        fx.c.set_max(0).unwrap_err(); // c holds 10: Busy
        fx.d.swap_max(0).unwrap(); // d holds 20 > 0: over its limit
        let before = fx.snaps();
        for node in fx.nodes() {
            assert!(node.try_charge(0).is_ok());
            assert_eq!(node.charge(0), Ok(()));
            assert_eq!(node.try_uncharge(0), Ok(()));
            node.uncharge(0);
        }
        // Even at a node over its limit: no failure, no failcnt (Linux would fail a
        // zero-page try_charge at a node already above its max).
        assert_eq!(fx.snaps(), before);
        fx.assert_balanced(LOCALS);
        let empty = Counter::new_root();
        assert_eq!(empty.try_uncharge(0), Ok(()));
        assert_eq!((empty.underflows(), empty.usage()), (0, 0));
    });
}

#[test]
fn rule_1_14_max_zero_refuses_every_nonzero_try_charge() {
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let c = Counter::new(Some(&b));
    assert_eq!(b.set_max(0), Ok(()));
    for n in [1, 2, COUNTER_MAX] {
        assert_limit(c.try_charge(n), &b, 1);
    }
    assert_limit(b.try_charge(1), &b, 0);
    assert_eq!((b.failcnt(), c.failcnt(), root.failcnt()), (4, 0, 0));
    // A forced charge still goes through.
    assert_eq!(c.charge(5), Ok(()));
    assert_eq!((c.usage(), b.usage(), root.usage()), (5, 5, 5));
    assert_eq!(b.set_max(0), Err(LimitError::Busy { usage: 5, limit: 0 }));
    c.uncharge(5);
    assert_balanced(&b, 0, &[&c]);
    assert_balanced(&root, 0, &[&b]);
}

#[test]
fn rule_1_14_huge_amounts() {
    let root = Counter::new_root();
    let a = Counter::new(Some(&root));
    let b = Counter::new(Some(&root));
    // COUNTER_MAX itself fits an empty unlimited tree.
    assert!(a.try_charge(COUNTER_MAX).is_ok());
    assert_eq!((a.usage(), root.usage(), root.margin()), (COUNTER_MAX, COUNTER_MAX, 0));
    assert_limit(a.try_charge(1), &a, 0);
    assert_limit(b.try_charge(1), &root, 1);
    assert_eq!(b.charge(1), Err(Overflow { requested: 1 }));
    a.uncharge(COUNTER_MAX);
    assert_eq!((root.usage(), root.peak(), a.peak(), b.peak()), (0, COUNTER_MAX, COUNTER_MAX, 0));
    // Half and half: the second half fails at the shared parent.
    let half = COUNTER_MAX / 2 + 1;
    a.try_charge(half).unwrap();
    assert_limit(b.try_charge(half), &root, 1);
    assert_eq!((b.usage(), root.usage()), (0, half));
    assert_eq!(b.charge(half), Err(Overflow { requested: half }));
    assert_eq!((b.usage(), b.peak(), root.usage()), (0, 0, half));
    a.uncharge(half);
    assert_balanced(&root, 0, &[&a, &b]);
}

#[test]
fn bad_input_try_charge_too_large_is_rejected_and_changes_nothing() {
    fixture(|fx| {
        let before = fx.snaps();
        for n in [COUNTER_MAX + 1, usize::MAX / 2, usize::MAX] {
            for node in fx.nodes() {
                match node.try_charge(n) {
                    Err(e @ ChargeError::TooLarge { requested }) => {
                        assert_eq!(requested, n);
                        assert_eq!(e.level(), None);
                        assert!(e.to_string().contains("above the counter maximum"));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(fx.snaps(), before, "no failcnt either");
        fx.assert_balanced(LOCALS);
    });
}

#[test]
fn bad_input_uncharging_what_was_never_charged() {
    fixture(|fx| {
        // A fresh sibling of c that never charged anything.
        let stranger = Counter::new(Some(fx.b));
        stranger.set_min(10).unwrap();
        let before = fx.snaps();
        assert_eq!(stranger.try_uncharge(10), Err(Underflow { requested: 10, forgiven: 10 }));
        assert_eq!((stranger.usage(), stranger.underflows(), stranger.forgiven()), (0, 1, 10));
        // Nobody else noticed: Linux would have taken 10 from b and the root.
        assert_eq!(fx.snaps(), before);
        fx.assert_balanced(LOCALS);
        assert_balanced(fx.b, 3, &[fx.c, fx.d, &stranger]);
        // The stranger is a normal counter afterwards.
        stranger.try_charge(1).unwrap();
        stranger.uncharge(1);
        fx.d.uncharge(10);
        fx.assert_balanced([1, 3, 10, 10, 4]);
    });
}

#[test]
fn bad_input_uncharge_usize_max() {
    fixture(|fx| {
        assert_eq!(
            fx.c.try_uncharge(usize::MAX),
            Err(Underflow { requested: usize::MAX, forgiven: usize::MAX - 10 })
        );
        assert_eq!((fx.c.usage(), fx.c.underflows()), (0, 1));
        assert_eq!((fx.b.usage(), fx.root.usage()), (23, 28));
        for n in [fx.root, fx.b, fx.d, fx.s] {
            assert_eq!(n.underflows(), 0);
        }
        fx.assert_balanced([1, 3, 0, 20, 4]);
        // The forgiven total saturates instead of wrapping.
        let r = catch_unwind(AssertUnwindSafe(|| fx.c.uncharge(usize::MAX)));
        assert_eq!(r.is_err(), cfg!(debug_assertions));
        assert_eq!((fx.c.underflows(), fx.c.forgiven()), (2, usize::MAX));
        fx.assert_balanced([1, 3, 0, 20, 4]);
        // At a middle node, what it "held" includes its children's charges (a counter cannot
        // tell them apart): b is clamped to 0 under d's 20, so I1 is broken at b by the
        // caller's bug. Its ancestors still balance, and d is untouched.
        assert_eq!(
            fx.b.try_uncharge(usize::MAX),
            Err(Underflow { requested: usize::MAX, forgiven: usize::MAX - 23 })
        );
        assert_eq!((fx.b.usage(), fx.d.usage(), fx.root.usage()), (0, 20, 5));
        assert_balanced(fx.root, 1, &[fx.b, fx.s]);
        assert_protected_usage(fx.d);
        assert_eq!(fx.b.children_min_usage(), 20, "d's share is still summed in b");
    });
}

/// A chain deeper than 64 levels: the walk records new peaks in a 64-bit mask and falls back
/// to raising peaks immediately for levels ≥ 64. Usage and rollback must not depend on depth.
#[test]
fn rule_1_14_deep_chains_roll_back_completely() {
    const DEPTH: usize = 70;
    let spec: Vec<NodeSpec> = (0..DEPTH).map(|i| NodeSpec::under(i.checked_sub(1))).collect();
    with_tree(&spec, |chain| {
        let leaf = chain[DEPTH - 1];
        let top = chain[0];
        assert_eq!(leaf.depth(), DEPTH - 1);
        leaf.try_charge(3).unwrap();
        assert!(chain.iter().all(|c| (c.usage(), c.peak()) == (3, 3)));
        top.set_max(5).unwrap();
        assert_limit(leaf.try_charge(10), top, DEPTH - 1);
        assert!(chain.iter().all(|c| c.usage() == 3), "rolled back everywhere");
        assert_eq!(top.failcnt(), 1);
        leaf.uncharge(3);
        for (i, c) in chain.iter().enumerate() {
            assert_eq!(c.usage(), 0, "level {}", DEPTH - 1 - i);
            if i + 1 < DEPTH {
                assert_balanced(c, 0, &[chain[i + 1]]);
            }
        }
    });
}

/// Same chain, checking the peaks: rule 1.5 as implemented says a charge that is rolled back
/// leaves no peak behind, at any depth.
#[test]

fn rule_1_5_failed_charge_leaves_no_peak_at_levels_beyond_64() {
    const DEPTH: usize = 70;
    let spec: Vec<NodeSpec> = (0..DEPTH).map(|i| NodeSpec::under(i.checked_sub(1))).collect();
    with_tree(&spec, |chain| {
        let leaf = chain[DEPTH - 1];
        let top = chain[0];
        top.set_max(5).unwrap();
        assert_limit(leaf.try_charge(10), top, DEPTH - 1);
        // Forced charge overflowing at the top: also rolled back.
        let filler = Counter::new(Some(top));
        filler.charge(COUNTER_MAX - 1).unwrap();
        assert_eq!(leaf.charge(10), Err(Overflow { requested: 10 }));
        for (i, c) in chain.iter().enumerate().skip(1) {
            assert_eq!(c.usage(), 0);
            // Levels 64..=68 (chain indices 5..=1) come back with peak 10.
            assert_eq!(c.peak(), 0, "peak at level {}", DEPTH - 1 - i);
            assert_eq!(c.local_peak(), 0, "local peak at level {}", DEPTH - 1 - i);
        }
    });
}
