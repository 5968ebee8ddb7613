//! Black-box tests of [`chargetree::counter`], one group per rule of Linux's
//! `mm/page_counter.c` *as the library implements it* (numbered like the sections of that
//! behaviour: 1.1 data model, 1.2 protected usage, … 1.14 bad input). Where the library deliberately
//! differs from Linux (module docs of `src/counter/mod.rs`), the tests pin the library's
//! behaviour and say what Linux would do instead.
//!
//! Amounts are abstract units; the worked protection example uses 4 KiB pages (1 MiB = 256).
//!
//! Trees are built on the stack (`with_tree`, `fixture`), so nothing leaks and the file can
//! run under miri (the long loops shrink there).

use core::pin::{Pin, pin};
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};
use std::panic::catch_unwind;
use std::thread;

use core::panic::AssertUnwindSafe;

use chargetree::counter::{
    COUNTER_MAX, ChargeError, Counter, LimitError, Overflow, ParseError, PeakWatcher, SET_MAX_RETRIES,
    Underflow, effective_protection, parse_amount,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// 1 MiB in 4 KiB pages.
const M: usize = 256;

/// Iterations of the randomised and threaded tests (small under miri).
const fn scaled(n: usize) -> usize {
    if cfg!(miri) { n / 400 + 1 } else { n }
}

/// Checks I3 for one node: `x_usage = min(usage, x)` if it has a parent and tracks protection,
/// otherwise nothing was ever installed (the top node's protection is never summed).
#[track_caller]
fn assert_protected_usage(c: &Counter<'_>) {
    if c.parent().is_some() && c.tracks_protection() {
        assert_eq!(c.min_usage(), c.usage().min(c.min()), "I3: min_usage of {c:?}");
        assert_eq!(c.low_usage(), c.usage().min(c.low()), "I3: low_usage of {c:?}");
    } else {
        assert_eq!((c.min_usage(), c.low_usage()), (0, 0), "untracked node {c:?}");
    }
}

/// Checks I1 and I3 at `node`: its usage is its own local charges plus its children's usage,
/// each child's protected usage is `min(usage, declared)`, and the node's children sums are
/// the sums of the children's protected usage. `children` must be *all* of its children.
#[track_caller]
fn assert_balanced(node: &Counter<'_>, local: usize, children: &[&Counter<'_>]) {
    let sum: usize = children.iter().map(|c| c.usage()).sum();
    assert_eq!(node.usage(), local + sum, "I1 at {node:?}");
    for c in children {
        assert!(ptr::eq(c.parent().expect("a child"), node), "not a child");
        assert_protected_usage(c);
    }
    let min_sum: usize = children.iter().map(|c| c.min_usage()).sum();
    let low_sum: usize = children.iter().map(|c| c.low_usage()).sum();
    assert_eq!(node.children_min_usage(), min_sum, "I3: children_min_usage");
    assert_eq!(node.children_low_usage(), low_sum, "I3: children_low_usage");
    assert_protected_usage(node);
}

/// Every observable field of a node, to show that an operation changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    usage: usize,
    max: usize,
    high: usize,
    min: usize,
    low: usize,
    peak: usize,
    local_peak: usize,
    failcnt: usize,
    underflows: usize,
    forgiven: usize,
    min_usage: usize,
    low_usage: usize,
    children_min_usage: usize,
    children_low_usage: usize,
    effective_min: usize,
    effective_low: usize,
}

fn snap(c: &Counter<'_>) -> Snap {
    Snap {
        usage: c.usage(),
        max: c.max(),
        high: c.high(),
        min: c.min(),
        low: c.low(),
        peak: c.peak(),
        local_peak: c.local_peak(),
        failcnt: c.failcnt(),
        underflows: c.underflows(),
        forgiven: c.forgiven(),
        min_usage: c.min_usage(),
        low_usage: c.low_usage(),
        children_min_usage: c.children_min_usage(),
        children_low_usage: c.children_low_usage(),
        effective_min: c.effective_min(),
        effective_low: c.effective_low(),
    }
}

/// Asserts that `r` is a limit failure at exactly `at`, `level` parents up.
#[track_caller]
fn assert_limit(r: Result<(), ChargeError<'_, '_>>, at: &Counter<'_>, level: usize) {
    match r {
        Err(ChargeError::Limit { at: a, level: l }) => {
            assert!(ptr::eq(a, at), "failed at the wrong node: {a:?}, expected {at:?}");
            assert_eq!(l, level, "level");
        }
        other => panic!("expected a limit failure at level {level}, got {other:?}"),
    }
}

/// One node of a tree built by [`with_tree`].
#[derive(Clone, Copy, Debug)]
struct NodeSpec {
    /// Index of the parent (must be smaller than this node's index), `None` for a top node.
    parent: Option<usize>,
    protection: bool,
    failcnt: bool,
}

impl NodeSpec {
    const fn under(parent: Option<usize>) -> Self {
        Self { parent, protection: true, failcnt: true }
    }
}

/// Builds the counters described by `spec` on the stack (one recursion level per node, each
/// new counter borrowing earlier ones as parents) and runs `f` on them, in `spec` order.
fn with_tree<R>(spec: &[NodeSpec], f: impl FnOnce(&[&Counter<'_>]) -> R) -> R {
    fn go<R, F: FnOnce(&[&Counter<'_>]) -> R>(built: &[&Counter<'_>], rest: &[NodeSpec], f: F) -> R {
        let Some((s, rest)) = rest.split_first() else {
            return f(built);
        };
        let mut c = Counter::new(s.parent.map(|i| built[i]));
        if !s.protection {
            c = c.without_protection();
        }
        if !s.failcnt {
            c = c.without_failcnt();
        }
        let mut next: Vec<&Counter<'_>> = built.to_vec();
        next.push(&c);
        go(&next, rest, f)
    }
    go(&[], spec, f)
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

/// The fixture for bad-input tests: `root > {b > {c, d}, s}`, every node with declared
/// protection and local charges, so every sum is non-trivial.
struct Fixture<'a> {
    root: &'a Counter<'a>,
    b: &'a Counter<'a>,
    c: &'a Counter<'a>,
    d: &'a Counter<'a>,
    s: &'a Counter<'a>,
}

/// Local charges of (root, b, c, d, s) set up by [`fixture`].
const LOCALS: [usize; 5] = [1, 3, 10, 20, 4];

impl Fixture<'_> {
    fn nodes(&self) -> [&Counter<'_>; 5] {
        [self.root, self.b, self.c, self.d, self.s]
    }

    fn snaps(&self) -> [Snap; 5] {
        self.nodes().map(snap)
    }

    /// I1 and I3 at every node, given the local charges of (root, b, c, d, s).
    #[track_caller]
    fn assert_balanced(&self, locals: [usize; 5]) {
        let [root, b, c, d, s] = self.nodes();
        assert_balanced(root, locals[0], &[b, s]);
        assert_balanced(b, locals[1], &[c, d]);
        assert_balanced(c, locals[2], &[]);
        assert_balanced(d, locals[3], &[]);
        assert_balanced(s, locals[4], &[]);
    }
}

fn fixture<R>(f: impl FnOnce(&Fixture<'_>) -> R) -> R {
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let s = Counter::new(Some(&root));
    let c = Counter::new(Some(&b));
    let d = Counter::new(Some(&b));
    root.set_min(1000).unwrap();
    b.set_min(20).unwrap();
    b.set_low(40).unwrap();
    c.set_min(5).unwrap();
    c.set_low(50).unwrap();
    d.set_min(100).unwrap();
    d.set_low(1).unwrap();
    s.set_min(7).unwrap();
    s.set_low(2).unwrap();
    root.charge(LOCALS[0]).unwrap();
    b.charge(LOCALS[1]).unwrap();
    c.charge(LOCALS[2]).unwrap();
    d.try_charge(LOCALS[3]).unwrap();
    s.try_charge(LOCALS[4]).unwrap();
    let fx = Fixture { root: &root, b: &b, c: &c, d: &d, s: &s };
    fx.assert_balanced(LOCALS);
    // b = 3 + 10 + 20 = 33, root = 1 + 33 + 4 = 38; c's min_usage 5, d's 20 → b's sum 25.
    assert_eq!((root.usage(), b.usage(), b.children_min_usage()), (38, 33, 25));
    f(&fx)
}

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
// 1.2 propagate_protected_usage
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_2_protected_usage_is_usage_capped_by_declared_and_summed_in_parent() {
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let c1 = Counter::new(Some(&b));
    let c2 = Counter::new(Some(&b));
    b.set_min(100).unwrap();
    b.set_low(5).unwrap();
    c1.set_min(10).unwrap();
    c1.set_low(4).unwrap();
    c2.set_min(3).unwrap();
    c2.set_low(20).unwrap();

    c1.try_charge(6).unwrap();
    assert_eq!((c1.min_usage(), c1.low_usage()), (6, 4));
    assert_eq!((b.children_min_usage(), b.children_low_usage()), (6, 4));
    // b's own protected usage (usage 6) is summed in the root.
    assert_eq!((b.min_usage(), b.low_usage()), (6, 5));
    assert_eq!((root.children_min_usage(), root.children_low_usage()), (6, 5));

    c2.charge(8).unwrap();
    assert_eq!((c2.min_usage(), c2.low_usage()), (3, 8));
    assert_eq!((b.children_min_usage(), b.children_low_usage()), (6 + 3, 4 + 8));
    assert_eq!((b.min_usage(), b.low_usage()), (14, 5));
    assert_eq!((root.children_min_usage(), root.children_low_usage()), (14, 5));
    assert_balanced(&b, 0, &[&c1, &c2]);
    assert_balanced(&root, 0, &[&b]);

    c1.uncharge(6);
    assert_eq!((c1.min_usage(), c1.low_usage()), (0, 0));
    assert_eq!((b.children_min_usage(), b.children_low_usage()), (3, 8));
    assert_eq!((b.min_usage(), b.low_usage()), (8, 5));
    assert_balanced(&b, 0, &[&c1, &c2]);
    assert_balanced(&root, 0, &[&b]);

    c2.uncharge(8);
    for c in [&root, &b, &c1, &c2] {
        assert_eq!((c.min_usage(), c.children_min_usage()), (0, 0));
        assert_eq!((c.low_usage(), c.children_low_usage()), (0, 0));
    }
}

#[test]
fn rule_1_2_top_node_protection_is_never_summed() {
    let root = Counter::new_root();
    let child = Counter::new(Some(&root));
    root.set_min(50).unwrap();
    root.set_low(50).unwrap();
    root.charge(4).unwrap();
    child.charge(10).unwrap();
    assert_eq!(root.usage(), 14);
    // The top node has no parent to sum into: its own protected usage is never installed.
    assert_eq!((root.min_usage(), root.low_usage()), (0, 0));
    // The child declares nothing, so it protects nothing.
    assert_eq!(root.children_min_usage(), 0);
    child.set_min(5).unwrap();
    assert_eq!((child.min_usage(), root.children_min_usage()), (5, 5));
    assert_eq!(root.min_usage(), 0);
    assert_balanced(&root, 4, &[&child]);
}

#[test]
fn rule_1_2_set_min_and_set_low_refresh_the_sums_of_existing_usage() {
    let root = Counter::new_root();
    let b = Counter::new(Some(&root));
    let c = Counter::new(Some(&b));
    c.charge(30).unwrap();
    assert_eq!((c.min_usage(), b.children_min_usage()), (0, 0));

    c.set_min(10).unwrap();
    assert_eq!((c.min_usage(), b.children_min_usage()), (10, 10));
    c.set_low(50).unwrap();
    assert_eq!((c.low_usage(), b.children_low_usage()), (30, 30));
    // A middle node's own declaration is refreshed into the root's sums.
    b.set_min(12).unwrap();
    assert_eq!((b.min_usage(), root.children_min_usage()), (12, 12));
    c.set_min(0).unwrap();
    assert_eq!((c.min_usage(), b.children_min_usage()), (0, 0));
    assert_eq!(root.children_min_usage(), 12, "b's own min is unaffected");
    assert_balanced(&root, 0, &[&b]);
    assert_balanced(&b, 0, &[&c]);
}

#[test]
fn rule_1_2_without_protection_maintains_no_sums_for_that_node() {
    let root = Counter::new_root();
    let untracked = Counter::new(Some(&root)).without_protection();
    let tracked_child = Counter::new(Some(&untracked));
    assert!(!untracked.tracks_protection());
    untracked.set_min(5).unwrap();
    untracked.set_low(5).unwrap();
    tracked_child.set_min(7).unwrap();
    tracked_child.charge(10).unwrap();
    // The untracked node installs nothing and pushes nothing into the root ...
    assert_eq!((untracked.min_usage(), untracked.low_usage()), (0, 0));
    assert_eq!((root.children_min_usage(), root.children_low_usage()), (0, 0));
    // ... but its tracked child still maintains its own share of the untracked node's sums.
    // (Linux decides once from the charged leaf's flag for the whole path; here each node
    // decides for itself. memcg sets the flag uniformly per counter kind, so they agree there.)
    assert_eq!(tracked_child.min_usage(), 7);
    assert_eq!(untracked.children_min_usage(), 7);
    assert_eq!(untracked.min(), 5, "the declared value is still stored");
    assert_balanced(&untracked, 0, &[&tracked_child]);
    assert_balanced(&root, 0, &[&untracked]);
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
// 1.7 set_max / swap_max
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_7_set_max_is_busy_below_usage_and_changes_nothing() {
    fixture(|fx| {
        // b's hierarchical usage is 33 (3 local + 10 + 20).
        let before = fx.snaps();
        assert_eq!(fx.b.set_max(32), Err(LimitError::Busy { usage: 33, limit: 32 }));
        assert_eq!(fx.b.set_max(0), Err(LimitError::Busy { usage: 33, limit: 0 }));
        assert_eq!(fx.snaps(), before);
        assert_eq!(fx.b.max(), COUNTER_MAX);
        fx.assert_balanced(LOCALS);
        // Exactly the usage is accepted; then nothing more fits.
        assert_eq!(fx.b.set_max(33), Ok(()));
        assert_eq!(fx.b.max(), 33);
        assert_limit(fx.d.try_charge(1), fx.b, 1);
        assert_eq!(
            LimitError::Busy { usage: 33, limit: 32 }.to_string(),
            "usage 33 is above the requested limit 32"
        );
    });
}

#[test]
fn rule_1_7_raising_the_limit_always_succeeds() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    c.try_charge(10).unwrap();
    assert_eq!(c.set_max(11), Ok(()));
    assert_eq!(c.set_max(COUNTER_MAX), Ok(()));
    // Usage above the current limit (forced): raising is fine, lowering below usage is not.
    c.set_max(10).unwrap();
    c.charge(5).unwrap();
    assert_eq!(c.usage(), 15);
    assert_eq!(c.set_max(14), Err(LimitError::Busy { usage: 15, limit: 14 }));
    assert_eq!(c.max(), 10);
    assert_eq!(c.set_max(12), Err(LimitError::Busy { usage: 15, limit: 12 }));
    assert_eq!(c.set_max(20), Ok(()));
    assert_eq!(c.max(), 20);
    // Bounded retries: the library gives up after a fixed number instead of looping forever.
    assert_eq!(SET_MAX_RETRIES, 64);
}

#[test]
fn rule_1_7_swap_max_installs_unconditionally() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.try_charge(10).unwrap();
    assert_eq!(c.swap_max(3), Ok(COUNTER_MAX));
    assert_eq!((c.max(), c.usage(), c.margin()), (3, 10, 0));
    assert_limit(c.try_charge(1), &c, 0);
    c.uncharge(7);
    assert_limit(c.try_charge(1), &c, 0); // 3 + 1 > 3
    c.uncharge(1);
    assert!(c.try_charge(1).is_ok());
    assert_eq!(c.swap_max(0), Ok(3));
    assert_eq!(c.swap_max(COUNTER_MAX + 1), Err(LimitError::TooLarge { value: COUNTER_MAX + 1 }));
    assert_eq!((c.max(), c.usage()), (0, 3));
    assert_balanced(&root, 0, &[&c]);
}

/// Protocol L: once `set_max(L)` returns `Ok`, no charge can succeed above `L`. Chargers only
/// ever add (one unit per charge), the setter raises the limit, lets usage grow, then lowers
/// it to just above the usage it read. After every successful lowering the usage may exceed
/// `L` only by the speculative adds in flight (one unit per charger thread).
#[test]
fn rule_1_7_set_max_under_racing_chargers_never_lets_usage_past_an_installed_limit() {
    const CHARGERS: usize = 3;
    let root = Counter::new_root();
    let child = Counter::new(Some(&root));
    let stop = AtomicBool::new(false);
    let (mut ok, mut busy) = (0usize, 0usize);
    thread::scope(|s| {
        for _ in 0..CHARGERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = child.try_charge(1);
                }
            });
        }
        for _ in 0..scaled(2000) {
            root.set_max(COUNTER_MAX).unwrap();
            for _ in 0..50 {
                core::hint::spin_loop();
            }
            let target = root.usage() + 256;
            match root.set_max(target) {
                Ok(()) => {
                    ok += 1;
                    assert_eq!(root.max(), target);
                    let seen = root.usage();
                    assert!(seen <= target + CHARGERS, "usage {seen} above installed limit {target}");
                }
                Err(LimitError::Busy { limit, .. }) => {
                    assert_eq!(limit, target);
                    busy += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // End with a lowering that the chargers race against until they stop.
        loop {
            let target = root.usage() + 16;
            if root.set_max(target).is_ok() {
                break;
            }
        }
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(ok > 0, "no lowering ever succeeded ({busy} busy)");
    assert!(root.usage() <= root.max(), "{root:?}");
    assert_eq!(child.usage(), root.usage());
}

// ---------------------------------------------------------------------------------------------
// 1.8 set_min / set_low / set_high
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_8_min_low_high_accept_values_above_max_and_each_other() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    c.try_charge(6).unwrap();
    assert_eq!(c.set_min(100), Ok(()));
    assert_eq!(c.set_low(1000), Ok(()));
    assert_eq!(c.set_high(50), Ok(()));
    assert_eq!((c.min(), c.low(), c.high(), c.max()), (100, 1000, 50, 10));
    // Only min(usage, declared) counts.
    assert_eq!((c.min_usage(), c.low_usage()), (6, 6));
    // min > low is accepted too.
    c.set_min(30).unwrap();
    c.set_low(20).unwrap();
    assert_eq!((c.min(), c.low()), (30, 20));
    // high is not enforced by the counter, even below the usage.
    assert_eq!(c.set_high(0), Ok(()));
    assert!(c.try_charge(4).is_ok());
    assert_eq!((c.usage(), c.high(), c.failcnt()), (10, 0, 0));
    // COUNTER_MAX itself is representable for every setting.
    for set in [Counter::set_max, Counter::set_high, Counter::set_min, Counter::set_low] {
        assert_eq!(set(&c, COUNTER_MAX), Ok(()));
    }
    assert_eq!((c.min(), c.low(), c.high(), c.max()), (COUNTER_MAX, COUNTER_MAX, COUNTER_MAX, COUNTER_MAX));
    assert_balanced(&root, 0, &[&c]);
}

#[test]
fn bad_input_settings_above_counter_max_are_too_large_and_change_nothing() {
    fixture(|fx| {
        let before = fx.snaps();
        for value in [COUNTER_MAX + 1, usize::MAX / 2, usize::MAX - 1] {
            for node in fx.nodes() {
                let expected = Err(LimitError::TooLarge { value });
                assert_eq!(node.set_max(value), expected);
                assert_eq!(node.set_high(value), expected);
                assert_eq!(node.set_min(value), expected);
                assert_eq!(node.set_low(value), expected);
                assert_eq!(node.swap_max(value), Err(LimitError::TooLarge { value }));
            }
        }
        assert_eq!(fx.snaps(), before);
        fx.assert_balanced(LOCALS);
        assert!(LimitError::TooLarge { value: usize::MAX }.to_string().contains("above the counter maximum"));
    });
}

/// `usize::MAX` is "no limit" for every setting (as cgroupfs accepts `max`): stored as
/// `COUNTER_MAX`, never refused.
#[test]
fn usize_max_means_no_limit_for_every_setting() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    c.set_max(usize::MAX).unwrap();
    assert_eq!(c.max(), COUNTER_MAX);
    c.set_high(usize::MAX).unwrap();
    c.set_min(usize::MAX).unwrap();
    c.set_low(usize::MAX).unwrap();
    assert_eq!((c.high(), c.min(), c.low()), (COUNTER_MAX, COUNTER_MAX, COUNTER_MAX));
    assert_eq!(c.swap_max(usize::MAX), Ok(COUNTER_MAX));
    c.try_charge(1 << 40).unwrap();
    assert_eq!(root.children_min_usage(), 1 << 40, "protected up to COUNTER_MAX");
    c.uncharge(1 << 40);
}

// ---------------------------------------------------------------------------------------------
// 1.9 Peaks and their resets
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_9_reset_peak_restarts_global_and_local_peak_from_usage() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.charge(10).unwrap();
    c.uncharge(8);
    assert_eq!((c.peak(), c.local_peak()), (10, 10));
    c.reset_peak();
    assert_eq!((c.peak(), c.local_peak(), c.usage()), (2, 2, 2));
    // The parent's peak is its own.
    assert_eq!(root.peak(), 10);
    c.charge(3).unwrap();
    assert_eq!((c.peak(), c.local_peak()), (5, 5));
    c.uncharge(5);
    c.reset_peak();
    assert_eq!((c.peak(), c.local_peak()), (0, 0));
    assert_eq!(root.peak(), 10);
}

#[test]
fn rule_1_9_watchers_see_the_peak_since_their_own_reset() {
    let c = Counter::new_root();
    let a = pin!(PeakWatcher::new(&c));
    let b = pin!(PeakWatcher::new(&c));
    let never = pin!(PeakWatcher::new(&c));
    assert!(ptr::eq(a.counter(), &c));
    c.charge(10).unwrap();
    a.as_ref().reset(); // a's window starts at 10
    c.uncharge(8);
    b.as_ref().reset(); // b's window starts at 2; a keeps its 10
    c.charge(3).unwrap(); // usage 5
    assert_eq!((a.read(), b.read(), c.peak(), c.local_peak()), (10, 5, 10, 5));
    // A watcher that never reset reads the global peak, whatever the others did.
    assert_eq!(never.read(), 10);

    a.as_ref().reset(); // a: 5; b keeps max(5, 5)
    c.charge(1).unwrap(); // 6
    c.uncharge(6); // 0
    assert_eq!((a.read(), b.read(), never.read()), (6, 6, 10));

    // A global reset ends everybody's shared window; watchers keep what they saw.
    c.charge(4).unwrap();
    c.reset_peak(); // usage 4
    assert_eq!((c.peak(), c.local_peak()), (4, 4));
    assert_eq!((a.read(), b.read(), never.read()), (6, 6, 4));
    b.as_ref().reset();
    c.uncharge(4);
    assert_eq!((a.read(), b.read(), never.read()), (6, 4, 4));
}

type BoxedWatcher<'c, 'p> = Pin<Box<PeakWatcher<'c, 'p>>>;

fn reads(w: &[Option<BoxedWatcher<'_, '_>>; 3]) -> [Option<usize>; 3] {
    w.each_ref().map(|w| w.as_ref().map(|w| w.read()))
}

#[test]
fn rule_1_9_watchers_can_be_dropped_in_any_order() {
    for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]] {
        let c = Counter::new_root();
        let mut w: [Option<BoxedWatcher<'_, '_>>; 3] =
            core::array::from_fn(|_| Some(Box::pin(PeakWatcher::new(&c))));
        // Register all three with different windows: w0 from 10, w1 from 5, w2 from 6.
        c.charge(10).unwrap();
        w[0].as_ref().unwrap().as_ref().reset();
        c.uncharge(5);
        w[1].as_ref().unwrap().as_ref().reset();
        c.charge(1).unwrap();
        w[2].as_ref().unwrap().as_ref().reset();
        assert_eq!(reads(&w), [Some(10), Some(6), Some(6)]);

        let mut peak_so_far = [10, 6, 6];
        for (step, &gone) in order.iter().enumerate() {
            drop(w[gone].take());
            // The remaining list must still be intact: a reset by a survivor (or a global
            // reset when none is left) folds the ended window into every other survivor.
            c.charge(20 + step).unwrap();
            let usage = c.usage();
            for p in &mut peak_so_far {
                *p = (*p).max(usage);
            }
            match w.iter().position(Option::is_some) {
                Some(i) => {
                    c.uncharge(20 + step);
                    w[i].as_ref().unwrap().as_ref().reset();
                    peak_so_far[i] = c.usage();
                }
                None => {
                    c.uncharge(20 + step);
                    c.reset_peak();
                    assert_eq!(c.peak(), c.usage());
                }
            }
            let expected: Vec<Option<usize>> =
                w.iter().zip(peak_so_far).map(|(w, p)| w.as_ref().map(|_| p)).collect();
            assert_eq!(reads(&w).to_vec(), expected, "order {order:?} step {step}");
        }
        // A fresh watcher registers on the emptied list.
        let fresh = pin!(PeakWatcher::new(&c));
        fresh.as_ref().reset();
        c.charge(2).unwrap();
        assert_eq!(fresh.read(), c.usage());
    }
}

#[test]
fn rule_1_9_a_watcher_may_reset_many_times() {
    let c = Counter::new_root();
    let a = pin!(PeakWatcher::new(&c));
    let b = pin!(PeakWatcher::new(&c));
    for i in 1..=5 {
        c.charge(i).unwrap();
        a.as_ref().reset();
        a.as_ref().reset(); // registering twice would corrupt the list
        b.as_ref().reset();
        assert_eq!((a.read(), b.read()), (c.usage(), c.usage()));
    }
    c.charge(100).unwrap();
    c.uncharge(100);
    assert_eq!((a.read(), b.read()), (115, 115));
    a.as_ref().reset();
    assert_eq!((a.read(), b.read()), (15, 115));
}

// ---------------------------------------------------------------------------------------------
// 1.10 parse_amount (memparse)
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_10_parse_max_token() {
    for unit in [1, 4096, usize::MAX] {
        assert_eq!(parse_amount("max", unit), Ok(COUNTER_MAX));
        assert_eq!(parse_amount(" max\n", unit), Ok(COUNTER_MAX));
    }
    // The token is exact and case-sensitive; v1's "-1" is not accepted.
    assert_eq!(parse_amount("MAX", 4096), Err(ParseError::InvalidDigit { at: 0 }));
    assert_eq!(parse_amount("Max", 4096), Err(ParseError::InvalidDigit { at: 0 }));
    assert_eq!(parse_amount("maxx", 4096), Err(ParseError::InvalidDigit { at: 0 }));
    assert_eq!(parse_amount("-1", 4096), Err(ParseError::InvalidDigit { at: 0 }));
}

#[test]
fn rule_1_10_parse_binary_suffixes_in_both_cases() {
    let suffixes = [('K', 10), ('M', 20), ('G', 30), ('T', 40), ('P', 50), ('E', 60)];
    for (suffix, shift) in suffixes {
        let expected = ((7u64 << shift) / 4096) as usize;
        for s in [suffix, suffix.to_ascii_lowercase()] {
            assert_eq!(parse_amount(&format!("7{s}"), 4096), Ok(expected), "7{s}");
        }
        assert_eq!(parse_amount(&format!("1{suffix}"), 1 << 10), Ok(1 << (shift - 10)));
    }
    assert_eq!(parse_amount("512M", 4096), Ok(512 * M));
    assert_eq!(parse_amount("1g", 1), Ok(1 << 30));
    assert_eq!(parse_amount("0E", 1), Ok(0));
}

#[test]
fn rule_1_10_parse_decimal_and_hex() {
    assert_eq!(parse_amount("0", 1), Ok(0));
    assert_eq!(parse_amount("12345", 1), Ok(12345));
    // Leading zeros are decimal, not octal.
    assert_eq!(parse_amount("0755", 1), Ok(755));
    assert_eq!(parse_amount("0x10", 1), Ok(16));
    assert_eq!(parse_amount("0X1f", 1), Ok(31));
    assert_eq!(parse_amount("0xFF", 1), Ok(255));
    assert_eq!(parse_amount("0x1000", 4096), Ok(1));
    assert_eq!(parse_amount("0x10K", 1), Ok(16 << 10));
    assert_eq!(parse_amount("0x1P", 1 << 10), Ok(1 << 40));
    // In hex, E is a digit, not the exa suffix.
    assert_eq!(parse_amount("0x1E", 1), Ok(0x1E));
    assert_eq!(parse_amount("0x1e", 1), Ok(0x1E));
}

#[test]
fn rule_1_10_parse_ignores_surrounding_whitespace() {
    assert_eq!(parse_amount("  4096\t\n", 4096), Ok(1));
    assert_eq!(parse_amount(" 1g\n", 1), Ok(1 << 30));
    assert_eq!(parse_amount("\n0x10\n", 1), Ok(16));
    // Offsets are into the trimmed input.
    assert_eq!(parse_amount("   12x ", 1), Err(ParseError::InvalidDigit { at: 2 }));
    assert_eq!(parse_amount("1 K", 1), Err(ParseError::InvalidDigit { at: 1 }));
}

#[test]
fn rule_1_10_parse_truncates_to_whole_units() {
    assert_eq!(parse_amount("4095", 4096), Ok(0));
    assert_eq!(parse_amount("4096", 4096), Ok(1));
    assert_eq!(parse_amount("8191", 4096), Ok(1));
    assert_eq!(parse_amount("1K", 4096), Ok(0));
    assert_eq!(parse_amount("4K", 4096), Ok(1));
    assert_eq!(parse_amount("7K", 4096), Ok(1));
    assert_eq!(parse_amount("10", 3), Ok(3));
    assert_eq!(parse_amount("1E", usize::MAX), Ok(0));
}

#[test]
fn bad_input_garbage_amount_strings_report_kind_and_offset() {
    use ParseError::{Empty, InvalidDigit};
    let cases: &[(&str, ParseError)] = &[
        ("", Empty),
        (" \t\n", Empty),
        ("abc", InvalidDigit { at: 0 }),
        ("K", InvalidDigit { at: 0 }),
        ("+5", InvalidDigit { at: 0 }),
        ("-0", InvalidDigit { at: 0 }),
        ("12Q", InvalidDigit { at: 2 }),
        ("1KB", InvalidDigit { at: 2 }),
        ("1kk", InvalidDigit { at: 2 }),
        ("1.5G", InvalidDigit { at: 1 }),
        ("1e5", InvalidDigit { at: 2 }), // "1E" then a stray digit: no scientific notation
        ("10 000", InvalidDigit { at: 2 }),
        ("0x", InvalidDigit { at: 1 }),
        ("0xg", InvalidDigit { at: 2 }),
        ("0x1Z", InvalidDigit { at: 3 }),
        ("0x10KK", InvalidDigit { at: 5 }),
        ("1\u{e9}", InvalidDigit { at: 1 }),
        ("\u{663}", InvalidDigit { at: 0 }), // ARABIC-INDIC DIGIT THREE is not a digit here
        ("12\u{0}", InvalidDigit { at: 2 }),
    ];
    for &(input, expected) in cases {
        assert_eq!(parse_amount(input, 4096), Err(expected), "{input:?}");
        assert_eq!(parse_amount(input, 1), Err(expected), "{input:?}");
    }
    assert_eq!(ParseError::InvalidDigit { at: 2 }.to_string(), "invalid character at byte 2");
    // A rejected string never reaches a limit write: the fixture's limits and balances are
    // exactly as before.
    fixture(|fx| {
        for &(input, _) in cases {
            if let Ok(limit) = parse_amount(input, 1) {
                fx.b.set_max(limit).unwrap();
            }
        }
        assert_eq!(fx.b.max(), COUNTER_MAX);
        fx.assert_balanced(LOCALS);
    });
}

#[test]
fn bad_input_too_large_amounts_are_errors_not_clamped() {
    use ParseError::TooLarge;
    // Does not fit 64 bits at all (Linux would clamp to "max").
    assert_eq!(parse_amount("18446744073709551616", usize::MAX), Err(TooLarge));
    assert_eq!(parse_amount("0x10000000000000000", usize::MAX), Err(TooLarge));
    assert_eq!(parse_amount("99999999999999999999999", 4096), Err(TooLarge));
    assert_eq!(parse_amount("16E", usize::MAX), Err(TooLarge));
    assert_eq!(parse_amount("17179869184G", usize::MAX), Err(TooLarge)); // 2^64
    // 15 EiB fits 64 bits; in 8 KiB units it fits the counter, in 4 KiB units it does not
    // (15 * 2^48 > 2^51 - 1); 7 EiB in 4 KiB pages is the largest whole-EiB amount that does.
    assert_eq!(parse_amount("15E", 8192), Ok(15 << 47));
    assert_eq!(parse_amount("15E", 4096), Err(TooLarge));
    assert_eq!(parse_amount("8E", 4096), Err(TooLarge));
    assert_eq!(parse_amount("7E", 4096), Ok(7 << 48));
    // Fits 64 bits but not the counter.
    assert_eq!(parse_amount("1E", 1), Err(TooLarge));
    assert_eq!(parse_amount(&format!("{COUNTER_MAX}"), 1), Ok(COUNTER_MAX));
    assert_eq!(parse_amount(&format!("{}", COUNTER_MAX as u64 + 1), 1), Err(TooLarge));
    assert!(TooLarge.to_string().contains("above the counter maximum"));
}

#[test]
#[cfg(target_pointer_width = "64")]
fn bad_input_too_large_amount_boundaries_in_pages() {
    use ParseError::TooLarge;
    let top = COUNTER_MAX as u64 * 4096;
    assert_eq!(parse_amount(&format!("{}", top + 4095), 4096), Ok(COUNTER_MAX));
    assert_eq!(parse_amount(&format!("{}", top + 4096), 4096), Err(TooLarge));
    assert_eq!(parse_amount("18446744073709551615", 4096), Err(TooLarge));
    // u64::MAX bytes in 8 KiB units is exactly 2^51 - 1 = COUNTER_MAX.
    assert_eq!(parse_amount("18446744073709551615", 8192), Ok(COUNTER_MAX));
    // (2^34 - 1) GiB in 8 KiB units = 2^51 - 2^17.
    assert_eq!(parse_amount("17179869183G", 8192), Ok((1 << 51) - (1 << 17)));
}

#[test]
fn bad_input_zero_unit() {
    for input in ["4096", "max", "", "garbage", "99999999999999999999999"] {
        assert_eq!(parse_amount(input, 0), Err(ParseError::ZeroUnit), "{input:?}");
    }
    assert_eq!(ParseError::ZeroUnit.to_string(), "unit size must be at least one byte");
}

// ---------------------------------------------------------------------------------------------
// 1.11 Effective protection
// ---------------------------------------------------------------------------------------------

// Argument order of `effective_protection`:
// (usage, parent_usage, setting, parent_effective, siblings_protected, recursive).

#[test]
fn rule_1_11_ep_rule_2_never_more_than_the_parents_effective_protection() {
    // Consistent inputs never need the cap; stale sibling sums do. Declared 100, used 100,
    // but the sibling sum read (0) predates this node's own contribution.
    assert_eq!(effective_protection(100, 100, 100, 30, 0, false), 30);
    // Stale parent usage below the child's usage inflates the floating share: capped.
    assert_eq!(effective_protection(100, 50, 0, 30, 0, true), 30);
    // Overcommitted with a stale (too small) sibling sum: 100 * 50 / 60 = 83, capped at 50.
    assert_eq!(effective_protection(100, 100, 100, 50, 60, false), 50);
    assert_eq!(effective_protection(5, 5, 5, 0, 0, true), 0, "parent has nothing");
}

#[test]
fn rule_1_11_ep_rule_3_overcommit_splits_by_used_protection() {
    // The worked example's level below B: B has 50M, C/D/E use 50M each and declare
    // 75M/25M/0, so the used protection is 50M + 25M + 0 = 75M > 50M.
    let (used, parent_usage, parent_eff, siblings) = (50 * M, 150 * M, 50 * M, 75 * M);
    // C: 12800 * 12800 / 19200 = 8533.33 → 8533
    assert_eq!(effective_protection(used, parent_usage, 75 * M, parent_eff, siblings, false), 8533);
    // D: 6400 * 12800 / 19200 = 4266.67 → 4266
    assert_eq!(effective_protection(used, parent_usage, 25 * M, parent_eff, siblings, false), 4266);
    // E declares nothing: 0, and recursion does not help while overcommitted.
    assert_eq!(effective_protection(used, parent_usage, 0, parent_eff, siblings, true), 0);
    // Work-conserving: a child using nothing claims nothing.
    assert_eq!(effective_protection(0, parent_usage, 500 * M, parent_eff, siblings, false), 0);
    // 128-bit intermediates: products near COUNTER_MAX² are exact.
    assert_eq!(
        effective_protection(COUNTER_MAX, COUNTER_MAX, COUNTER_MAX, COUNTER_MAX / 2, COUNTER_MAX, false),
        COUNTER_MAX / 2
    );
    assert_eq!(
        effective_protection(usize::MAX, 0, usize::MAX, usize::MAX - 1, usize::MAX, false),
        usize::MAX - 1
    );
}

#[test]
fn rule_1_11_ep_rule_4_undercommit_gives_at_most_the_declared_share() {
    assert_eq!(effective_protection(50, 100, 20, 100, 40, false), 20);
    // Using less than declared: only the usage is protected.
    assert_eq!(effective_protection(10, 100, 20, 100, 30, false), 10);
    // Exactly committed (siblings == parent) is not overcommitted.
    assert_eq!(effective_protection(20, 100, 20, 40, 40, false), 20);
    // Without recursion, unclaimed parental protection is not handed out.
    assert_eq!(effective_protection(50, 100, 0, 100, 40, false), 0);
}

#[test]
fn rule_1_11_ep_rule_5_recursive_protection_floats_by_unprotected_usage() {
    // Unclaimed 100 - 40 = 60, shared by unprotected usage: 60 * (50 - 20) / (100 - 40) = 30.
    assert_eq!(effective_protection(50, 100, 20, 100, 40, true), 20 + 30);
    // A child declaring nothing still gets its share: 60 * 50 / 60.
    assert_eq!(effective_protection(50, 100, 0, 100, 40, true), 50);
    // Fully protected child: no float.
    assert_eq!(effective_protection(20, 100, 30, 100, 40, true), 20);
    // Nothing unclaimed: no float.
    assert_eq!(effective_protection(50, 100, 20, 40, 40, true), 20);
    // The division guard: parent usage not above the siblings' protected sum.
    assert_eq!(effective_protection(50, 40, 20, 100, 40, true), 20);
    assert_eq!(effective_protection(50, 0, 0, 100, 0, true), 0);
    // Near the top of the range.
    assert_eq!(effective_protection(COUNTER_MAX, COUNTER_MAX, 0, COUNTER_MAX, 0, true), COUNTER_MAX);
}

#[test]
fn rule_1_11_ep_bounds_hold_for_all_small_inputs() {
    for usage in 0..8 {
        for parent_usage in 0..10 {
            for setting in 0..8 {
                for parent_eff in 0..8 {
                    for siblings in 0..10 {
                        for recursive in [false, true] {
                            let ep = effective_protection(
                                usage,
                                parent_usage,
                                setting,
                                parent_eff,
                                siblings,
                                recursive,
                            );
                            let args = (usage, parent_usage, setting, parent_eff, siblings);
                            assert!(ep <= parent_eff, "rule 2 {args:?} {recursive} → {ep}");
                            if !recursive {
                                assert!(ep <= usage.min(setting), "rule 4 {args:?} → {ep}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The tree of the kernel's `test_memcg_min` / `test_memcg_low` (and of `memcg_protection.m`),
/// in 4 KiB pages: A is the reclaim root, B = A's child with min = low = 50M, and B's
/// children C, D, E, F declare 75M, 25M, 0 and 500M and use 50M, 50M, 50M and 0.
fn selftest_tree<R>(f: impl FnOnce(&Counter<'_>, &Counter<'_>, [&Counter<'_>; 4]) -> R) -> R {
    let a = Counter::new_root();
    let b = Counter::new(Some(&a));
    let leaves = [(); 4].map(|()| Counter::new(Some(&b)));
    b.set_min(50 * M).unwrap();
    b.set_low(50 * M).unwrap();
    for (leaf, (declared, used)) in
        leaves.iter().zip([(75 * M, 50 * M), (25 * M, 50 * M), (0, 50 * M), (500 * M, 0)])
    {
        leaf.set_min(declared).unwrap();
        leaf.set_low(declared).unwrap();
        leaf.try_charge(used).unwrap();
    }
    let [c, d, e, f_] = &leaves;
    f(&a, &b, [c, d, e, f_])
}

/// One top-down walk rooted at `a`.
fn walk(a: &Counter<'_>, b: &Counter<'_>, leaves: [&Counter<'_>; 4], recursive: bool) {
    b.calculate_protection(a, recursive);
    for leaf in leaves {
        leaf.calculate_protection(a, recursive);
    }
}

#[test]
fn rule_1_11_selftest_example_effective_values() {
    selftest_tree(|a, b, leaves| {
        let [c, d, e, f] = leaves;
        assert_eq!(b.usage(), 150 * M);
        // Used protection below B: min(50M, 75M) + min(50M, 25M) + 0 + 0 = 75M = 19200.
        assert_eq!((b.children_min_usage(), b.children_low_usage()), (75 * M, 75 * M));
        assert_eq!((b.min_usage(), a.children_min_usage()), (50 * M, 50 * M));
        for recursive in [false, true] {
            walk(a, b, leaves, recursive);
            // B is A's child: it gets what it declares, 50M = 12800.
            assert_eq!((b.effective_min(), b.effective_low()), (50 * M, 50 * M));
            // Overcommitted (75M used protection > 50M): split by used protection.
            // C: 12800 * 12800 / 19200 = 8533 (33.3M); D: 6400 * 12800 / 19200 = 4266
            // (16.7M); E declares 0 → 0; F uses nothing, so the walk leaves it untouched (0).
            let expected = [8533, 4266, 0, 0];
            for (leaf, want) in leaves.iter().zip(expected) {
                assert_eq!((leaf.effective_min(), leaf.effective_low()), (want, want));
                // The stateless query agrees with the walk.
                assert_eq!(leaf.effective_protection_under(a, recursive), Some((want, want)));
            }
            assert!(c.effective_min() + d.effective_min() <= b.effective_min());
            assert_eq!(b.effective_protection_under(a, recursive), Some((50 * M, 50 * M)));
            assert_eq!(f.usage(), 0);
            assert_eq!(e.effective_protection_under(b, recursive), Some((0, 0)));
        }
    });
}

/// Reclaim in the spirit of `memcg_protection.m`: every round recomputes effective protection
/// top-down, then reclaims `alpha * (usage - emin)` (at least one cluster, at most the usage)
/// from every leaf above its protection, all leaves from the same round's values (the model's
/// parallel reclaim). Returns the number of rounds until nothing was reclaimable.
fn simulate_reclaim(a: &Counter<'_>, b: &Counter<'_>, leaves: [&Counter<'_>; 4], recursive: bool) -> usize {
    /// alpha = 1/10, as in the model.
    const ALPHA_DIVISOR: usize = 10;
    /// SWAP_CLUSTER_MAX: 32 pages (the model's 128 KiB).
    const CLUSTER: usize = 32;
    for round in 1..=1000 {
        walk(a, b, leaves, recursive);
        let amounts = leaves.map(|leaf| {
            let (usage, emin) = (leaf.usage(), leaf.effective_min());
            if usage > emin { ((usage - emin) / ALPHA_DIVISOR).max(CLUSTER).min(usage) } else { 0 }
        });
        if amounts.iter().all(|&r| r == 0) {
            return round;
        }
        for (leaf, r) in leaves.iter().zip(amounts) {
            leaf.try_uncharge(r).unwrap();
            assert_balanced(b, 0, &leaves);
        }
    }
    panic!("reclaim did not settle in 1000 rounds");
}

#[test]
fn rule_1_11_selftest_example_reclaim_settles_at_documented_equilibrium() {
    for recursive in [false, true] {
        selftest_tree(|a, b, leaves| {
            let rounds = simulate_reclaim(a, b, leaves, recursive);
            let [c, d, e, f] = leaves.map(Counter::usage);
            // Tolerance: ±1M (256 pages), far tighter than the selftest's 15% (~4.4M for C)
            // but justified: the documented 29M / 21M are rounded to whole MiB (±0.5M); the
            // last reclaim can undershoot an equilibrium by at most one cluster (32 pages =
            // 0.125M) because rounds stop as soon as usage <= emin; and integer truncation
            // loses less than one page per round and leaf (~50 rounds ≈ 0.2M).
            let near = |got: usize, want: usize| got.abs_diff(want) <= M;
            assert!(near(c, 29 * M), "C = {c} pages ({:.2}M)", c as f64 / M as f64);
            assert!(near(d, 21 * M), "D = {d} pages ({:.2}M)", d as f64 / M as f64);
            // E: nothing protects it; recursion can leave it a few pages of floating share
            // (less than one cluster).
            assert!(e < 32, "E = {e} pages");
            if !recursive {
                assert_eq!(e, 0);
            }
            assert_eq!(f, 0);
            // B settles just within its 50M of protection, and everything balances.
            assert!(b.usage() <= 50 * M && b.usage() + M >= 50 * M, "B = {}", b.usage());
            assert_balanced(b, 0, &leaves);
            assert_balanced(a, 0, &[b]);
            assert!(rounds < 200, "took {rounds} rounds");
            // At equilibrium every leaf is within its effective protection.
            walk(a, b, leaves, recursive);
            for leaf in leaves {
                assert!(leaf.usage() <= leaf.effective_min() || leaf.usage() == 0, "{leaf:?}");
            }
        });
    }
}

#[test]
fn rule_1_11_calculate_protection_is_stateful_and_top_down() {
    selftest_tree(|a, b, leaves| {
        let [c, d, e, _] = leaves;
        // Rule 1.11.1: the root's own values are left untouched, whatever it declares.
        a.set_min(999).unwrap();
        a.calculate_protection(a, false);
        assert_eq!((a.effective_min(), a.effective_low()), (0, 0));

        walk(a, b, leaves, false);
        assert_eq!(c.effective_min(), 8533);

        // Stateful: C reads B's *stored* value. Halve B's declaration without recomputing B,
        // and C still sees 50M ...
        b.set_min(25 * M).unwrap();
        c.calculate_protection(a, false);
        assert_eq!(c.effective_min(), 8533);
        // ... recompute B first, and C gets 12800 * 6400 / 19200 = 4266.
        b.calculate_protection(a, false);
        assert_eq!(b.effective_min(), 25 * M);
        c.calculate_protection(a, false);
        assert_eq!(c.effective_min(), 4266);

        // Targeted reclaim rooted at B: B keeps its (stale) values and its children are first
        // level, so they get their declarations, not capped by usage (C declares 75M, uses 50M).
        b.calculate_protection(b, false);
        assert_eq!(b.effective_min(), 25 * M);
        for leaf in [c, d, e] {
            leaf.calculate_protection(b, false);
        }
        assert_eq!(
            [c, d, e].map(Counter::effective_min),
            [75 * M, 25 * M, 0],
            "first level gets the declared value"
        );

        // Zero usage: the walk returns without updating, leaving stale values ...
        c.uncharge(50 * M);
        c.calculate_protection(a, false);
        assert_eq!((c.effective_min(), c.effective_low()), (75 * M, 75 * M));
        // ... while the stateless query says (0, 0).
        assert_eq!(c.effective_protection_under(a, false), Some((0, 0)));
    });
}

#[test]
fn rule_1_11_effective_protection_under_is_a_stateless_query() {
    selftest_tree(|a, b, leaves| {
        let [c, d, _, f] = leaves;
        let other = Counter::new_root();
        let before = [a, b, c, d, f].map(snap);
        // Root not an ancestor (a sibling, a descendant, another tree): None.
        assert_eq!(c.effective_protection_under(d, false), None);
        assert_eq!(b.effective_protection_under(c, false), None);
        assert_eq!(c.effective_protection_under(&other, true), None);
        // The root itself: (0, 0), even though B declares 50M.
        assert_eq!(b.effective_protection_under(b, false), Some((0, 0)));
        assert_eq!(a.effective_protection_under(a, true), Some((0, 0)));
        // Computed top-down from the root without any walk having run.
        assert_eq!(c.effective_protection_under(a, false), Some((8533, 8533)));
        assert_eq!(c.effective_protection_under(b, false), Some((75 * M, 75 * M)));
        assert_eq!(f.effective_protection_under(a, false), Some((0, 0)));
        // Nothing was stored.
        assert_eq!([a, b, c, d, f].map(snap), before);
        assert_eq!(c.effective_min(), 0);
    });
}

/// The stateless query's docs: "Unlike the stateful walk, a node with zero usage gets `(0, 0)`
/// here rather than stale values." That holds below the first level but not for a child of
/// the root, which gets its declaration even when idle.
#[test]

fn rule_1_11_effective_protection_under_gives_zero_for_an_idle_first_level_child() {
    selftest_tree(|a, b, leaves| {
        let [_, _, _, f] = leaves;
        assert_eq!(f.usage(), 0);
        // Below the first level the promise holds.
        assert_eq!(f.effective_protection_under(a, false), Some((0, 0)));
        // F is a first-level child when the reclaim root is B.
        assert_eq!(f.effective_protection_under(b, false), Some((0, 0)));
    });
}

#[test]
fn rule_1_11_untracked_nodes_get_no_effective_protection() {
    let root = Counter::new_root();
    let untracked = Counter::new(Some(&root)).without_protection();
    let child = Counter::new(Some(&untracked));
    untracked.set_min(100).unwrap();
    child.set_min(100).unwrap();
    child.charge(50).unwrap();
    untracked.calculate_protection(&root, false);
    child.calculate_protection(&root, false);
    assert_eq!((untracked.effective_min(), child.effective_min()), (0, 0));
    assert_eq!(untracked.effective_protection_under(&root, false), Some((0, 0)));
    assert_eq!(child.effective_protection_under(&root, true), Some((0, 0)));
    // Rooted at the untracked node, the child is first level and gets its declaration.
    assert_eq!(child.effective_protection_under(&untracked, false), Some((100, 0)));
}

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
