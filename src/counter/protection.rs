//! Protected-usage propagation and effective protection (Linux's
//! `propagate_protected_usage()`, `effective_protection()` and
//! `page_counter_calculate_protection()`).
//!
//! Effective protection is what a node may keep under reclaim, given what it declares
//! (`min`, `low`), what it uses, and what its parent can hand down. The rules, in the order
//! the kernel's comment on `effective_protection()` numbers them:
//!
//! 1. At the first level below the reclaim root, a node gets what it declares (not capped by
//!    its usage).
//! 2. Deeper down, a node never gets more than its parent's effective protection.
//! 3. When the children together claim (and use) more protection than the parent has, the
//!    parent's effective protection is split in proportion to each child's *used* protection
//!    `min(usage, declared)`: work-conserving, an idle child claims nothing.
//! 4. When they claim less, each child gets no more than it declared...
//! 5. ...unless recursive protection is on (cgroup2's `memory_recursiveprot`): then the
//!    parent's unclaimed protection floats down to the children in proportion to their
//!    *unprotected* usage, so a subtree can be protected as a whole without configuring
//!    every leaf.
//!
//! Rules 4 and 5 do not conflict: rule 5 hands out only what no sibling claimed.
//!
//! All products are computed in 128 bits (Linux uses `unsigned long`, which can overflow for
//! amounts near `PAGE_COUNTER_MAX`), and the results are clamped to the parent's effective
//! value, so stale sibling sums read during concurrent updates can never inflate them.

use super::{Counter, clamp_nonneg};
use crate::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use crate::sync::dekker_fence;

/// Effective protection of one node (Linux's `effective_protection()`), a pure function.
///
/// * `usage`: the node's usage;
/// * `parent_usage`: the parent's usage;
/// * `setting`: the node's declared `min` or `low`;
/// * `parent_effective`: the parent's effective `min` or `low`;
/// * `siblings_protected`: the parent's `children_min_usage` or `children_low_usage`
///   (Σ over the node and its siblings of `min(usage, declared)`);
/// * `recursive`: whether unclaimed protection floats down (rule 5 in the module docs).
///
/// The result never exceeds `parent_effective`, and without `recursive` it never exceeds
/// `min(usage, setting)`. No input overflows or panics.
///
/// ```
/// use chargetree::counter::effective_protection;
///
/// // Three children claim 50 + 25 + 0 of a parent that has 50: proportional split.
/// assert_eq!(effective_protection(50, 150, 75, 50, 75, false), 33);
/// assert_eq!(effective_protection(50, 150, 25, 50, 75, false), 16);
/// // Undercommitted: each keeps what it declared.
/// assert_eq!(effective_protection(50, 100, 20, 100, 40, false), 20);
/// // ... and with recursive protection the unclaimed 60 floats by unprotected usage.
/// assert_eq!(effective_protection(50, 100, 20, 100, 40, true), 20 + 60 * 30 / 60);
/// ```
#[must_use]
pub fn effective_protection(
    usage: usize,
    parent_usage: usize,
    setting: usize,
    parent_effective: usize,
    siblings_protected: usize,
    recursive: bool,
) -> usize {
    let protected = usage.min(setting);

    // Rule 3: overcommitted, share in proportion to used protection.
    if siblings_protected > parent_effective {
        let share = protected as u128 * parent_effective as u128 / siblings_protected as u128;
        // `protected` may exceed a stale `siblings_protected`; never hand out more than the
        // parent has.
        return (share as usize).min(parent_effective);
    }

    // Rule 4.
    let mut ep = protected;

    // Rule 5. The double check guards the division: the inputs are not read atomically.
    if recursive
        && parent_effective > siblings_protected
        && parent_usage > siblings_protected
        && usage > protected
    {
        let unclaimed = (parent_effective - siblings_protected) as u128;
        let share = unclaimed * (usage - protected) as u128 / (parent_usage - siblings_protected) as u128;
        ep = (ep as u128 + share).min(usize::MAX as u128) as usize;
    }

    // Rule 2.
    ep.min(parent_effective)
}

impl<'p> Counter<'p> {
    /// Refreshes `min_usage` / `low_usage` for a usage of `usage` and pushes the differences
    /// into the parent's sums (protocol P in the module docs).
    #[inline(always)]
    pub(super) fn propagate_protected_usage(&self, usage: usize) {
        // ORDERING: SeqCst, pairs with the SeqCst store in `arm_protection` and its
        // repropagation's SeqCst load of `usage` (store-buffering): either this charger
        // sees the node armed, or the arming thread's repropagation sees this charger's
        // usage update. A plain load on x86.
        if !self.conf.prot_armed.load(Ordering::SeqCst) {
            // No protection declared and none recorded: nothing to refresh (one load, the
            // common case of every counter without `min`/`low`).
            return;
        }
        let Some(parent) = self.conf.parent else { return };
        // ORDERING: Relaxed loads for the cheap check; protocol P's re-check in the slow
        // path makes the final value exact at quiescence.
        let min = self.conf.min.load(Ordering::Relaxed);
        let low = self.conf.low.load(Ordering::Relaxed);
        if self.track.min_usage.load(Ordering::Relaxed) != usage.min(min)
            || self.track.low_usage.load(Ordering::Relaxed) != usage.min(low)
        {
            self.propagate_slow(parent, usage);
        }
    }

    #[inline(never)]
    fn propagate_slow(&self, parent: &Counter<'p>, mut usage: usize) {
        loop {
            // ORDERING: SeqCst on the declared value, the swap and the re-read of `usage`
            // below: with `usage` updated by SeqCst RMWs, every installer's re-read comes
            // after the last usage update in the single SeqCst order, so the last swap in
            // `x_usage`'s order matches the final usage (protocol P).
            let min = self.conf.min.load(Ordering::SeqCst);
            let low = self.conf.low.load(Ordering::SeqCst);
            let want_min = usage.min(min);
            let want_low = usage.min(low);
            swap_and_push(&self.track.min_usage, want_min, &parent.track.children_min_usage);
            swap_and_push(&self.track.low_usage, want_low, &parent.track.children_low_usage);
            let now = clamp_nonneg(self.hot.usage.load(Ordering::SeqCst));
            if now.min(self.conf.min.load(Ordering::SeqCst)) == want_min
                && now.min(self.conf.low.load(Ordering::SeqCst)) == want_low
            {
                return;
            }
            usage = now;
        }
    }

    /// Re-propagates this node and every ancestor from their current usage (after `min` or
    /// `low` changed; Linux's loop in `page_counter_set_min/low`).
    /// Arms or disarms the protection bookkeeping of this node after its `min`/`low`
    /// changed, and refreshes the sums of this node and its ancestors. The caller holds the
    /// writer flag.
    pub(super) fn protection_changed(&self) {
        let (min, low) = (self.min(), self.low());
        let wanted = (min != 0 || low != 0) && self.conf.parent.is_some() && self.tracks_protection();
        if wanted {
            // ORDERING: SeqCst, see `propagate_protected_usage`; the (loom-only) fence is the
            // other half of the store-buffering pair, as in protocol L.
            self.conf.prot_armed.store(true, Ordering::SeqCst);
            dekker_fence();
        }
        self.repropagate_upwards();
        // ORDERING: SeqCst loads; the sums of a node whose declared values are zero are zero
        // after the refresh above, so it can stop tracking.
        if !wanted
            && self.track.min_usage.load(Ordering::SeqCst) == 0
            && self.track.low_usage.load(Ordering::SeqCst) == 0
        {
            self.conf.prot_armed.store(false, Ordering::SeqCst);
        }
    }

    pub(super) fn repropagate_upwards(&self) {
        for c in self.ancestors_and_self() {
            // ORDERING: SeqCst, see `propagate_slow`.
            let usage = clamp_nonneg(c.hot.usage.load(Ordering::SeqCst));
            c.propagate_protected_usage(usage);
        }
    }

    /// The effective `min` computed by the last [`Counter::calculate_protection`] of this
    /// node (Linux's `emin`). Stale until that runs.
    #[must_use]
    pub fn effective_min(&self) -> usize {
        // ORDERING: Relaxed; written and read within one top-down walk by the same caller.
        self.track.emin.load(Ordering::Relaxed)
    }

    /// The effective `low` computed by the last [`Counter::calculate_protection`] of this
    /// node (Linux's `elow`). Stale until that runs.
    #[must_use]
    pub fn effective_low(&self) -> usize {
        // ORDERING: Relaxed; see `effective_min`.
        self.track.elow.load(Ordering::Relaxed)
    }

    /// Computes and stores this node's effective `min` / `low` for a reclaim walk rooted at
    /// `root` (Linux's `page_counter_calculate_protection`).
    ///
    /// **Stateful**: it reads the parent's values stored by the previous step of the same
    /// walk, so it is only meaningful as part of a top-down iteration that has already
    /// calculated every ancestor below `root`. For an isolated query use
    /// [`Counter::effective_protection_under`].
    ///
    /// As in Linux: the root's own values are left untouched (a reclaim target's protection
    /// does not shield it from itself), and a node with zero usage keeps stale values
    /// (nothing to reclaim).
    pub fn calculate_protection(&self, root: &Counter<'_>, recursive: bool) {
        if same(self, root) {
            return;
        }
        let usage = self.usage();
        if usage == 0 {
            return;
        }
        let (emin, elow) = match self.conf.parent {
            _ if !self.tracks_protection() => (0, 0),
            None => (self.min(), self.low()),
            Some(parent) if same(parent, root) => (self.min(), self.low()),
            Some(parent) => self.protection_from_parent(
                usage,
                parent,
                parent.effective_min(),
                parent.effective_low(),
                recursive,
            ),
        };
        // ORDERING: Relaxed; see `effective_min`.
        self.track.emin.store(emin, Ordering::Relaxed);
        self.track.elow.store(elow, Ordering::Relaxed);
    }

    fn protection_from_parent(
        &self,
        usage: usize,
        parent: &Counter<'_>,
        parent_emin: usize,
        parent_elow: usize,
        recursive: bool,
    ) -> (usize, usize) {
        if !self.tracks_protection() {
            return (0, 0);
        }
        let parent_usage = parent.usage();
        let emin = effective_protection(
            usage,
            parent_usage,
            self.min(),
            parent_emin,
            parent.children_min_usage(),
            recursive,
        );
        let elow = effective_protection(
            usage,
            parent_usage,
            self.low(),
            parent_elow,
            parent.children_low_usage(),
            recursive,
        );
        (emin, elow)
    }

    /// Effective `(min, low)` of this node for reclaim rooted at `root`, computed top-down
    /// along the path from `root` without storing anything: a stateless query.
    ///
    /// Returns `None` if `root` is neither this node nor one of its ancestors. Returns
    /// `(0, 0)` for `root` itself. Unlike the stateful walk, a node with zero usage gets
    /// `(0, 0)` here rather than stale values (at every level, also directly below `root`,
    /// where the stateful walk would install the declared values). Cost: O(depth²) loads, no
    /// allocation.
    #[must_use]
    pub fn effective_protection_under(&self, root: &Counter<'_>, recursive: bool) -> Option<(usize, usize)> {
        // Distance from `self` up to `root`.
        let dist = self.ancestors_and_self().position(|c| same(c, root))?;
        if dist == 0 {
            return Some((0, 0));
        }
        let (mut emin, mut elow) = (0, 0);
        // Walk down: level `dist - 1` is the child of `root`, level 0 is `self`.
        for level in (0..dist).rev() {
            let c = self.ancestors_and_self().nth(level).expect("level < dist");
            let usage = c.usage();
            (emin, elow) = if usage == 0 || !c.tracks_protection() {
                (0, 0)
            } else if level == dist - 1 {
                (c.min(), c.low())
            } else {
                let parent = c.conf.parent.expect("below root");
                c.protection_from_parent(usage, parent, emin, elow, recursive)
            };
        }
        Some((emin, elow))
    }
}

/// Installs `want` into `x_usage` and adds the difference to the parent's sum.
#[inline]
fn swap_and_push(x_usage: &AtomicUsize, want: usize, parent_sum: &AtomicIsize) {
    // ORDERING: Relaxed cheap check; the swap below is what protocol P relies on.
    if x_usage.load(Ordering::Relaxed) == want {
        return;
    }
    // ORDERING: SeqCst; see `propagate_slow`. The parent's sum only needs the deltas to
    // telescope, which holds for any interleaving of RMWs, so its add is Relaxed.
    let old = x_usage.swap(want, Ordering::SeqCst);
    let delta = want.wrapping_sub(old) as isize;
    if delta != 0 {
        parent_sum.fetch_add(delta, Ordering::Relaxed);
    }
}

#[inline]
fn same(a: &Counter<'_>, b: &Counter<'_>) -> bool {
    core::ptr::eq(a as *const Counter<'_> as *const u8, b as *const Counter<'_> as *const u8)
}
