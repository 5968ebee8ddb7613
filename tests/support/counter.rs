//! Helpers of the counter chapters (`tests/counter_*.rs`): invariant checks (I1, I3),
//! snapshots of every observable, trees of counters built on the stack, and the bad-input
//! fixture.

use core::ptr;

use chargetree::counter::{ChargeError, Counter};

/// 1 MiB in 4 KiB pages.
pub(crate) const M: usize = 256;

/// Iterations of the randomised and threaded tests (small under miri).
pub(crate) const fn scaled(n: usize) -> usize {
    if cfg!(miri) { n / 400 + 1 } else { n }
}

/// Checks I3 for one node: `x_usage = min(usage, x)` if it has a parent and tracks protection,
/// otherwise nothing was ever installed (the top node's protection is never summed).
#[track_caller]
pub(crate) fn assert_protected_usage(c: &Counter<'_>) {
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
pub(crate) fn assert_balanced(node: &Counter<'_>, local: usize, children: &[&Counter<'_>]) {
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
pub(crate) struct Snap {
    pub(crate) usage: usize,
    pub(crate) max: usize,
    pub(crate) high: usize,
    pub(crate) min: usize,
    pub(crate) low: usize,
    pub(crate) peak: usize,
    pub(crate) local_peak: usize,
    pub(crate) failcnt: usize,
    pub(crate) underflows: usize,
    pub(crate) forgiven: usize,
    pub(crate) min_usage: usize,
    pub(crate) low_usage: usize,
    pub(crate) children_min_usage: usize,
    pub(crate) children_low_usage: usize,
    pub(crate) effective_min: usize,
    pub(crate) effective_low: usize,
}

pub(crate) fn snap(c: &Counter<'_>) -> Snap {
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
pub(crate) fn assert_limit(r: Result<(), ChargeError<'_, '_>>, at: &Counter<'_>, level: usize) {
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
pub(crate) struct NodeSpec {
    /// Index of the parent (must be smaller than this node's index), `None` for a top node.
    pub(crate) parent: Option<usize>,
    pub(crate) protection: bool,
    pub(crate) failcnt: bool,
}

impl NodeSpec {
    pub(crate) const fn under(parent: Option<usize>) -> Self {
        Self { parent, protection: true, failcnt: true }
    }
}

/// Builds the counters described by `spec` on the stack (one recursion level per node, each
/// new counter borrowing earlier ones as parents) and runs `f` on them, in `spec` order.
pub(crate) fn with_tree<R>(spec: &[NodeSpec], f: impl FnOnce(&[&Counter<'_>]) -> R) -> R {
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

/// The fixture for bad-input tests: `root > {b > {c, d}, s}`, every node with declared
/// protection and local charges, so every sum is non-trivial.
pub(crate) struct Fixture<'a> {
    pub(crate) root: &'a Counter<'a>,
    pub(crate) b: &'a Counter<'a>,
    pub(crate) c: &'a Counter<'a>,
    pub(crate) d: &'a Counter<'a>,
    pub(crate) s: &'a Counter<'a>,
}

/// Local charges of (root, b, c, d, s) set up by [`fixture`].
pub(crate) const LOCALS: [usize; 5] = [1, 3, 10, 20, 4];

impl Fixture<'_> {
    pub(crate) fn nodes(&self) -> [&Counter<'_>; 5] {
        [self.root, self.b, self.c, self.d, self.s]
    }

    pub(crate) fn snaps(&self) -> [Snap; 5] {
        self.nodes().map(snap)
    }

    /// I1 and I3 at every node, given the local charges of (root, b, c, d, s).
    #[track_caller]
    pub(crate) fn assert_balanced(&self, locals: [usize; 5]) {
        let [root, b, c, d, s] = self.nodes();
        assert_balanced(root, locals[0], &[b, s]);
        assert_balanced(b, locals[1], &[c, d]);
        assert_balanced(c, locals[2], &[]);
        assert_balanced(d, locals[3], &[]);
        assert_balanced(s, locals[4], &[]);
    }
}

pub(crate) fn fixture<R>(f: impl FnOnce(&Fixture<'_>) -> R) -> R {
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
