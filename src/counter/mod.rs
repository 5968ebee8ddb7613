//! The hierarchical counter: one node of a tree of usage counters with limits, protection,
//! peaks and a fail count (Linux's `page_counter`, `mm/page_counter.c`).
//!
//! A [`Counter`] is pure arithmetic on pointer-width atomics. It never allocates, never takes
//! a lock on the charge path, holds no references and knows nothing of epochs, so it works on
//! its own: in firmware as `static` counters with `&'static` parents, on the stack with
//! borrowed parents, or embedded in the crate's heap-allocated groups.
//!
//! Units are abstract: pages, bytes, credits. [`COUNTER_MAX`] is the largest representable
//! amount and means "unlimited" when used as a limit; every setter also accepts `usize::MAX`
//! for "no limit" (cgroupfs's `max`) and stores it as [`COUNTER_MAX`].
//!
//! # Rules (after `mm/page_counter.c`; the deviations are marked)
//!
//! 1. **Charge** ([`Counter::charge`]) adds to every node from this one to the top and never
//!    consults a limit (the "force" primitive). It fails only if a node's usage would pass
//!    [`COUNTER_MAX`] (then nothing is changed; Linux would wrap).
//! 2. **Try-charge** ([`Counter::try_charge`]) refuses at the *lowest* node whose `max` the
//!    charge would pass, and leaves nothing behind. It first reads every level bottom-up and
//!    refuses without writing anything if some level is full; otherwise it adds at every
//!    level top-down, checking each level right after its add, and takes its adds back if a
//!    racing charge filled a level meanwhile. No compare-and-swap loop on the charge path: a
//!    charge that fails in the second pass may transiently make a racing smaller charge fail
//!    too (never succeed wrongly); the error is bounded by the sizes of the charges in
//!    flight. (Linux adds bottom-up; adding top-down is what lets rule 3 be exact: the
//!    argument is written down in `src/counter/charge.rs`.)
//! 3. **Uncharge** ([`Counter::uncharge`]) subtracts at every level, bottom-up. No level ever
//!    gives up more than it holds: each subtraction is a compare-and-swap that stops at zero,
//!    so usage is never negative, not even for a moment (Linux subtracts and then stores 0,
//!    overwriting concurrent updates). An uncharge of more than the node holds is clamped,
//!    counted in [`Counter::underflows`] / [`Counter::forgiven`], the ancestors are uncharged
//!    only by what the node gave up (so a parent still equals the sum of its children), and
//!    [`Counter::uncharge`] `debug_assert!`s after every level has been updated;
//!    [`Counter::try_uncharge`] reports the clamp as a typed error instead. This holds under
//!    any interleaving of charges (refused ones included) and over-uncharges. A node does
//!    not know which of its units are its own and which its children's: over-uncharging a
//!    node that has children can take units they hold (as in Linux), and their later
//!    uncharges are then clamped at that node.
//! 4. **Limits**: [`Counter::set_max`] never installs a limit below the current usage
//!    ([`LimitError::Busy`]) and uses the read–swap–reread protocol below; `high`, `min` and
//!    `low` are plain stores (`min`/`low` then refresh the protected-usage sums).
//! 5. **Peaks**: a global peak ([`Counter::peak`]) and a resettable one shared by
//!    [`PeakWatcher`]s, each of which sees the peak since *its own* last reset. Charges raise
//!    them with the value their own add produced, once the whole charge has committed, so a
//!    refused charge raises no peak and no peak exceeds `max` unless a forced charge or
//!    [`Counter::swap_max`] left usage there.
//! 6. **Protection**: every usage change refreshes `min_usage = min(usage, min)` and
//!    `low_usage = min(usage, low)` and adds the difference to the parent's
//!    `children_min_usage` / `children_low_usage`. Effective protection (`emin` / `elow`) is
//!    computed top-down on demand (see [`Counter::calculate_protection`] and
//!    [`effective_protection`]) with 128-bit intermediates.
//!
//! # Protocols
//!
//! **L — limit vs charge** (store-buffering, mirrors `page_counter_try_charge()` and
//! `page_counter_set_max()`):
//!
//! | step | charger ([`Counter::try_charge`]) | limit setter ([`Counter::set_max`]) |
//! |------|------------------------------------|--------------------------------------|
//! | 1    | `usage.fetch_add(n, SeqCst)`        | `u = usage.load(SeqCst)`; `u > limit` → `Busy` |
//! | 2    | (loom only: `fence(SeqCst)`)        | `old = max.swap(limit, SeqCst)` (loom: fence) |
//! | 3    | `max.load(SeqCst)`; over → undo     | `usage.load(SeqCst) <= u` or raised → done; else restore `old`, retry |
//!
//! Either the charger sees the new limit, or the setter's re-read sees the charger's
//! increment and retries. So no charge succeeds above a limit that `set_max` reported
//! installed.
//!
//! **P — protected-usage sums**: each update installs `min(usage, declared)` with a `swap`
//! and adds `installed − previous` to the parent. The deltas telescope, so the parent's sum
//! converges to the sum of the children's final values whatever the interleaving; an
//! installer then re-reads `usage` and `declared` and repeats if they moved, so at quiescence
//! `x_usage == min(usage, x)` exactly (Linux only promises eventual convergence per update).
//!
//! **W — configuration writers** (`set_*`, peak resets, watcher lists) are serialised per
//! counter by an internal spin flag. It is never taken on a charge path. Do not write a
//! counter's configuration from an interrupt handler that may interrupt another
//! configuration write of the same counter on the same CPU.
//!
//! # Racy statistics
//!
//! * `peak` / local peak: raised with `fetch_max` when a committed charge produced a new
//!   high, so they are exact maxima of the values committed charges produced. A reset
//!   restarts them from the current usage and then re-reads it, so a charge racing with the
//!   reset is never lost from the new window (it may instead count in it although it
//!   committed just before the reset). If the usage read by a reset is above `max` and no
//!   forced charge or `swap_max` ever left the node there, a racing refused charge is in flight: the reset
//!   re-reads a few times and installs at most `max`.
//! * `failcnt`: counted with a relaxed `fetch_add` (exact count; its order relative to other
//!   fields is unspecified).
//! * Reading several fields is not a snapshot: `usage` may move between two reads.

mod charge;
mod error;
mod limits;
mod parse;
mod peak;
mod protection;

pub use error::{ChargeError, LimitError, Overflow, OwnedChargeError, Underflow};
pub use limits::SET_MAX_RETRIES;
#[cfg(feature = "alloc")]
pub(crate) use limits::check_value;
pub use parse::{ParseError, parse_amount};
pub use peak::PeakWatcher;
pub use protection::effective_protection;

use core::fmt;
use core::ptr;

use crate::padded::LinePadded;
use crate::sync::SpinFlag;
use crate::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;

use peak::WatchLink;

/// The largest amount a counter can hold, and the value that means "no limit".
///
/// Like Linux's `PAGE_COUNTER_MAX`: `isize::MAX / 4096` on 64-bit targets, so that an amount
/// in 4 KiB pages converted to bytes still fits a signed 64-bit value and in-flight
/// speculative charges can never wrap the signed usage word; `isize::MAX` on narrower targets.
#[cfg(target_pointer_width = "64")]
pub const COUNTER_MAX: usize = (isize::MAX as usize) / 4096;
/// The largest amount a counter can hold, and the value that means "no limit".
///
/// Like Linux's `PAGE_COUNTER_MAX`: `isize::MAX / 4096` on 64-bit targets, `isize::MAX` on
/// narrower ones. On 32-bit targets three or more charges of close to `isize::MAX` racing on
/// one node could wrap the usage word past a full turn; any realistic amount cannot.
#[cfg(not(target_pointer_width = "64"))]
pub const COUNTER_MAX: usize = isize::MAX as usize;

const FLAG_PROTECTION: u8 = 1 << 0;
const FLAG_FAILCNT: u8 = 1 << 1;

/// One node of a hierarchical counter.
///
/// See the [module documentation](self) for the rules and protocols.
///
/// # Example
///
/// ```
/// use chargetree::counter::{ChargeError, Counter};
///
/// static ROOT: Counter<'static> = Counter::new_root();
/// static CHILD: Counter<'static> = Counter::new(Some(&ROOT));
///
/// ROOT.set_max(100).unwrap();
/// CHILD.try_charge(60).unwrap();
/// assert_eq!(ROOT.usage(), 60);
///
/// // The root's limit is what stops this charge; nothing is left behind.
/// match CHILD.try_charge(50) {
///     Err(ChargeError::Limit { at, level }) => {
///         assert!(core::ptr::eq(at, &ROOT));
///         assert_eq!(level, 1);
///     }
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(CHILD.usage(), 60);
/// CHILD.uncharge(60);
/// assert_eq!(ROOT.usage(), 0);
/// ```
///
/// # Invariants
///
/// * `usage >= 0` at every moment (an over-uncharge is clamped, counted and asserted in
///   debug builds).
/// * At quiescence, `usage(c) = local charges of c + Σ usage(children of c)`.
/// * At quiescence, with protection tracking on, `min_usage = min(usage, min)`,
///   `low_usage = min(usage, low)`, and a parent's `children_*_usage` is the sum of its
///   children's.
/// * `local peak <= peak` up to a reset racing a charge.
/// * At quiescence `usage <= peak`, and `peak <= max` unless a forced charge or
///   [`Counter::swap_max`] left usage above `max`.
// Layout, Linux's `struct page_counter` with its `CACHELINE_PADDING` (one 64-byte line on
// x86-64 and arm64, as Linux's `L1_CACHE_BYTES`; see `LinePadded`): `usage` is written by
// every counter operation and shares its line only with what a failed operation writes
// (`failcnt`, `underflows`, `forgiven`, `above_max`: Linux keeps `failcnt` there too);
// protection sums and peaks, written when they change, fill the second line; the limits and
// the parent pointer, read by every charge and written almost never, sit on a third line
// that stays shared in every CPU's cache. Three lines, 192 bytes on x86-64. (With the unit
// stock in front, a group's counter is touched once per batch, not per charge; the pair of
// lines an adjacent-line prefetcher pulls in, 128 bytes on x86-64, would cost a group 384
// bytes for no measured gain.)
pub struct Counter<'p> {
    hot: LinePadded<Hot>,
    track: LinePadded<Tracking>,
    conf: LinePadded<Conf<'p>>,
}

/// The line every charge and uncharge writes.
struct Hot {
    usage: AtomicIsize,
    failcnt: AtomicUsize,
    underflows: AtomicUsize,
    forgiven: AtomicUsize,
    /// Set once usage may have been left above `max` by a committed operation (a forced
    /// charge past it, or `swap_max` lowering it): from then on a usage above `max` may be
    /// committed, not only a refused charge's speculative add (see `peak_floor`).
    above_max: AtomicBool,
}

/// Fields written when protection or peaks change: exactly one 64-byte line.
struct Tracking {
    min_usage: AtomicUsize,
    low_usage: AtomicUsize,
    /// Σ children's `min_usage`; transiently negative while deltas arrive out of order.
    children_min_usage: AtomicIsize,
    /// Σ children's `low_usage`; transiently negative while deltas arrive out of order.
    children_low_usage: AtomicIsize,
    emin: AtomicUsize,
    elow: AtomicUsize,
    watermark: AtomicUsize,
    local_watermark: AtomicUsize,
}

/// Read-mostly fields.
struct Conf<'p> {
    max: AtomicUsize,
    high: AtomicUsize,
    min: AtomicUsize,
    low: AtomicUsize,
    parent: Option<&'p Counter<'p>>,
    flags: u8,
    /// Set while this node has declared protection or recorded protected usage: charges
    /// skip the protection bookkeeping of a node that has neither (protocol P's fast path).
    prot_armed: AtomicBool,
    /// Set (under `writer`) when the node's protection is revoked for good (its group went
    /// offline): `min`/`low` are 0 and `set_min`/`set_low` are refused from then on.
    retired: AtomicBool,
    /// Serialises configuration writers (protocol W).
    writer: SpinFlag,
    /// Head of the intrusive list of registered [`PeakWatcher`]s; only touched under `writer`.
    watchers: UnsafeCell<*const WatchLink>,
}

// SAFETY: every field but `watchers` is an atomic, a plain `u8` that is never written after
// construction, or a shared reference to another `Counter` (which is `Sync` by this same
// impl). `watchers` and the links it reaches are read and written only while `conf.writer`
// is held (see `peak.rs`), and every linked `WatchLink` is pinned and unlinks itself under
// that flag before it is dropped, so sharing or sending a `Counter` across threads cannot
// produce an unsynchronised access to them.
unsafe impl Send for Counter<'_> {}
// SAFETY: see the `Send` impl above; all shared-reference methods use atomics or take
// `conf.writer` before touching the watcher list.
unsafe impl Sync for Counter<'_> {}

impl<'p> Counter<'p> {
    crate::const_fn! {
        /// A counter with an optional parent, no limit, no protection, and both protection
        /// tracking and fail counting enabled.
        ///
        /// `const`, so counters can be `static`s with `&'static` parents and no allocator.
        #[must_use]
        pub const fn new(parent: Option<&'p Counter<'p>>) -> Self {
            Self {
                hot: LinePadded::new(Hot {
                    usage: AtomicIsize::new(0),
                    failcnt: AtomicUsize::new(0),
                    underflows: AtomicUsize::new(0),
                    forgiven: AtomicUsize::new(0),
                    above_max: AtomicBool::new(false),
                }),
                track: LinePadded::new(Tracking {
                    min_usage: AtomicUsize::new(0),
                    low_usage: AtomicUsize::new(0),
                    children_min_usage: AtomicIsize::new(0),
                    children_low_usage: AtomicIsize::new(0),
                    emin: AtomicUsize::new(0),
                    elow: AtomicUsize::new(0),
                    watermark: AtomicUsize::new(0),
                    local_watermark: AtomicUsize::new(0),
                }),
                conf: LinePadded::new(Conf {
                    max: AtomicUsize::new(COUNTER_MAX),
                    high: AtomicUsize::new(COUNTER_MAX),
                    min: AtomicUsize::new(0),
                    low: AtomicUsize::new(0),
                    parent,
                    flags: FLAG_PROTECTION | FLAG_FAILCNT,
                    prot_armed: AtomicBool::new(false),
                    retired: AtomicBool::new(false),
                    writer: SpinFlag::new(),
                    watchers: UnsafeCell::new(ptr::null()),
                }),
            }
        }
    }

    crate::const_fn! {
        /// A top-level counter (no parent). Same as `Counter::new(None)`.
        #[must_use]
        pub const fn new_root() -> Self {
            Self::new(None)
        }
    }

    crate::const_fn! {
        /// Stops maintaining `min_usage` / `low_usage` and the parent's sums for this node
        /// (Linux's `protection_support = false`): charges skip that bookkeeping, and the
        /// node's `min` / `low` are ignored by effective-protection calculations.
        #[must_use]
        pub const fn without_protection(mut self) -> Self {
            self.conf.value.flags &= !FLAG_PROTECTION;
            self
        }
    }

    crate::const_fn! {
        /// Stops counting failed charges on this node (Linux's `track_failcnt = false`).
        #[must_use]
        pub const fn without_failcnt(mut self) -> Self {
            self.conf.value.flags &= !FLAG_FAILCNT;
            self
        }
    }

    /// The parent counter, if any.
    #[inline]
    #[must_use]
    pub fn parent(&self) -> Option<&'p Counter<'p>> {
        self.conf.parent
    }

    /// The number of ancestors above this node (0 for a top-level counter).
    #[must_use]
    pub fn depth(&self) -> usize {
        let mut depth = 0;
        let mut c = self.conf.parent;
        while let Some(p) = c {
            depth += 1;
            c = p.conf.parent;
        }
        depth
    }

    /// Whether this node maintains protected-usage sums.
    #[inline]
    #[must_use]
    pub fn tracks_protection(&self) -> bool {
        self.conf.flags & FLAG_PROTECTION != 0
    }

    /// Whether this node counts failed charges.
    #[inline]
    #[must_use]
    pub fn tracks_failcnt(&self) -> bool {
        self.conf.flags & FLAG_FAILCNT != 0
    }

    /// Current usage (Linux's `page_counter_read`). A racy read: concurrent charges move it,
    /// and it includes the speculative adds of charges in flight.
    #[inline]
    #[must_use]
    pub fn usage(&self) -> usize {
        // ORDERING: Relaxed; a statistic read, no other memory is published through it.
        clamp_nonneg(self.hot.usage.load(Ordering::Relaxed))
    }

    /// `max − usage`, or 0 when at or over the limit (Linux's `mem_cgroup_margin` for one
    /// counter).
    #[inline]
    #[must_use]
    pub fn margin(&self) -> usize {
        self.max().saturating_sub(self.usage())
    }

    /// The hard limit. [`COUNTER_MAX`] means none.
    #[inline]
    #[must_use]
    pub fn max(&self) -> usize {
        // ORDERING: Relaxed; a configuration read for display / policy, not part of protocol L.
        self.conf.max.load(Ordering::Relaxed)
    }

    /// The throttling threshold. Not enforced by the counter; the charge engine reports
    /// charges that leave a node above it.
    #[inline]
    #[must_use]
    pub fn high(&self) -> usize {
        // ORDERING: Relaxed; a plain configuration value.
        self.conf.high.load(Ordering::Relaxed)
    }

    /// Declared hard protection.
    #[inline]
    #[must_use]
    pub fn min(&self) -> usize {
        // ORDERING: Relaxed; a plain configuration value.
        self.conf.min.load(Ordering::Relaxed)
    }

    /// Declared soft protection.
    #[inline]
    #[must_use]
    pub fn low(&self) -> usize {
        // ORDERING: Relaxed; a plain configuration value.
        self.conf.low.load(Ordering::Relaxed)
    }

    /// The global peak of `usage` since creation or the last [`Counter::reset_peak`].
    #[inline]
    #[must_use]
    pub fn peak(&self) -> usize {
        // ORDERING: Relaxed; racy statistic (module docs, "Racy statistics").
        self.track.watermark.load(Ordering::Relaxed)
    }

    /// How many charges this node refused (Linux's `memory.failcnt`, counted the way a user
    /// reads it): one per [`Counter::try_charge`] that failed at this node, and one per
    /// charge through a group ([`Group::try_charge`](crate::group::Group::try_charge), byte
    /// and object charges, reservations) that the engine gave up on (or forced) with this
    /// node refusing, however many attempts (its batch, the exact amount, the retries after
    /// reclaim) that charge made. Linux counts each attempt, so one refused allocation
    /// there adds the number of its retries.
    #[inline]
    #[must_use]
    pub fn failcnt(&self) -> usize {
        // ORDERING: Relaxed; statistic.
        self.hot.failcnt.load(Ordering::Relaxed)
    }

    /// How many uncharges asked this node for more than it held and were clamped.
    #[inline]
    #[must_use]
    pub fn underflows(&self) -> usize {
        // ORDERING: Relaxed; statistic.
        self.hot.underflows.load(Ordering::Relaxed)
    }

    /// The total amount that clamped uncharges asked of this node beyond what it held
    /// (saturating at `usize::MAX`).
    #[inline]
    #[must_use]
    pub fn forgiven(&self) -> usize {
        // ORDERING: Relaxed; statistic.
        self.hot.forgiven.load(Ordering::Relaxed)
    }

    /// `min(usage, min)` as of the last update of this node.
    #[must_use]
    pub fn min_usage(&self) -> usize {
        // ORDERING: Relaxed; protected-usage sums converge (protocol P), reads are racy.
        self.track.min_usage.load(Ordering::Relaxed)
    }

    /// `min(usage, low)` as of the last update of this node.
    #[must_use]
    pub fn low_usage(&self) -> usize {
        // ORDERING: Relaxed; see `min_usage`.
        self.track.low_usage.load(Ordering::Relaxed)
    }

    /// Σ `min_usage` of the children (0 while transiently negative).
    #[must_use]
    pub fn children_min_usage(&self) -> usize {
        // ORDERING: Relaxed; see `min_usage`.
        clamp_nonneg(self.track.children_min_usage.load(Ordering::Relaxed))
    }

    /// Σ `low_usage` of the children (0 while transiently negative).
    #[must_use]
    pub fn children_low_usage(&self) -> usize {
        // ORDERING: Relaxed; see `min_usage`.
        clamp_nonneg(self.track.children_low_usage.load(Ordering::Relaxed))
    }

    /// Iterates over this node and its ancestors, bottom-up.
    pub fn ancestors_and_self(&self) -> impl Iterator<Item = &Counter<'p>> + '_ {
        let mut next = Some(self);
        core::iter::from_fn(move || {
            let c = next?;
            next = c.conf.parent;
            Some(c)
        })
    }
}

impl Default for Counter<'_> {
    fn default() -> Self {
        Self::new_root()
    }
}

impl fmt::Debug for Counter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter")
            .field("usage", &self.usage())
            .field("max", &self.max())
            .field("high", &self.high())
            .field("min", &self.min())
            .field("low", &self.low())
            .field("peak", &self.peak())
            .field("failcnt", &self.failcnt())
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

#[inline(always)]
fn clamp_nonneg(v: isize) -> usize {
    if v < 0 { 0 } else { v as usize }
}
