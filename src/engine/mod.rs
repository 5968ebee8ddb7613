//! The charge engine (Linux's `try_charge_memcg`, library-shaped): the stock fast path, the
//! batched counter walk, and the slow path with reclaim, drain and bounded retries.
//!
//! # Algorithm (after `try_charge_memcg()` in Linux's `mm/memcontrol.c`)
//!
//! 1. **Fast path**: take `n` from this CPU's stock entry for the group. No counter, no
//!    shared cache line, no `high` check.
//! 2. Charge `batch = max(tree batch, n)` to the counters (the stock is bypassed for
//!    `n > batch`). On success, refill this CPU's stock with `batch − n`, check `high`, done.
//! 3. On failure with `batch > n`: retry with exactly `n` (a smaller charge may fit where the
//!    batch did not), after another look at the stock.
//! 4. The failing group (`over`) is the lowest ancestor-or-self whose `max` refused: raise
//!    its [`Event::Max`] (once per charge), call the tree's [`Reclaimer`] on it, and retry if
//!    its margin now fits `n`.
//! 5. Else drain every CPU's stock entries of `over`'s subtree (once per charge), retry.
//! 6. Else retry up to the tree's retry budget (default 16), each round reclaiming again.
//! 7. Then fail with [`ChargeFailure::Limit`] naming `over`, its limit and its usage, and
//!    raise its [`Event::Oom`]; or, for a no-fail charge, force exactly `n` past the limit
//!    (counted in [`TreeStats::forced`](crate::group::TreeStats::forced)). The events are
//!    listed below.
//!
//! [`ChargeOptions::no_reclaim`] skips steps 4–6 (for contexts that cannot block);
//! [`ChargeOptions::no_retry`] skips step 6 (one reclaim, one drain, the reclaim after the
//! drain, then fail).
//!
//! # Over `high`
//!
//! A charge that walked the counters and left groups above their `high` succeeds, raises
//! [`Event::High`] on each of them (Linux's `reclaim_high` walks every over-high ancestor)
//! and reports the lowest one and its excess in [`Charged::over_high`], so an allocator can
//! throttle or reclaim (Linux defers this to the return to user space; a library tells its
//! caller). Stock hits are not checked, as in Linux: the units they hand out were counted
//! when the batch was charged.
//!
//! # Events of a failing charge
//!
//! As in Linux's `try_charge_memcg`: a charge that may reclaim raises [`Event::Max`] on the
//! refusing group once, before its first reclaim, and [`Event::Oom`] when it gives up (also
//! when it then forces a no-fail charge). A charge that may not reclaim
//! ([`ChargeOptions::no_reclaim`], Linux's non-blocking allocation) raises nothing when it
//! fails; forced ([`ChargeOptions::no_fail`] too), it raises only `max`. One deviation:
//! Linux skips the OOM path, hence `oom`, for `__GFP_RETRY_MAYFAIL`; a
//! [`ChargeOptions::no_retry`] charge still raises `oom` when it fails, so that every
//! failure that tried to reclaim is counted.
//!
//! # Panicking reclaimers
//!
//! The reclaimer is called with nothing half-done: every speculative charge has been rolled
//! back and no stock slot is held, so a panic unwinding through the engine leaves every
//! counter balanced (`tests/engine.rs` checks it).

use alloc_crate::boxed::Box;
use core::fmt;
use core::ptr::NonNull;

use crate::counter::{COUNTER_MAX, ChargeError, LimitError, Underflow};
use crate::cpu::CpuProvider;
use crate::cpu::DefaultCpus;
use crate::groups::domain::{Domain, UPPER_ENGINE};
use crate::groups::name::{Amount, GroupName};
use crate::groups::node::Node;
use crate::groups::{Event, Group, GroupId};
use crate::stock::STOCK_SLOTS;
use crate::sync::atomic::{AtomicUsize, Ordering};

/// Linux's `MAX_RECLAIM_RETRIES`.
pub const DEFAULT_RETRIES: usize = 16;

/// The engine's share of a tree: its reclaimer and retry budget, and what it counts. The
/// tree builds it beside the group layer's [`Domain`] and installs a pointer to it there
/// ([`UPPER_ENGINE`]).
pub(crate) struct EngineState<P: CpuProvider, const K: usize> {
    pub(crate) reclaimer: Option<Box<dyn Reclaimer<P, K>>>,
    pub(crate) max_retries: usize,
    /// Bytes per unit, for the amounts in failure messages.
    pub(crate) unit_bytes: usize,
    forced: AtomicUsize,
}

impl<P: CpuProvider, const K: usize> EngineState<P, K> {
    pub(crate) fn new(
        reclaimer: Option<Box<dyn Reclaimer<P, K>>>,
        max_retries: usize,
        unit_bytes: usize,
    ) -> Self {
        Self { reclaimer, max_retries, unit_bytes, forced: AtomicUsize::new(0) }
    }

    /// No-fail charges forced past a limit.
    pub(crate) fn forced(&self) -> usize {
        // ORDERING: Relaxed; a statistic.
        self.forced.load(Ordering::Relaxed)
    }

    /// The engine state of the tree `domain` belongs to.
    #[inline]
    pub(crate) fn of(domain: &Domain<P, K>) -> &Self {
        // SAFETY: the tree installs a pointer to its `EngineState<P, K>` at `UPPER_ENGINE`
        // before the domain is shared, in the same allocation (`Domain::set_upper`).
        unsafe { &*domain.upper(UPPER_ENGINE).cast::<Self>() }
    }
}

/// What the charge engine calls when a group is over its limit: free what you can.
///
/// `group` is the group whose limit refused (the charged group or one of its ancestors);
/// `amount` is how much the charge needs. Return how many units were freed (uncharged); the
/// engine only uses it as a progress signal and re-checks the margin itself.
///
/// It runs on the charging thread, in whatever context the charge was made: inside a global
/// allocator it must not allocate. It may panic; the engine stays consistent.
///
/// ```
/// use chargetree::group::{Group, GroupSpec, Reclaimer, Tree, TreeConfig};
///
/// /// Reclaims from the group's subtree in Linux's protection order, freeing up to what
/// /// each group's caches hold (here: everything charged).
/// struct Caches;
/// impl Reclaimer for Caches {
///     fn reclaim(&self, group: &Group, amount: usize) -> usize {
///         group
///             .walk_reclaim(amount, true, |g, wanted| {
///                 let n = g.counter().usage().min(wanted);
///                 g.uncharge(n);
///                 n
///             })
///             .reclaimed
///     }
/// }
/// let tree = Tree::with_config(TreeConfig::new().reclaimer(Caches).batch(0));
/// let g = tree.root().create_child(GroupSpec::new().max(8)).unwrap();
/// let _ = g.try_charge(8).unwrap();
/// let _ = g.try_charge(3).unwrap(); // the reclaimer made room
/// ```
pub trait Reclaimer<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS>: Send + Sync {
    /// Frees up to `amount` units charged to `group`'s subtree; returns the units freed.
    fn reclaim(&self, group: &Group<P, K>, amount: usize) -> usize;
}

/// How a charge may behave under pressure. Build it from [`ChargeOptions::DEFAULT`] with the
/// methods (new options may be added):
///
/// ```
/// use chargetree::group::{ChargeOptions, GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let g = tree.root().create_child(GroupSpec::new().max(10)).unwrap();
/// // An interrupt-like context: never reclaim, never fail.
/// let c = g.charge_with(20, ChargeOptions::DEFAULT.no_reclaim().no_fail()).unwrap();
/// assert!(c.forced);
/// g.uncharge(20);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChargeOptions {
    /// Never fail: after reclaim and retries, force the charge past the limit (counted).
    pub no_fail: bool,
    /// Do not call the reclaimer nor drain stocks (contexts that cannot block).
    pub no_reclaim: bool,
    /// Reclaim, drain, reclaim once more, but do not retry further.
    pub no_retry: bool,
}

impl ChargeOptions {
    /// The default: reclaim, drain, retry, then fail.
    pub const DEFAULT: Self = Self { no_fail: false, no_reclaim: false, no_retry: false };
    /// Force the charge if it cannot be satisfied otherwise.
    #[must_use]
    pub const fn no_fail(mut self) -> Self {
        self.no_fail = true;
        self
    }
    /// Do not reclaim or drain.
    #[must_use]
    pub const fn no_reclaim(mut self) -> Self {
        self.no_reclaim = true;
        self
    }
    /// Do not retry after the first reclaim and drain.
    #[must_use]
    pub const fn no_retry(mut self) -> Self {
        self.no_retry = true;
        self
    }
}

/// A group left above its `high` threshold by a charge.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OverHigh {
    /// The lowest group on the path that is above its `high`.
    pub group: GroupId,
    /// Its usage after the charge.
    pub usage: usize,
    /// Its `high`.
    pub high: usize,
}

impl OverHigh {
    /// By how much the group is over its `high`.
    #[must_use]
    pub fn excess(&self) -> usize {
        self.usage - self.high
    }
}

/// A successful charge.
#[non_exhaustive]
#[must_use = "a charge can leave a group over its `high`; check `over_high`"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Charged {
    /// Set if the charge left a group above its `high`.
    pub over_high: Option<OverHigh>,
    /// Set if the charge was forced past a limit (no-fail).
    pub forced: bool,
}

/// Why a charge failed. Nothing stays charged.
///
/// Owned and `'static` (`?` into `Box<dyn Error + Send + Sync>` works): it names the refusing
/// group by id and, if it has one, by name (a [`GroupName`] holds a reference on the group,
/// taken without allocating). `Display` writes the amounts for people, in units and, when the
/// tree's units are bytes of some size, in binary sizes.
///
/// ```
/// use chargetree::group::{ChargeFailure, GroupSpec, Tree};
///
/// let tree = Tree::new(); // units of 4 KiB
/// let g = tree.root().create_child(GroupSpec::new().name("vm-1").max(256)).unwrap();
/// let err = g.try_charge(300).unwrap_err();
/// assert!(matches!(err, ChargeFailure::Limit { max: 256, .. }));
/// assert_eq!(
///     err.to_string(),
///     "group #1 \"vm-1\" refused 300 units (1.2 MiB): max 256 units (1.0 MiB), usage 0 units (0 B)"
/// );
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChargeFailure {
    /// `group` (the charged group or an ancestor) stayed at its limit through reclaim,
    /// drain and retries.
    #[non_exhaustive]
    Limit {
        /// The group whose limit refused.
        group: GroupId,
        /// Its name, if it has one.
        name: Option<GroupName>,
        /// Its limit.
        max: usize,
        /// Its usage at the last attempt.
        usage: usize,
        /// The amount asked for.
        requested: usize,
        /// Bytes per unit of the tree (for display; 1 if units are not bytes of a size).
        unit_bytes: usize,
    },
    /// The amount is above [`COUNTER_MAX`].
    #[non_exhaustive]
    TooLarge {
        /// The amount asked for.
        requested: usize,
    },
    /// A no-fail charge would have put a counter above [`COUNTER_MAX`].
    #[non_exhaustive]
    Overflow {
        /// The amount asked for.
        requested: usize,
    },
}

impl ChargeFailure {
    /// The refusing group's id ([`ChargeFailure::Limit`]).
    #[must_use]
    pub fn group(&self) -> Option<GroupId> {
        match self {
            ChargeFailure::Limit { group, .. } => Some(*group),
            _ => None,
        }
    }

    /// The refusing group's name, if it has one ([`ChargeFailure::Limit`]).
    #[must_use]
    pub fn group_name(&self) -> Option<&GroupName> {
        match self {
            ChargeFailure::Limit { name, .. } => name.as_ref(),
            _ => None,
        }
    }

    /// The amount asked for.
    #[must_use]
    pub fn requested(&self) -> usize {
        match self {
            ChargeFailure::Limit { requested, .. }
            | ChargeFailure::TooLarge { requested }
            | ChargeFailure::Overflow { requested } => *requested,
        }
    }
}

impl fmt::Display for ChargeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChargeFailure::Limit { group, name, max, usage, requested, unit_bytes } => {
                let a = |units| Amount { units, unit_bytes: *unit_bytes };
                write!(f, "group {group}")?;
                if let Some(name) = name {
                    write!(f, " {:?}", name.as_str())?;
                }
                write!(f, " refused {}: max {}, usage {}", a(*requested), a(*max), a(*usage))
            }
            ChargeFailure::TooLarge { requested } => {
                write!(f, "amount {requested} is above the counter maximum {COUNTER_MAX}")
            }
            ChargeFailure::Overflow { requested } => {
                write!(f, "forcing {requested} would overflow the counter maximum {COUNTER_MAX}")
            }
        }
    }
}

impl core::error::Error for ChargeFailure {}

/// What a [`Group::walk_reclaim`] did.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReclaimWalk {
    /// Units the visitor reported freed.
    pub reclaimed: usize,
    /// Groups visited.
    pub visited: usize,
    /// Groups skipped because usage ≤ effective `min` (hard protection).
    pub skipped_min: usize,
    /// Groups skipped on the first pass because usage ≤ effective `low`.
    pub skipped_low: usize,
    /// Whether a second pass reclaimed from low-protected groups (each raised
    /// [`Event::Low`]).
    pub low_pass: bool,
}

impl<P: CpuProvider, const K: usize> Group<P, K> {
    /// Charges `n` units: stock fast path, then the counters, then reclaim and retries (see
    /// the engine docs). Same as `charge_with(n, ChargeOptions::DEFAULT)`.
    ///
    /// ```
    /// use chargetree::group::{GroupSpec, Tree};
    ///
    /// let tree = Tree::new();
    /// let g = tree.root().create_child(GroupSpec::new().max(100).high(50)).unwrap();
    /// // One walk charges a batch of 64: 60 for the caller, 4 cached in this CPU's stock.
    /// let c = g.try_charge(60).unwrap();
    /// assert_eq!((g.counter().usage(), g.cached_units()), (64, 4));
    /// assert_eq!(c.over_high.unwrap().excess(), 14); // told, not refused
    /// assert!(g.try_charge(50).is_err()); // refused, even after draining the stocks
    /// g.uncharge(60);
    /// ```
    #[inline(always)]
    pub fn try_charge(&self, n: usize) -> Result<Charged, ChargeFailure> {
        self.charge_with(n, ChargeOptions::DEFAULT)
    }

    /// Charges `n` units with `options`.
    #[inline(always)]
    pub fn charge_with(&self, n: usize, options: ChargeOptions) -> Result<Charged, ChargeFailure> {
        let domain = self.node().domain();
        let cpu = domain.cpus.current();
        if domain.stock.consume(cpu, self.node(), n) {
            return Ok(Charged::default());
        }
        self.charge_slow(cpu, n, options)
    }

    /// Uncharges `n` units: into this CPU's stock if it caches the group (above the batch the
    /// excess goes to the counters), else straight from the counters.
    ///
    /// Uncharging more than was charged is a caller bug; the counters clamp it when the units
    /// reach them (immediately, or when the stock entry is drained), count it in
    /// [`Counter::underflows`](crate::counter::Counter::underflows), and debug builds assert.
    #[inline(always)]
    pub fn uncharge(&self, n: usize) {
        let domain = self.node().domain();
        if !domain.stock.uncharge_cached(domain.cpus.current(), self.node(), n) {
            self.counter().uncharge(n);
        }
    }

    /// Uncharges `n` units from the counters directly (not into this CPU's stock), so that
    /// an over-uncharge is reported at once, as [`Underflow`]: clamped and counted as in
    /// [`Counter::try_uncharge`](crate::counter::Counter::try_uncharge), never asserted. (The
    /// counters' usage includes units cached in stocks, so an uncharge of units this group's
    /// objects never held but a stock caches is not seen as one.)
    ///
    /// ```
    /// use chargetree::group::{GroupSpec, Tree};
    ///
    /// let tree = Tree::new();
    /// let g = tree.root().create_child(GroupSpec::new().max(1000)).unwrap();
    /// let _ = g.try_charge(100).unwrap(); // 100 charged, the rest of a batch cached
    /// let _ = tree.drain_local();
    /// assert!(g.try_uncharge(60).is_ok());
    /// assert_eq!(g.try_uncharge(60).unwrap_err().forgiven, 20);
    /// ```
    pub fn try_uncharge(&self, n: usize) -> Result<(), Underflow> {
        self.counter().try_uncharge(n)
    }

    /// [`Group::uncharge`] for the library's own bookkeeping: clamps and counts an
    /// over-uncharge (a caller's earlier mistake) instead of asserting.
    #[inline]
    pub(crate) fn uncharge_counted(&self, n: usize) {
        let domain = self.node().domain();
        if !domain.stock.uncharge_cached(domain.cpus.current(), self.node(), n) {
            self.counter().uncharge_counted(n);
        }
    }

    #[cold]
    #[inline(never)]
    fn charge_slow(
        &self,
        mut cpu: Option<usize>,
        n: usize,
        options: ChargeOptions,
    ) -> Result<Charged, ChargeFailure> {
        if n > COUNTER_MAX {
            return Err(ChargeFailure::TooLarge { requested: n });
        }
        if n == 0 {
            return Ok(Charged::default());
        }
        let node = self.node();
        let domain = node.domain();
        let engine = EngineState::of(domain);
        let stock = &domain.stock;
        // No batching once the tree is being dropped (a hint here: `refill` re-checks inside
        // the stock and gives the excess back if it raced with the close).
        // (An offline group is still batched, as in Linux: its entry pins it until evicted
        // or drained, which `drain_all` of any ancestor does.)
        let full = stock.batch();
        let mut batch = if full == 0 || n > full || stock.slots().is_closed_hint() { n } else { full };
        let mut retries = engine.max_retries;
        // Room retries are granted per failing level, going up only: a reclaim at a parent
        // that makes room gets its own budget after the child's is spent (bounded overall by
        // the depth times the budget).
        let room_budget = engine.max_retries.saturating_add(1);
        let mut room_retries = room_budget;
        let mut room_level = 0;
        let mut drained = false;
        let mut max_raised = false;
        let over: &Node<P, K> = loop {
            let level = match node.counter.try_charge_uncounted(batch) {
                Ok(()) => {
                    if batch > n {
                        stock.refill(cpu, self.node_ptr(), batch - n);
                    }
                    return Ok(Charged { over_high: self.check_high(), forced: false });
                }
                // A batch that cannot be charged (refused, or not representable) falls back to
                // the exact amount below; only the exact amount itself can be too large.
                Err(ChargeError::TooLarge { .. }) if batch == n => {
                    return Err(ChargeFailure::TooLarge { requested: n });
                }
                Err(ChargeError::TooLarge { .. }) => 0,
                Err(ChargeError::Limit { level, .. }) => level,
            };
            if batch > n {
                batch = n;
                if stock.consume(cpu, node, n) {
                    return Ok(Charged::default());
                }
                continue;
            }
            if level > room_level {
                room_level = level;
                room_retries = room_budget;
            }
            let over_ptr = self.ancestor_ptr(level);
            // SAFETY: an ancestor of this handle's node, kept alive by the handle.
            let over = unsafe { over_ptr.as_ref() };
            if options.no_reclaim {
                break over;
            }
            if !max_raised {
                over.raise(Event::Max);
                max_raised = true;
            }
            let progress = match &engine.reclaimer {
                Some(r) => {
                    // The over-limit group is this group or an ancestor, which this handle
                    // keeps alive: a plain get is legal.
                    // SAFETY: `over_ptr` is the stored parent pointer of a node this handle
                    // keeps referenced.
                    let over_group = unsafe { Node::handle(over_ptr) };
                    let freed = r.reclaim(&over_group, n);
                    // The hook may have moved this context to another CPU (an embedder's
                    // provider is free to): ask again before touching a stock.
                    cpu = domain.cpus.current();
                    freed
                }
                None => 0,
            };
            if over.counter.margin() >= n {
                // Reclaim made room: retry without spending a retry (Linux), but only so many
                // times, so that a reclaimer whose room other chargers keep taking cannot make
                // this loop forever.
                if room_retries > 0 {
                    room_retries -= 1;
                    continue;
                }
            } else if !drained {
                drained = true;
                // A drain under way elsewhere returns `None`; this charge does not wait for
                // it (it may drain another subtree, and CPUs inside a stock operation are
                // skipped by any drain): the retries below give it time to finish.
                let _ = domain.drain_all(Some(over));
                cpu = domain.cpus.current();
                continue;
            }
            if options.no_retry || retries == 0 {
                break over;
            }
            retries -= 1;
            let _ = progress;
        };
        // One refused charge, however many attempts it took (its batch, the exact amount,
        // every retry): counted once, where the last attempt was refused.
        over.counter.count_failure();
        if options.no_fail {
            // Linux's `force:` label: a forced charge always raises `max` (once).
            if !max_raised {
                over.raise(Event::Max);
            }
            // A charge that was allowed to reclaim raises `oom` before it resorts to forcing
            // (Linux's OOM path runs first); a non-blocking one never got that far.
            if !options.no_reclaim {
                over.raise(Event::Oom);
            }
            node.counter.charge(n).map_err(|_| ChargeFailure::Overflow { requested: n })?;
            // ORDERING: Relaxed; a statistic.
            engine.forced.fetch_add(1, Ordering::Relaxed);
            return Ok(Charged { over_high: self.check_high(), forced: true });
        }
        // A charge that may not reclaim fails silently, as Linux's non-blocking charges jump
        // to `nomem` before they raise any event.
        if !options.no_reclaim {
            over.raise(Event::Oom);
        }
        Err(ChargeFailure::Limit {
            group: over.id,
            // SAFETY: this group or an ancestor, referenced through this handle.
            name: unsafe { GroupName::of_node(self.stored_ptr_of(over)) },
            unit_bytes: engine.unit_bytes,
            max: over.counter.max(),
            usage: over.counter.usage(),
            requested: n,
        })
    }

    /// Raises [`Event::High`] on every group of the path that is above its `high` (Linux's
    /// `reclaim_high` walks every over-high ancestor) and reports the lowest of them.
    fn check_high(&self) -> Option<OverHigh> {
        let mut lowest = None;
        let mut n = Some(self.node());
        while let Some(x) = n {
            let (usage, high) = (x.counter.usage(), x.counter.high());
            if usage > high {
                x.raise(Event::High);
                lowest.get_or_insert(OverHigh { group: x.id, usage, high });
            }
            n = x.parent();
        }
        lowest
    }

    /// Sets the hard limit. If units cached in stocks keep the usage above `limit`, drains
    /// the stocks of this subtree and tries again; [`LimitError::Busy`] if still above.
    pub fn set_max(&self, limit: usize) -> Result<(), LimitError> {
        match self.counter().set_max(limit) {
            Err(LimitError::Busy { .. }) => {
                self.node().domain().drain_blocking(Some(self.node()));
                self.counter().set_max(limit)
            }
            other => other,
        }
    }

    /// Units of this group cached in the stocks of all CPUs (charged, not yet handed out).
    /// A racy statistic.
    #[must_use]
    pub fn cached_units(&self) -> usize {
        self.node().domain().stock.cached_units(self.node())
    }

    /// Walks this group's subtree in Linux's reclaim order and protection policy, calling
    /// `visit(group, still_wanted)` on each group reclaim may take from, until `amount` units
    /// are reported freed.
    ///
    /// Effective protection is computed top-down with this group as the reclaim root
    /// (`recursive` = cgroup2's `memory_recursiveprot`). A group whose usage is within its
    /// effective `min` is skipped; one within its effective `low` is skipped on the first
    /// pass and visited on a second pass (raising its [`Event::Low`]) only if the first pass
    /// fell short. This group's own protection is ignored (a reclaim target does not shield
    /// itself). Allocation-free; holds one extra handle at a time.
    ///
    /// ```
    /// use chargetree::group::{GroupSpec, Tree, TreeConfig};
    ///
    /// let tree = Tree::with_config(TreeConfig::new().batch(0));
    /// let root = tree.root();
    /// let kept = root.create_child(GroupSpec::new().min(100)).unwrap(); // hard protection
    /// let cache = root.create_child(GroupSpec::new()).unwrap();
    /// let _ = (kept.try_charge(50).unwrap(), cache.try_charge(50).unwrap());
    /// let walk = root.walk_reclaim(80, false, |g, wanted| {
    ///     if g.is_root() {
    ///         return 0; // the root's usage is its children's
    ///     }
    ///     let n = g.counter().usage().min(wanted);
    ///     g.uncharge(n);
    ///     n
    /// });
    /// assert_eq!((walk.reclaimed, walk.skipped_min), (50, 1), "the protected group is kept");
    /// assert_eq!((kept.counter().usage(), cache.counter().usage()), (50, 0));
    /// ```
    pub fn walk_reclaim(
        &self,
        amount: usize,
        recursive: bool,
        mut visit: impl FnMut(&Group<P, K>, usize) -> usize,
    ) -> ReclaimWalk {
        let mut walk = ReclaimWalk::default();
        for low_pass in [false, true] {
            if low_pass && (walk.reclaimed >= amount || walk.skipped_low == 0) {
                break;
            }
            walk.low_pass = low_pass;
            let mut cursor = Some(self.clone());
            while let Some(g) = cursor {
                if walk.reclaimed >= amount {
                    break;
                }
                let c = g.counter();
                c.calculate_protection(self.counter(), recursive);
                let usage = c.usage();
                if usage > 0 {
                    let target = g.ptr_eq(self);
                    let visit_it = if target {
                        true
                    } else if c.effective_min() >= usage {
                        if !low_pass {
                            walk.skipped_min += 1;
                        }
                        false
                    } else if c.effective_low() >= usage {
                        if low_pass {
                            g.raise_event(Event::Low);
                            true
                        } else {
                            walk.skipped_low += 1;
                            false
                        }
                    } else {
                        !low_pass
                    };
                    if visit_it {
                        walk.visited += 1;
                        walk.reclaimed += visit(&g, amount - walk.reclaimed);
                    }
                }
                cursor = g.next_pre(self);
            }
        }
        walk
    }
}

impl<P: CpuProvider, const K: usize> Group<P, K> {
    /// The pointer the tree stores for `node`, this group or one of its ancestors (found by
    /// walking up; see `ancestor_ptr` for why the stored pointer matters).
    fn stored_ptr_of(&self, node: &Node<P, K>) -> NonNull<Node<P, K>> {
        let mut n = self.node_ptr();
        while !core::ptr::eq(n.as_ptr(), node) {
            // SAFETY: this handle keeps every ancestor referenced, hence alive.
            n = unsafe { n.as_ref() }.parent.expect("`node` is on the path");
        }
        n
    }

    /// The ancestor `level` parents up (0 = this group's node), as the pointer the tree
    /// stores (so a handle made from it may one day free the node through it).
    pub(crate) fn ancestor_ptr(&self, level: usize) -> NonNull<Node<P, K>> {
        let mut n = self.node_ptr();
        for _ in 0..level {
            // SAFETY: this handle keeps every ancestor referenced, hence alive.
            n = unsafe { n.as_ref() }.parent.expect("level is within the path");
        }
        n
    }
}
