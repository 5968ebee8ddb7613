//! Limit and protection writers: `set_max` (read–swap–reread), `swap_max`, `set_high`,
//! `set_min`, `set_low` (mirrors `page_counter_set_max/min/low()` and `_set_high()`).

use super::{COUNTER_MAX, Counter, LimitError, clamp_nonneg};
use crate::sync::atomic::Ordering;
use crate::sync::{dekker_fence, spin_loop};

/// How many times [`Counter::set_max`] re-tries when chargers keep growing the usage while
/// a lower limit is being installed, before it gives up with [`LimitError::Busy`]. Linux
/// loops without bound (with `cond_resched()`); a library must not livelock its caller.
pub const SET_MAX_RETRIES: usize = 64;

impl Counter<'_> {
    /// Sets the hard limit, refusing to go below the current usage.
    ///
    /// Returns [`LimitError::Busy`] if usage is above `limit` (nothing changes; the caller may
    /// reclaim or drain and try again), or if chargers kept growing the usage through
    /// [`SET_MAX_RETRIES`] attempts to install a lower limit. `usize::MAX` (or
    /// [`COUNTER_MAX`]) means no limit; any other `limit > COUNTER_MAX` is
    /// [`LimitError::TooLarge`]. Once it returns `Ok`, no
    /// `try_charge` can succeed above `limit` (protocol L in the module docs).
    ///
    /// ```
    /// use chargetree::counter::{Counter, LimitError};
    ///
    /// let c = Counter::new_root();
    /// c.try_charge(10).unwrap();
    /// assert_eq!(c.set_max(5), Err(LimitError::Busy { usage: 10, limit: 5 }));
    /// c.set_max(10).unwrap();
    /// assert!(c.try_charge(1).is_err());
    /// ```
    pub fn set_max(&self, limit: usize) -> Result<(), LimitError> {
        let limit = check_value(limit)?;
        let _writer = self.conf.writer.lock();
        let mut usage = 0;
        for _ in 0..SET_MAX_RETRIES {
            // ORDERING: SeqCst, step 1 of protocol L on the setter side.
            let before = self.hot.usage.load(Ordering::SeqCst);
            usage = clamp_nonneg(before);
            if usage > limit {
                return Err(LimitError::Busy { usage, limit });
            }
            // ORDERING: SeqCst swap then (under loom) a SeqCst fence, then a SeqCst re-read:
            // pairs with the charger's SeqCst `fetch_add` + load of `max` in `charge_walk`.
            let old = self.conf.max.swap(limit, Ordering::SeqCst);
            dekker_fence();
            let after = self.hot.usage.load(Ordering::SeqCst);
            if after <= before || limit >= old {
                return Ok(());
            }
            // Usage grew while the lower limit went in: a charger may have checked against
            // `old`. Put `old` back and try again.
            // ORDERING: SeqCst, same protocol; chargers that see `old` again are allowed to.
            self.conf.max.store(old, Ordering::SeqCst);
            spin_loop();
        }
        Err(LimitError::Busy { usage, limit })
    }

    /// Installs `limit` unconditionally and returns the previous one (cgroup2's
    /// `memory.max` write: a plain exchange, no `Busy`). Usage may stay above the new limit
    /// until it is reclaimed; later `try_charge`s fail until it is below.
    pub fn swap_max(&self, limit: usize) -> Result<usize, LimitError> {
        let limit = check_value(limit)?;
        let _writer = self.conf.writer.lock();
        // ORDERING: SeqCst, so the exchange takes part in protocol L like `set_max`'s.
        let old = self.conf.max.swap(limit, Ordering::SeqCst);
        if limit < old {
            // Usage may now stay above `max` (see `peak_floor`).
            // ORDERING: Relaxed; a sticky hint.
            self.hot.above_max.store(true, Ordering::Relaxed);
        }
        Ok(old)
    }

    /// Sets the throttling threshold. Never fails for a representable value; usage may be
    /// above it (Linux's `page_counter_set_high`).
    pub fn set_high(&self, high: usize) -> Result<(), LimitError> {
        let high = check_value(high)?;
        let _writer = self.conf.writer.lock();
        // ORDERING: Relaxed; `high` is advisory and read racily by the engine.
        self.conf.high.store(high, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the declared hard protection and refreshes the protected-usage sums of this node
    /// and its ancestors. Any representable value is accepted, even above `max` (only
    /// `min(usage, min)` counts). Refused with [`LimitError::Retired`] once the node's
    /// protection was revoked (its group went offline).
    pub fn set_min(&self, min: usize) -> Result<(), LimitError> {
        let min = check_value(min)?;
        let _writer = self.conf.writer.lock();
        self.check_not_retired()?;
        // ORDERING: SeqCst, read by protocol P's re-check in `propagate_slow`.
        self.conf.min.store(min, Ordering::SeqCst);
        self.protection_changed();
        Ok(())
    }

    /// Sets the declared soft protection; see [`Counter::set_min`].
    pub fn set_low(&self, low: usize) -> Result<(), LimitError> {
        let low = check_value(low)?;
        let _writer = self.conf.writer.lock();
        self.check_not_retired()?;
        // ORDERING: SeqCst, see `set_min`.
        self.conf.low.store(low, Ordering::SeqCst);
        self.protection_changed();
        Ok(())
    }
}

impl Counter<'_> {
    /// Revokes this node's protection for good (its group goes offline: Linux's
    /// `css_offline` zeroes `memory.min` / `memory.low`): `min` and `low` become 0, the
    /// protected-usage sums are refreshed, and later `set_min` / `set_low` are refused with
    /// [`LimitError::Retired`], so a reader that sees the node retired sees zero protection
    /// from then on.
    #[cfg(feature = "alloc")]
    pub(crate) fn retire_protection(&self) {
        let _writer = self.conf.writer.lock();
        // ORDERING: Relaxed; read and written under `writer`.
        self.conf.retired.store(true, Ordering::Relaxed);
        // ORDERING: SeqCst, as in `set_min`.
        self.conf.min.store(0, Ordering::SeqCst);
        self.conf.low.store(0, Ordering::SeqCst);
        self.protection_changed();
    }

    /// Whether the node's protection was revoked ([`LimitError::Retired`]).
    #[must_use]
    pub fn is_retired(&self) -> bool {
        // ORDERING: Relaxed; a status read.
        self.conf.retired.load(Ordering::Relaxed)
    }

    /// Caller holds `writer`.
    fn check_not_retired(&self) -> Result<(), LimitError> {
        // ORDERING: Relaxed; written under `writer`, which the caller holds.
        if self.conf.retired.load(Ordering::Relaxed) { Err(LimitError::Retired) } else { Ok(()) }
    }
}

/// A limit or protection value as the counter stores it: `usize::MAX` means "max" (no
/// limit, as cgroupfs accepts the word), and is stored as [`COUNTER_MAX`]; any other value
/// above [`COUNTER_MAX`] is refused.
#[inline]
pub(crate) fn check_value(value: usize) -> Result<usize, LimitError> {
    match value {
        usize::MAX => Ok(COUNTER_MAX),
        v if v > COUNTER_MAX => Err(LimitError::TooLarge { value }),
        v => Ok(v),
    }
}
