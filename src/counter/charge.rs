//! charge / try_charge / uncharge: the hierarchical walks and their rollback
//! (after `page_counter_charge()`, `page_counter_try_charge()`, `page_counter_uncharge()`
//! and `page_counter_cancel()` in Linux's `mm/page_counter.c`, with the changes listed in
//! the module docs: a read-only pre-check, adds top-down, and subtractions that never take
//! a node below zero).
//!
//! # Why adds go top-down and subtractions never go below zero
//!
//! A charge adds its amount to every level, checks each level's limit right after its add,
//! and undoes what it added if a level refuses. Until the whole walk has passed, its units
//! at a level are *speculative*. An over-uncharge (a caller bug, clamped at zero) racing
//! with it may take such units, which are indistinguishable from committed ones. That is
//! harmless as long as two things hold, and this file makes both hold:
//!
//! 1. **Every subtraction takes only what the level holds** (a compare-and-swap that stops
//!    at zero, never a subtraction that is repaired afterwards): no value is ever negative,
//!    so no other operation ever computes with a value that is about to be repaired. An
//!    undo that finds some of its own units taken by a clamped over-uncharge takes what is
//!    left, and the levels above it give back only that much: the over-uncharger has already
//!    passed the units it took up the tree (units are fungible; every level ends with the
//!    same total as if the over-uncharge had found the node without the speculative units).
//! 2. **No level ever lacks units that a level below it has.** Adds go top-down (a walk that
//!    has units at a node has them at every ancestor of it), and subtractions go bottom-up
//!    (a walk that gave units back at a node still has them above it). So what an uncharge
//!    takes at a node is always there to take at each ancestor, and the clamp at an ancestor
//!    only ever triggers after that ancestor was itself over-uncharged (Linux's hierarchical
//!    clamp: over-uncharging a node that has children can take units its children hold,
//!    which it cannot tell from its own).
//!
//! A read-only pre-check walks bottom-up first and refuses at the lowest level whose limit
//! the charge would pass, before anything is written: a group at its own limit that keeps
//! retrying disturbs none of its ancestors, and the reported level is the lowest refusing
//! one, as in Linux's bottom-up walk.

use super::{COUNTER_MAX, ChargeError, Counter, Overflow, Underflow, clamp_nonneg};
use crate::sync::atomic::Ordering;
use crate::sync::dekker_fence;

/// How many levels one frame of the commit walk keeps on the stack. A deeper path uses one
/// frame per chunk of this many levels (`d / CHUNK + 1` frames for `d` levels), each kept
/// until the whole walk has committed, so that peaks are raised only by committed charges.
const CHUNK: usize = 16;

impl<'p> Counter<'p> {
    /// Charges `n` to this node and every ancestor if no `max` on the way would be exceeded.
    ///
    /// On failure nothing stays charged and the error names the *lowest* node whose limit
    /// was exceeded ([`ChargeError::Limit`], with `level` = its distance from this node), or
    /// reports that `n` is above [`COUNTER_MAX`] ([`ChargeError::TooLarge`]). `n == 0` always
    /// succeeds and changes nothing.
    ///
    /// The limits are checked twice: first by reading every level bottom-up (a charge that
    /// would pass a limit is refused there without writing anything), then by adding
    /// top-down and checking each level right after its add (protocol L in the module docs).
    /// A charge that fails in the second pass, because of a racing charge, may for a moment
    /// make a concurrent smaller charge fail too, by at most the size of the charges in
    /// flight. A charge never *succeeds* above a limit.
    ///
    /// ```
    /// use chargetree::counter::{ChargeError, Counter};
    ///
    /// let root = Counter::new_root();
    /// let child = Counter::new(Some(&root));
    /// child.set_max(10).unwrap();
    /// assert!(child.try_charge(10).is_ok());
    /// assert!(matches!(child.try_charge(1), Err(ChargeError::Limit { level: 0, .. })));
    /// assert_eq!((child.usage(), root.usage(), child.failcnt()), (10, 10, 1));
    /// ```
    #[inline]
    pub fn try_charge(&self, n: usize) -> Result<(), ChargeError<'_, 'p>> {
        if n > COUNTER_MAX {
            return Err(ChargeError::TooLarge { requested: n });
        }
        if n == 0 {
            return Ok(());
        }
        match self.charge_walk::<false, true>(n) {
            Ok(()) => Ok(()),
            Err((at, level)) => Err(ChargeError::Limit { at, level }),
        }
    }

    /// [`Counter::try_charge`] without counting a refusal in [`Counter::failcnt`]: for the
    /// charge engine, whose batches and retries are attempts of one charge, counted once
    /// with [`Counter::count_failure`] when it gives up.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn try_charge_uncounted(&self, n: usize) -> Result<(), ChargeError<'_, 'p>> {
        if n > COUNTER_MAX {
            return Err(ChargeError::TooLarge { requested: n });
        }
        if n == 0 {
            return Ok(());
        }
        match self.charge_walk::<false, false>(n) {
            Ok(()) => Ok(()),
            Err((at, level)) => Err(ChargeError::Limit { at, level }),
        }
    }

    /// Counts one refused charge at this node (if it counts them).
    #[cfg(feature = "alloc")]
    pub(crate) fn count_failure(&self) {
        if self.tracks_failcnt() {
            // ORDERING: Relaxed; statistic.
            self.hot.failcnt.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Charges `n` to this node and every ancestor without consulting any limit (Linux's
    /// `page_counter_charge`, the primitive behind forced / no-fail charges): usage may end
    /// above `max`.
    ///
    /// Fails, changing nothing, only if `n` or some node's resulting usage would be above
    /// [`COUNTER_MAX`], where Linux would silently wrap.
    #[inline]
    pub fn charge(&self, n: usize) -> Result<(), Overflow> {
        if n > COUNTER_MAX {
            return Err(Overflow { requested: n });
        }
        if n == 0 {
            return Ok(());
        }
        self.charge_walk::<true, false>(n).map_err(|_| Overflow { requested: n })
    }

    /// Uncharges `n` from this node and every ancestor.
    ///
    /// Uncharging more than a node holds is a caller bug: the node is clamped at zero (never
    /// wraps), the excess is counted in [`Counter::underflows`] / [`Counter::forgiven`],
    /// ancestors are uncharged only by what the node held, and debug builds panic (like
    /// Linux's `WARN_ONCE`) *after* every level has been updated. Use
    /// [`Counter::try_uncharge`] to get the clamp as an error instead.
    #[inline]
    #[track_caller]
    pub fn uncharge(&self, n: usize) {
        let result = self.try_uncharge(n);
        debug_assert!(result.is_ok(), "chargetree: uncharge of more than was charged: {result:?}");
    }

    /// Uncharges `n` for the library's own bookkeeping (stock drains, parked bytes): an
    /// over-uncharge found there was made earlier by a caller, so it is clamped and counted
    /// but never asserted here, far from its cause.
    #[inline]
    #[cfg(feature = "alloc")]
    pub(crate) fn uncharge_counted(&self, n: usize) {
        let _ = self.try_uncharge(n);
    }

    /// Uncharges `n` like [`Counter::uncharge`], but reports an over-uncharge as
    /// [`Underflow`] instead of asserting. The clamp has been applied and counted when the
    /// error is returned; the counters balance.
    ///
    /// The clamp is exact under concurrency: the node gives up what it holds at the moment
    /// of the uncharge and never less, concurrent charges and uncharges of the same node
    /// are never lost, and an uncharge is counted as an underflow only if, in the order in
    /// which the node's updates took effect, the node held less than it asked for.
    ///
    /// ```
    /// use chargetree::counter::Counter;
    ///
    /// let root = Counter::new_root();
    /// let child = Counter::new(Some(&root));
    /// let sibling = Counter::new(Some(&root));
    /// sibling.try_charge(7).unwrap();
    /// child.try_charge(3).unwrap();
    ///
    /// let err = child.try_uncharge(5).unwrap_err();
    /// assert_eq!(err.forgiven, 2);
    /// // The parent lost only what the child really held: it still equals its children.
    /// assert_eq!((child.usage(), root.usage()), (0, 7));
    /// assert_eq!((child.underflows(), root.underflows()), (1, 0));
    /// ```
    #[inline]
    pub fn try_uncharge(&self, n: usize) -> Result<(), Underflow> {
        if n == 0 {
            return Ok(());
        }
        let applied = self.subtract_walk(n, true);
        if applied == n { Ok(()) } else { Err(Underflow { requested: n, forgiven: n - applied }) }
    }

    /// The shared walk of `charge` and `try_charge`. `FORCE` compares against
    /// [`COUNTER_MAX`] instead of each node's `max`. On failure nothing this walk added is
    /// left and the refusing node and its level are returned.
    ///
    /// Precondition: `0 < n <= COUNTER_MAX`.
    #[inline(always)]
    fn charge_walk<const FORCE: bool, const COUNT: bool>(
        &self,
        n: usize,
    ) -> Result<(), (&Counter<'p>, usize)> {
        // Pass 1, bottom-up and read-only: the lowest level that would refuse refuses now.
        if let Some(found) = self.lowest_refusing::<FORCE>(n, usize::MAX) {
            return Err(self.refused::<COUNT>(found));
        }
        // Pass 2, top-down: add and check each level (protocol L).
        match self.commit::<FORCE>(n, 0) {
            Ok(()) => Ok(()),
            Err(level) => {
                // A racing charge filled `level` after the pre-check. Report the lowest level
                // that refuses now (ours are all rolled back), as the pre-check would have.
                let lowest = self.lowest_refusing::<FORCE>(n, level);
                Err(self.refused::<COUNT>(lowest.unwrap_or((self.ancestor(level), level))))
            }
        }
    }

    /// Counts a refusal at `found` (with `COUNT`) and passes it on.
    #[inline]
    fn refused<'c, const COUNT: bool>(&self, found: (&'c Counter<'p>, usize)) -> (&'c Counter<'p>, usize) {
        if COUNT && found.0.tracks_failcnt() {
            // ORDERING: Relaxed; statistic.
            found.0.hot.failcnt.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The lowest of the first `levels` levels (this node is level 0) whose limit a charge of
    /// `n` would pass now, read without writing anything. A hint: racy by design.
    #[inline]
    fn lowest_refusing<const FORCE: bool>(&self, n: usize, levels: usize) -> Option<(&Counter<'p>, usize)> {
        self.ancestors_and_self().take(levels).enumerate().find_map(|(level, c)| {
            // ORDERING: Relaxed; a hint, the commit pass is what enforces the limits.
            let usage = clamp_nonneg(c.hot.usage.load(Ordering::Relaxed));
            let limit = if FORCE { COUNTER_MAX } else { c.conf.max.load(Ordering::Relaxed) };
            // No overflow: usage <= isize::MAX and n <= COUNTER_MAX <= isize::MAX.
            (usage + n > limit).then_some((c, level))
        })
    }

    /// The ancestor `level` parents up (0 = this node).
    fn ancestor(&self, level: usize) -> &Counter<'p> {
        self.ancestors_and_self().nth(level).expect("level is within the path")
    }

    /// Pass 2 of the charge walk from this node to the top: adds `n` top-down, checking each
    /// level right after its add, and raises every level's peaks only once the whole walk
    /// has committed. Returns the level that refused, after taking back everything this
    /// walk added (see the module docs).
    fn commit<const FORCE: bool>(&self, n: usize, base: usize) -> Result<(), usize> {
        self.commit_chunk::<FORCE, _>(n, base, || Ok(()))
    }

    /// One chunk of [`Counter::commit`]: the up to `CHUNK` levels from this node (level
    /// `base` of the walk). The levels above the chunk are committed first, by the frame of
    /// the chunk above, which calls back into this one (`below` of that frame) once its own
    /// adds passed; this chunk adds, then runs `below` (the chunks further down), and raises
    /// its peaks only if that succeeded too. So every frame stays alive until the whole walk
    /// is decided, and a charge refused anywhere raises no peak at any depth (rule 5).
    fn commit_chunk<const FORCE: bool, B: FnMut() -> Result<(), usize>>(
        &self,
        n: usize,
        base: usize,
        mut below: B,
    ) -> Result<(), usize> {
        let mut path: [Option<&Counter<'p>>; CHUNK] = [None; CHUNK];
        let mut len = 0;
        let mut above = Some(self);
        while len < CHUNK {
            let Some(c) = above else { break };
            path[len] = Some(c);
            len += 1;
            above = c.conf.parent;
        }
        match above {
            // Deeper than one chunk: the levels above first (top-down overall). A trait
            // object, so that the recursion instantiates one function, not one per depth.
            Some(upper) => {
                let mut rest = || Self::commit_levels::<FORCE>(&path[..len], above, n, base, &mut below);
                let f: &mut dyn FnMut() -> Result<(), usize> = &mut rest;
                upper.commit_chunk::<FORCE, _>(n, base + CHUNK, f)
            }
            None => Self::commit_levels::<FORCE>(&path[..len], None, n, base, below),
        }
    }

    /// The adds of one chunk (`path`, bottom-up, `above` the level over its top), then
    /// `below`, then the chunk's peaks.
    #[inline(always)]
    fn commit_levels<const FORCE: bool>(
        path: &[Option<&Counter<'p>>],
        above: Option<&Counter<'p>>,
        n: usize,
        base: usize,
        mut below: impl FnMut() -> Result<(), usize>,
    ) -> Result<(), usize> {
        let len = path.len();
        let mut news = [0usize; CHUNK];
        for i in (0..len).rev() {
            let c = path[i].expect("within len");
            match c.add_checked::<FORCE>(n) {
                Ok(new) => news[i] = new,
                Err(kept) => {
                    // `c` took back what it could of its add; the levels above give back
                    // exactly as much (module docs, point 1). What it could not take back
                    // was taken by a clamped over-uncharge, which in the order where this
                    // refused charge never happened found that much less: forgiven.
                    if kept < n {
                        c.note_forgiven(n - kept);
                    }
                    let parent = if i + 1 < len { path[i + 1] } else { above };
                    if let (Some(p), true) = (parent, kept > 0) {
                        p.subtract_walk(kept, false);
                    }
                    return Err(base + i);
                }
            }
        }
        // The chunks below take back this chunk's adds themselves if they refuse (their
        // `subtract_walk` goes to the root).
        below()?;
        // The whole walk has committed: raise each level's peaks to the value its own add
        // produced there (Linux's rule; never a re-read, which could include another
        // charge's speculative add).
        for (c, &new) in path.iter().zip(&news[..len]) {
            c.expect("within len").raise_peaks(new);
        }
        Ok(())
    }

    /// Adds `n` at this node and checks its limit (protocol L, charger side). On success
    /// returns the value the add produced. On refusal takes its add back (as much of it as
    /// the node still holds, see the module docs) and returns how much it took.
    #[inline(always)]
    fn add_checked<const FORCE: bool>(&self, n: usize) -> Result<usize, usize> {
        let delta = n as isize; // n <= COUNTER_MAX <= isize::MAX
        // ORDERING: SeqCst RMW, first half of protocol L (module docs): the increment is
        // ordered before the load of `max` below, and pairs with the SeqCst swap of `max`
        // and re-read of `usage` in `set_max`. It is also the charger's half of the peak
        // reset's store-buffering pair (`raise_peaks`, `reset_peak`).
        let new = self.hot.usage.fetch_add(delta, Ordering::SeqCst).wrapping_add(delta);
        dekker_fence();
        let limit = if FORCE {
            COUNTER_MAX
        } else {
            // ORDERING: SeqCst load, second half of protocol L on the charger side.
            self.conf.max.load(Ordering::SeqCst)
        };
        // Usage is never negative (module docs), so a negative `new` can only be a wrap,
        // which compares as huge and is refused, as in Linux.
        if new as usize > limit {
            return Err(self.subtract_clamped(n));
        }
        let new = new as usize; // passed the check, so in 0..=COUNTER_MAX
        self.propagate_protected_usage(new);
        // ORDERING: Relaxed; `max` is a configuration read, the flag a sticky hint for
        // `peak_floor`.
        if FORCE && new > self.conf.max.load(Ordering::Relaxed) {
            self.hot.above_max.store(true, Ordering::Relaxed);
        }
        Ok(new)
    }

    /// Subtracts up to `n` from this node and then from every ancestor, each level giving up
    /// at most what it holds and passing on what it gave (the hierarchical clamp). Returns
    /// what the top level gave up (at most what this node gave up). Every level that held
    /// less than it was asked adds the difference to its `forgiven`; with `count` (an
    /// uncharge) it also counts an underflow, without (a refused charge taking its own
    /// speculative units back) it does not: the shortfall is what a clamped over-uncharge
    /// took, and that uncharge was counted.
    #[inline]
    fn subtract_walk(&self, n: usize, count: bool) -> usize {
        let mut amount = n;
        let mut c = self;
        loop {
            let taken = c.subtract_clamped(amount);
            if taken < amount {
                if count {
                    // ORDERING: Relaxed; statistic.
                    c.hot.underflows.fetch_add(1, Ordering::Relaxed);
                }
                c.note_forgiven(amount - taken);
            }
            amount = taken;
            match c.conf.parent {
                Some(p) if amount > 0 => c = p,
                _ => return amount,
            }
        }
    }

    /// Takes up to `n` from this node with a compare-and-swap that stops at zero, and
    /// refreshes its protected usage. Returns what it took.
    #[inline(always)]
    fn subtract_clamped(&self, n: usize) -> usize {
        // ORDERING: Relaxed initial load; the CAS below is what takes effect.
        let mut cur = self.hot.usage.load(Ordering::Relaxed);
        loop {
            let take = clamp_nonneg(cur).min(n);
            if take == 0 {
                // Nothing to take, nothing changes (and nothing needs refreshing).
                return 0;
            }
            // ORDERING: SeqCst on success, as every update of `usage`: the store-buffering
            // pair with `protection_changed` (this uncharger then loads the "armed" flag,
            // the arming thread loads `usage`) and protocol L's total order. Relaxed on
            // failure: the value is re-read and nothing was done.
            match self.hot.usage.compare_exchange_weak(
                cur,
                cur - take as isize,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    dekker_fence();
                    self.propagate_protected_usage(cur as usize - take);
                    return take;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Adds `excess` units dropped by a clamp at this node to [`Counter::forgiven`].
    #[cold]
    #[inline(never)]
    fn note_forgiven(&self, excess: usize) {
        // Saturating: a statistic of absurd requests must not wrap back to small values.
        // ORDERING: Relaxed; statistic.
        let mut f = self.hot.forgiven.load(Ordering::Relaxed);
        while let Err(now) = self.hot.forgiven.compare_exchange_weak(
            f,
            f.saturating_add(excess),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            f = now;
        }
    }

    /// Raises both peaks to at least `new`, a value a committed charge produced at this node.
    /// `fetch_max`, so the peaks are exact maxima of the values they were raised to (Linux
    /// uses racy stores).
    #[inline(always)]
    pub(super) fn raise_peaks(&self, new: usize) {
        // ORDERING: SeqCst loads, the charger's half of the store-buffering pair with
        // `reset_peak` / `PeakWatcher::reset` (which store the new watermark, then re-read
        // `usage`): after this charge's SeqCst add of `usage`, either this load sees the
        // reset's store (and raises the new watermark if `new` is above it), or the reset's
        // re-read sees this charge's add. Plain loads on x86. The local peak is raised
        // first and a global reset sets both, so `local <= global` holds up to a racing
        // reset.
        if new > self.track.local_watermark.load(Ordering::SeqCst) {
            self.track.local_watermark.fetch_max(new, Ordering::SeqCst);
        }
        if new > self.track.watermark.load(Ordering::SeqCst) {
            self.track.watermark.fetch_max(new, Ordering::SeqCst);
        }
    }
}
