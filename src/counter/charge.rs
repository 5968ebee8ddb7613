//! charge / try_charge / uncharge: the hierarchical walks and their rollback
//! (mirrors `page_counter_charge()`, `page_counter_try_charge()`, `page_counter_uncharge()`
//! and `page_counter_cancel()`).

use super::{COUNTER_MAX, ChargeError, Counter, Overflow, Underflow, clamp_nonneg};
use crate::sync::atomic::Ordering;
use crate::sync::dekker_fence;

impl<'p> Counter<'p> {
    /// Charges `n` to this node and every ancestor if no `max` on the way would be exceeded.
    ///
    /// On failure nothing stays charged and the error names the *lowest* node whose limit
    /// was exceeded ([`ChargeError::Limit`], with `level` = its distance from this node), or
    /// reports that `n` is above [`COUNTER_MAX`] ([`ChargeError::TooLarge`]). `n == 0` always
    /// succeeds and changes nothing.
    ///
    /// Charges are speculative (add, then compare, then undo): a charge that fails may for a
    /// moment make a concurrent smaller charge fail too, by at most the size of the charges
    /// in flight. A charge never *succeeds* above a limit (protocol L in the module docs).
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
        match self.charge_walk::<false>(n) {
            Ok(()) => Ok(()),
            Err((at, level)) => Err(ChargeError::Limit { at, level }),
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
        self.charge_walk::<true>(n).map_err(|_| Overflow { requested: n })
    }

    /// Uncharges `n` from this node and every ancestor.
    ///
    /// Uncharging more than a node holds is a caller bug: the node is clamped at zero (never
    /// wraps), the excess is counted in [`Counter::underflows`] / [`Counter::forgiven`],
    /// ancestors are uncharged only by what the node held, and debug builds panic (like
    /// Linux's `WARN_ONCE`) *after* the state has been repaired. Use
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
        let applied = self.cancel_walk(n, None);
        if applied == n { Ok(()) } else { Err(Underflow { requested: n, forgiven: n - applied }) }
    }

    /// The shared walk of `charge` and `try_charge`. `FORCE` compares against
    /// [`COUNTER_MAX`] instead of each node's `max`. On failure every level below the failing
    /// node has been rolled back and the failing node and its level are returned.
    ///
    /// Precondition: `0 < n <= COUNTER_MAX`.
    #[inline(always)]
    fn charge_walk<const FORCE: bool>(&self, n: usize) -> Result<(), (&Counter<'p>, usize)> {
        let delta = n as isize; // n <= COUNTER_MAX <= isize::MAX
        let mut c: &Counter<'p> = self;
        let mut level = 0;
        // Levels (bit i = level i) that saw a new local peak. Peaks are raised only once the
        // whole walk has succeeded, so a charge that is rolled back leaves no peak behind.
        let mut new_peaks: u64 = 0;
        loop {
            // ORDERING: SeqCst RMW, first half of protocol L (module docs): the increment is
            // ordered before the load of `max` below, and pairs with the SeqCst swap of `max`
            // and re-read of `usage` in `set_max`.
            let new = c.usage.fetch_add(delta, Ordering::SeqCst).wrapping_add(delta);
            dekker_fence();
            let limit = if FORCE {
                COUNTER_MAX
            } else {
                // ORDERING: SeqCst load, second half of protocol L on the charger side.
                c.conf.max.load(Ordering::SeqCst)
            };
            // A wrapped (negative) `new` compares as huge and fails, as in Linux.
            if new as usize > limit {
                // Undo this level only; its protection and peaks were not touched yet.
                // ORDERING: Relaxed; the speculative add is simply withdrawn. A concurrent
                // `set_max` that saw it retries, which is harmless.
                c.usage.fetch_sub(delta, Ordering::Relaxed);
                if !FORCE && c.tracks_failcnt() {
                    // ORDERING: Relaxed; statistic.
                    c.track.failcnt.fetch_add(1, Ordering::Relaxed);
                }
                if level > 0 {
                    self.cancel_walk(n, Some(c));
                }
                return Err((c, level));
            }
            let new = new as usize; // passed the check, so in 0..=COUNTER_MAX
            c.propagate_protected_usage(new);
            // ORDERING: Relaxed; racy statistic. One load in the common case.
            if new > c.track.local_watermark.load(Ordering::Relaxed) {
                // Bit 63 stands for "level 63 or deeper": those are re-checked on commit.
                new_peaks |= 1 << level.min(63);
            }
            match c.conf.parent {
                Some(p) => {
                    c = p;
                    level += 1;
                }
                None => {
                    if new_peaks != 0 {
                        self.raise_peaks_on(new_peaks);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Uncharges `n` from this node upwards, stopping before `stop` (exclusive) or at the
    /// top. Returns what was applied at the last node visited: `n` unless some node clamped.
    #[inline]
    pub(crate) fn cancel_walk(&self, n: usize, stop: Option<&Counter<'p>>) -> usize {
        let mut amount = n;
        let mut c: &Counter<'p> = self;
        loop {
            if let Some(s) = stop {
                if core::ptr::eq(c, s) {
                    return amount;
                }
            }
            amount = c.cancel(amount);
            if amount == 0 {
                // Nothing left to take from the ancestors (the node held nothing).
                return 0;
            }
            match c.conf.parent {
                Some(p) => c = p,
                None => return amount,
            }
        }
    }

    /// Local decrement of one node with the underflow clamp (Linux's `page_counter_cancel`).
    /// Returns the amount actually taken from this node.
    #[inline(always)]
    fn cancel(&self, n: usize) -> usize {
        let delta = if n > isize::MAX as usize { isize::MAX } else { n as isize };
        // ORDERING: SeqCst RMW (the same instruction as AcqRel on x86): the store-buffering
        // pair with `protection_changed` (the uncharger then loads the "armed" flag, the
        // arming thread loads `usage`), as in protocol L; the fence is loom-only.
        let new = self.usage.fetch_sub(delta, Ordering::SeqCst).wrapping_sub(delta);
        dekker_fence();
        if new >= 0 && delta as usize == n {
            self.after_decrease(new);
            return n;
        }
        self.cancel_clamp(n, delta, new)
    }

    /// The cold half of `cancel`: the node held less than was asked. Give the deficit back
    /// with an RMW (so concurrent updates are kept, unlike a plain store of 0), count it, and
    /// report what was really taken.
    #[cold]
    #[inline(never)]
    fn cancel_clamp(&self, n: usize, delta: isize, new: isize) -> usize {
        let deficit = if new < 0 { new.unsigned_abs() } else { 0 };
        if deficit > 0 {
            // ORDERING: AcqRel, as in `cancel`.
            self.usage.fetch_add(deficit as isize, Ordering::AcqRel);
        }
        let applied = delta as usize - deficit;
        // ORDERING: Relaxed; statistics.
        self.track.underflows.fetch_add(1, Ordering::Relaxed);
        let excess = n - applied;
        // Saturating: a statistic of absurd requests must not wrap back to small values.
        let mut f = self.track.forgiven.load(Ordering::Relaxed);
        while let Err(now) = self.track.forgiven.compare_exchange_weak(
            f,
            f.saturating_add(excess),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            f = now;
        }
        // ORDERING: Relaxed; protocol P re-reads and converges.
        let now = self.usage.load(Ordering::Relaxed);
        self.after_decrease(if now < 0 { 0 } else { now });
        applied
    }

    /// After a successful walk, raises the peaks of the levels flagged in `levels` to their
    /// current usage (a value the usage really had, including this charge; sequentially the
    /// very value the walk produced).
    #[cold]
    #[inline(never)]
    fn raise_peaks_on(&self, levels: u64) {
        for (level, c) in self.ancestors_and_self().enumerate() {
            let flagged = levels & (1 << level.min(63)) != 0;
            if !flagged {
                if level >= 63 || levels >> level == 0 {
                    return;
                }
                continue;
            }
            // ORDERING: Relaxed; statistic.
            let usage = clamp_nonneg(c.usage.load(Ordering::Relaxed));
            // Levels 63 and deeper share one flag: raise only those that are really below.
            if level < 63 || usage > c.track.local_watermark.load(Ordering::Relaxed) {
                c.raise_peaks(usage);
            }
        }
    }

    /// Raises both peaks to at least `new`. `fetch_max`, so the peaks are exact maxima of
    /// the values they were raised to (Linux uses racy stores).
    #[inline(never)]
    fn raise_peaks(&self, new: usize) {
        // ORDERING: Relaxed; statistics. The local peak is raised first and a global reset
        // sets both, so `local <= global` holds up to a racing reset.
        self.track.local_watermark.fetch_max(new, Ordering::Relaxed);
        self.track.watermark.fetch_max(new, Ordering::Relaxed);
    }

    #[inline(always)]
    fn after_decrease(&self, new: isize) {
        self.propagate_protected_usage(new as usize);
    }
}
