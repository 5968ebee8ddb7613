//! [`ChargeTreePool`]: a level of the tree, and DataFusion's `MemoryPool` on it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chargetree::counter::COUNTER_MAX;
use chargetree::group::{ChargeFailure, ChargeOptions, EventCounts, Group, GroupSpec, Tree, TreeConfig};
use datafusion_common::{DataFusionError, Result};
use datafusion_execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, human_readable_size,
};

use crate::budget::{Budget, PoolError};
use crate::consumer::{self, ConsumerState, Counts, Level, LevelInfo};

/// Default bytes charged to the counters per walk and cached per CPU and consumer.
pub const DEFAULT_BATCH_BYTES: usize = 32 * 1024;
/// Default number of consumers listed in a refusal's message (`TrackConsumersPool`'s
/// default in `RuntimeEnvBuilder::with_memory_limit` is 5 too).
pub const DEFAULT_TOP_CONSUMERS: usize = 5;

/// `try_grow`: the engine's stock, batch and exact-size retry, one drain, then refuse
/// (DataFusion has no reclaim hook, so retrying a refused charge cannot help).
const TRY: ChargeOptions = ChargeOptions::DEFAULT.no_retry();
/// `grow`: the same, then forced past the limit (counted, `max` and `oom` events raised).
const FORCE: ChargeOptions = ChargeOptions::DEFAULT.no_retry().no_fail();

/// How the global level of a pool is built.
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    name: String,
    budget: Budget,
    batch_bytes: usize,
    top_consumers: usize,
}

impl PoolBuilder {
    /// The global level's budget (`max` and `high`; a guarantee means nothing there).
    #[must_use]
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The global level's name in paths and messages (default `global`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Bytes charged to the counters per walk and cached per CPU and consumer
    /// (default [`DEFAULT_BATCH_BYTES`]; 0 turns the per-CPU stock off). See the crate docs
    /// on what cached bytes mean for usage and `reserved()`.
    #[must_use]
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }

    /// How many consumers a refusal's message lists (default [`DEFAULT_TOP_CONSUMERS`]).
    #[must_use]
    pub fn top_consumers(mut self, k: usize) -> Self {
        self.top_consumers = k;
        self
    }

    /// Builds the tree and returns its global level.
    pub fn build(self) -> Result<ChargeTreePool, PoolError> {
        self.budget.validate()?;
        let tree = Tree::with_config(TreeConfig::new().batch(self.batch_bytes));
        let root = tree.root();
        if let Some(max) = self.budget.max {
            root.set_max(max).map_err(PoolError::Limit)?;
        }
        if let Some(high) = self.budget.high {
            root.counter().set_high(high).map_err(PoolError::Limit)?;
        }
        static NEXT_UID: AtomicUsize = AtomicUsize::new(0);
        let shared = Arc::new(Shared {
            // ORDERING: Relaxed; uniqueness only.
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            consumers: Mutex::new(HashMap::new()),
            top_consumers: self.top_consumers,
            any_high: AtomicBool::new(self.budget.high.is_some()),
            any_guarantee: AtomicBool::new(false),
            forced: AtomicUsize::new(0),
            tree,
        });
        let info = LevelInfo::new(self.name);
        let kinds = make_kinds(&shared, &root, &info, self.budget.unspillable_reserve)?;
        let scope = Scope { shared, parent: None, group: root, info, kinds, guarantee: 0 };
        Ok(ChargeTreePool { scope: Arc::new(scope) })
    }
}

/// State shared by every level of one tree.
struct Shared {
    /// Distinguishes this tree's consumers in the per-thread caches.
    uid: usize,
    /// Every registered consumer, by `MemoryConsumer::id`, with its registration count.
    consumers: Mutex<HashMap<usize, (Arc<ConsumerState>, usize)>>,
    top_consumers: usize,
    /// Whether any level ever had a `high`: spillable charges skip the check until then.
    any_high: AtomicBool,
    /// Whether any level ever had a guarantee below it: charges skip the check until then.
    any_guarantee: AtomicBool,
    /// Infallible grows forced past a limit.
    forced: AtomicUsize,
    /// Last: groups held above are dropped before the tree handle (chargetree allows either
    /// order; this one frees them without a detached-tree pass).
    tree: Tree,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, HashMap<usize, (Arc<ConsumerState>, usize)>> {
        // A panic while holding it leaves the map consistent (every update is one call).
        self.consumers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The spillable and unspillable groups of a level that keeps headroom for unspillable
/// consumers.
struct Kinds {
    spillable: Level,
    unspillable: Level,
}

/// One level of the tree: a chargetree group and what the pool keeps beside it.
struct Scope {
    shared: Arc<Shared>,
    /// Keeps the parent level (and its group online) while this one exists.
    parent: Option<Arc<Scope>>,
    group: Group,
    info: Arc<LevelInfo>,
    kinds: Option<Kinds>,
    /// This level's guarantee, counted in the parent's `children_guarantee`.
    guarantee: usize,
}

/// Creates the spillable/unspillable split below `group` if `reserve > 0`.
fn make_kinds(
    shared: &Shared,
    group: &Group,
    info: &LevelInfo,
    reserve: usize,
) -> Result<Option<Kinds>, PoolError> {
    if reserve == 0 {
        return Ok(None);
    }
    let spillable = group.create_child(GroupSpec::new().name("spillable")).map_err(PoolError::Group)?;
    let unspillable =
        group.create_child(GroupSpec::new().name("unspillable").min(reserve)).map_err(PoolError::Group)?;
    // ORDERING: Relaxed; configuration, read racily by the admission check.
    info.children_guarantee.fetch_add(reserve, Ordering::Relaxed);
    shared.any_guarantee.store(true, Ordering::Relaxed);
    Ok(Some(Kinds {
        spillable: Level { group: spillable, info: LevelInfo::new(format!("{}/spillable", info.path)) },
        unspillable: Level { group: unspillable, info: LevelInfo::new(format!("{}/unspillable", info.path)) },
    }))
}

impl Scope {
    fn level(&self) -> Level {
        Level { group: self.group.clone(), info: self.info.clone() }
    }

    /// The levels from this scope up to the root.
    fn ancestry(&self) -> Vec<Level> {
        let mut out = vec![self.level()];
        let mut p = self.parent.as_deref();
        while let Some(s) = p {
            out.push(s.level());
            p = s.parent.as_deref();
        }
        out
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(kinds) = &self.kinds {
            let _ = kinds.spillable.group.offline();
            let _ = kinds.unspillable.group.offline();
        }
        if let Some(parent) = &self.parent {
            parent.info.children_guarantee.fetch_sub(self.guarantee, Ordering::Relaxed);
            // Refused only if a consumer below was never unregistered; the level then stays
            // online (and accounted) until the tree is dropped.
            let _ = self.group.offline();
        }
    }
}

/// A level of a chargetree tree (global, tenant, query, ...) that is also a DataFusion
/// [`MemoryPool`]: consumers registered with it become chargetree groups below it.
///
/// Cloning is cheap (a reference count); every clone is the same level.
#[derive(Clone)]
pub struct ChargeTreePool {
    scope: Arc<Scope>,
}

/// Why a `try_grow` was refused, and where.
enum Refusal {
    /// chargetree's `max` at `level`.
    Max { level: usize, max: usize, usage: usize },
    /// `level` is above its `high` (spillable consumers only).
    High { level: usize, high: usize, usage: usize },
    /// The charge would take bytes guaranteed to other groups below `level`.
    Guarantee { level: usize, max: usize, usage: usize, guaranteed: usize },
    /// More than any counter holds.
    TooLarge,
}

impl ChargeTreePool {
    /// A builder for the global level.
    #[must_use]
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            name: "global".into(),
            budget: Budget::new(),
            batch_bytes: DEFAULT_BATCH_BYTES,
            top_consumers: DEFAULT_TOP_CONSUMERS,
        }
    }

    /// A pool whose global level has `budget`, with the default settings.
    pub fn new(budget: Budget) -> Result<Self, PoolError> {
        Self::builder().budget(budget).build()
    }

    /// Creates a level below this one (a tenant below the global level, a query below a
    /// tenant, ...). It lives while a handle to it, or to a level below it, or a reservation
    /// registered with it lives; then its group goes offline.
    pub fn child(&self, name: &str, budget: Budget) -> Result<ChargeTreePool, PoolError> {
        budget.validate()?;
        let parent = &self.scope;
        let mut spec = GroupSpec::new().name(name).min(budget.guarantee);
        if let Some(max) = budget.max {
            spec = spec.max(max);
        }
        if let Some(high) = budget.high {
            spec = spec.high(high);
        }
        let group = parent.group.create_child(spec).map_err(PoolError::Group)?;
        let shared = &parent.shared;
        if budget.high.is_some() {
            shared.any_high.store(true, Ordering::Relaxed);
        }
        if budget.guarantee > 0 {
            parent.info.children_guarantee.fetch_add(budget.guarantee, Ordering::Relaxed);
            shared.any_guarantee.store(true, Ordering::Relaxed);
        }
        let info = LevelInfo::new(format!("{}/{name}", parent.info.path));
        // From here on the scope owns the group: on an error below, its drop takes the
        // group offline and gives the guarantee back.
        let mut scope = Scope {
            shared: shared.clone(),
            parent: Some(parent.clone()),
            group,
            info,
            kinds: None,
            guarantee: budget.guarantee,
        };
        scope.kinds = make_kinds(shared, &scope.group, &scope.info, budget.unspillable_reserve)?;
        Ok(ChargeTreePool { scope: Arc::new(scope) })
    }

    /// This level as the `Arc<dyn MemoryPool>` a `RuntimeEnvBuilder` takes.
    #[must_use]
    pub fn memory_pool(&self) -> Arc<dyn MemoryPool> {
        Arc::new(self.clone())
    }

    /// `global/tenant/query`.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.scope.info.path
    }

    /// This level's chargetree group (usage, limits, peaks, events).
    #[must_use]
    pub fn group(&self) -> &Group {
        &self.scope.group
    }

    /// The tree every level of this pool belongs to.
    #[must_use]
    pub fn tree(&self) -> &Tree {
        &self.scope.shared.tree
    }

    /// Changes this level's `max`. Refused (nothing changed) if more than `bytes` is in use
    /// below it after draining the per-CPU stocks.
    pub fn set_max(&self, bytes: usize) -> Result<(), PoolError> {
        self.scope.group.set_max(bytes).map_err(PoolError::Limit)
    }

    /// Changes this level's `high`.
    pub fn set_high(&self, bytes: usize) -> Result<(), PoolError> {
        self.scope.group.counter().set_high(bytes).map_err(PoolError::Limit)?;
        if bytes < COUNTER_MAX {
            self.scope.shared.any_high.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Returns every CPU's cached bytes of this level's consumers to the counters, so that
    /// the group's usage equals `reserved()` (at quiescence). Returns the bytes returned, or
    /// `None` if another drain was under way.
    pub fn drain(&self) -> Option<usize> {
        self.tree().drain_all(&self.scope.group)
    }

    /// The consumers registered below this level.
    #[must_use]
    pub fn consumers(&self) -> Vec<ConsumerStats> {
        let shared = &self.scope.shared;
        let registry = shared.registry();
        let mut out: Vec<_> = registry
            .values()
            .filter(|(c, _)| c.group().is_descendant_of(&self.scope.group))
            .map(|(c, _)| ConsumerStats::of(c))
            .collect();
        out.sort_by(|a, b| b.reserved.cmp(&a.reserved).then(a.id.cmp(&b.id)));
        out
    }

    /// This level's statistics.
    #[must_use]
    pub fn stats(&self) -> LevelStats {
        let g = &self.scope.group;
        let c = g.counter();
        LevelStats {
            path: self.path().to_owned(),
            reserved: self.reserved(),
            usage: c.usage(),
            peak: c.peak(),
            max: c.max(),
            high: c.high(),
            guarantee: c.min(),
            refused_max: c.failcnt(),
            refused_high: self.scope.info.refused_high.load(Ordering::Relaxed),
            refused_guarantee: self.scope.info.refused_guarantee.load(Ordering::Relaxed),
            forced: self.scope.shared.forced.load(Ordering::Relaxed),
            events: g.events(),
        }
    }

    /// The registered state of `consumer`, registering it here if it never was (a pool
    /// wrapped by one that does not forward `register`).
    fn lookup(&self, consumer: &MemoryConsumer) -> Arc<ConsumerState> {
        let shared = &self.scope.shared;
        if let Some((c, _)) = shared.registry().get(&consumer.id()) {
            return c.clone();
        }
        self.register_state(consumer)
    }

    /// Runs `f` on `consumer`'s state: from this thread's cache, else from the registry
    /// (and then cached).
    #[inline]
    fn with_consumer<R>(&self, consumer: &MemoryConsumer, f: impl FnOnce(&ConsumerState) -> R) -> R {
        let uid = self.scope.shared.uid;
        match consumer::with_cached(uid, consumer.id(), f) {
            Ok(r) => r,
            Err(f) => {
                let state = self.lookup(consumer);
                let r = f(&state);
                consumer::remember(uid, state);
                r
            }
        }
    }

    fn register_state(&self, consumer: &MemoryConsumer) -> Arc<ConsumerState> {
        let scope = &self.scope;
        let mut registry = scope.shared.registry();
        if let Some((c, count)) = registry.get_mut(&consumer.id()) {
            *count += 1;
            return c.clone();
        }
        // The consumer's group goes below the level's spillable or unspillable group if it
        // keeps headroom for unspillable consumers, else directly below the level.
        let mut levels = scope.ancestry();
        if let Some(k) = &scope.kinds {
            let kind = if consumer.can_spill() { &k.spillable } else { &k.unspillable };
            levels.insert(0, kind.clone());
        }
        let parent = levels[0].clone();
        let label = format!("{}#{}", consumer.name(), consumer.id());
        // A consumer's group has no limits of its own; only its parent going offline (all
        // handles to this level dropped) could refuse it, and we hold one.
        let group = parent.group.create_child(GroupSpec::new().name(&label)).expect("the level is online");
        levels.insert(0, Level { group, info: LevelInfo::new(format!("{}/{label}", parent.info.path)) });
        let state = Arc::new(ConsumerState {
            id: consumer.id(),
            name: consumer.name().to_owned(),
            can_spill: consumer.can_spill(),
            levels: levels.into_boxed_slice(),
            counts: Counts::default(),
        });
        registry.insert(consumer.id(), (state.clone(), 1));
        state
    }

    /// Whether a charge that chargetree accepted must still be refused: above a `high`
    /// (spillable consumers) or into a sibling's guarantee. Before refusing, the stocks
    /// below the refusing level are drained (cached bytes count as usage) and the check
    /// repeated.
    #[inline]
    fn admission(&self, c: &ConsumerState) -> Option<Refusal> {
        let shared = &self.scope.shared;
        let high = c.can_spill && shared.any_high.load(Ordering::Relaxed);
        let guarantee = shared.any_guarantee.load(Ordering::Relaxed);
        if !high && !guarantee {
            return None;
        }
        let refusal = check_levels(c, high, guarantee)?;
        let level = match refusal {
            Refusal::High { level, .. } | Refusal::Guarantee { level, .. } => level,
            _ => return Some(refusal),
        };
        let _ = self.tree().drain_all(&c.levels[level].group);
        let refusal = check_levels(c, high, guarantee)?;
        match refusal {
            Refusal::High { level, .. } => c.levels[level].info.refused_high.fetch_add(1, Ordering::Relaxed),
            Refusal::Guarantee { level, .. } => {
                c.levels[level].info.refused_guarantee.fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
        Some(refusal)
    }

    /// The resources-exhausted error for a refused `try_grow`.
    fn refusal_error(
        &self,
        c: &ConsumerState,
        r: &MemoryReservation,
        n: usize,
        why: Refusal,
    ) -> DataFusionError {
        use fmt::Write;
        let hs = human_readable_size;
        let (at, reason) = match why {
            Refusal::Max { level, max, usage } => {
                (level, format!("its max {} is reached ({} in use)", hs(max), hs(usage)))
            }
            Refusal::High { level, high, usage } => (
                level,
                format!(
                    "it is above its high {} ({} in use), so spillable consumers must spill",
                    hs(high),
                    hs(usage)
                ),
            ),
            Refusal::Guarantee { level, max, usage, guaranteed } => (
                level,
                format!(
                    "{} of its max {} is guaranteed to other groups and unused ({} in use)",
                    hs(guaranteed),
                    hs(max),
                    hs(usage)
                ),
            ),
            Refusal::TooLarge => (0, format!("the request is above the counter maximum {}", hs(COUNTER_MAX))),
        };
        let path = c.path(at);
        let mut msg = format!(
            "Failed to allocate additional {} for {}#{} (can spill: {}) with {} already allocated for this \
             reservation: refused by '{path}': {reason}. Top memory consumers below '{path}':",
            hs(n),
            c.name,
            c.id,
            c.can_spill,
            hs(r.size()),
        );
        let top = self.top_below(&c.levels[at].group, self.scope.shared.top_consumers);
        for (i, s) in top.iter().enumerate() {
            let sep = if i + 1 == top.len() { "." } else { "," };
            let _ = write!(
                msg,
                "\n  {}#{}(can spill: {}) consumed {}, peak {}{sep}",
                s.name,
                s.id,
                s.can_spill,
                hs(s.reserved),
                hs(s.peak)
            );
        }
        DataFusionError::ResourcesExhausted(msg)
    }

    /// The `k` largest consumers below `group`.
    fn top_below(&self, group: &Group, k: usize) -> Vec<ConsumerStats> {
        let registry = self.scope.shared.registry();
        let mut all: Vec<_> = registry
            .values()
            .filter(|(c, _)| c.group().is_descendant_of(group))
            .map(|(c, _)| ConsumerStats::of(c))
            .collect();
        all.sort_by(|a, b| b.reserved.cmp(&a.reserved).then(a.id.cmp(&b.id)));
        all.truncate(k);
        all
    }
}

/// The lowest level (from the consumer up) that refuses: one above its `high` (if `high`),
/// or one whose usage plus the unused guarantees below it that are not the consumer's own
/// would exceed its `max` (if `guarantee`).
///
/// The unused guarantees are summed from the consumer up: at each level, those of its
/// children except the one on the consumer's path (Σ `min` − Σ `min(usage, min)` over the
/// children, which chargetree maintains, minus that child's own). So a guarantee counts at
/// its parent and at every level above it: the unspillable reserve of a query without a
/// `max` of its own is still kept free below the tenant's or the global limit.
#[inline]
fn check_levels(c: &ConsumerState, high: bool, guarantee: bool) -> Option<Refusal> {
    let mut unused_below = 0usize;
    for (i, l) in c.levels.iter().enumerate() {
        let counter = l.group.counter();
        if high {
            let (usage, h) = (counter.usage(), counter.high());
            if usage > h {
                return Some(Refusal::High { level: i, high: h, usage });
            }
        }
        if guarantee && i > 0 {
            // ORDERING: Relaxed; configuration, read racily like chargetree's own limits.
            let total = l.info.children_guarantee.load(Ordering::Relaxed);
            if total != 0 {
                let child = c.levels[i - 1].group.counter();
                let own_unused = child.min().saturating_sub(child.min_usage());
                let unused = total.saturating_sub(counter.children_min_usage()).saturating_sub(own_unused);
                unused_below = unused_below.saturating_add(unused);
            }
            if unused_below != 0 {
                let (usage, max) = (counter.usage(), counter.max());
                if usage.saturating_add(unused_below) > max {
                    return Some(Refusal::Guarantee { level: i, max, usage, guaranteed: unused_below });
                }
            }
        }
    }
    None
}

impl MemoryPool for ChargeTreePool {
    fn name(&self) -> &str {
        "chargetree"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        let _ = self.register_state(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        let shared = &self.scope.shared;
        consumer::forget(shared.uid, consumer.id());
        let gone = {
            let mut registry = shared.registry();
            match registry.get_mut(&consumer.id()) {
                Some((_, count)) if *count > 1 => {
                    *count -= 1;
                    None
                }
                Some(_) => registry.remove(&consumer.id()).map(|(c, _)| c),
                None => None,
            }
        };
        if let Some(c) = gone {
            // Reservations free themselves before their registration goes; whatever a
            // direct caller left is given back so the levels above balance.
            let left = c.counts.bytes.swap(0, Ordering::Relaxed);
            let charged = left - c.take_unaccounted(left);
            if charged != 0 {
                c.group().uncharge(charged);
            }
            // Drains this group's cached bytes from every CPU; the group is freed once the
            // last cache entry of it is gone.
            let _ = c.group().offline();
        }
    }

    #[inline]
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.with_consumer(reservation.consumer(), |c| {
            match c.group().charge_with(additional, FORCE) {
                Ok(charged) => {
                    if charged.forced {
                        c.counts.forced.fetch_add(1, Ordering::Relaxed);
                        self.scope.shared.forced.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Above COUNTER_MAX (or forcing would be): DataFusion's `grow` cannot fail,
                // so the bytes are recorded as unaccounted and given back first.
                Err(_) => {
                    c.counts.unaccounted.fetch_add(additional, Ordering::Relaxed);
                }
            }
            c.add_bytes(additional);
        });
    }

    #[inline]
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.with_consumer(reservation.consumer(), |c| {
            let held = c.sub_bytes(shrink);
            let charged = held - c.take_unaccounted(held);
            if charged != 0 {
                c.group().uncharge(charged);
            }
        });
    }

    #[inline]
    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.with_consumer(reservation.consumer(), |c| {
            let why = match c.group().charge_with(additional, TRY) {
                Ok(_) => match self.admission(c) {
                    None => {
                        c.add_bytes(additional);
                        return Ok(());
                    }
                    Some(why) => {
                        c.group().uncharge(additional);
                        why
                    }
                },
                Err(ChargeFailure::Limit { group, max, usage, .. }) => {
                    let level = c.levels.iter().position(|l| l.group.id() == group).unwrap_or(0);
                    Refusal::Max { level, max, usage }
                }
                Err(_) => Refusal::TooLarge,
            };
            c.counts.refused.fetch_add(1, Ordering::Relaxed);
            Err(self.refusal_error(c, reservation, additional, why))
        })
    }

    /// Σ the reservations of the consumers below this level: exact at quiescence. Bytes
    /// cached in per-CPU stocks are charged to the counters but are not reserved.
    fn reserved(&self) -> usize {
        let registry = self.scope.shared.registry();
        registry
            .values()
            .filter(|(c, _)| c.group().is_descendant_of(&self.scope.group))
            .map(|(c, _)| c.counts.bytes.load(Ordering::Relaxed))
            .fold(0usize, usize::saturating_add)
    }

    /// The smallest `max` on the way from this level to the global one.
    fn memory_limit(&self) -> MemoryLimit {
        let mut limit = self.scope.group.counter().max();
        let mut p = self.scope.parent.as_deref();
        while let Some(s) = p {
            limit = limit.min(s.group.counter().max());
            p = s.parent.as_deref();
        }
        if limit >= COUNTER_MAX { MemoryLimit::Infinite } else { MemoryLimit::Finite(limit) }
    }
}

impl fmt::Debug for ChargeTreePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.scope.group.counter();
        f.debug_struct("ChargeTreePool")
            .field("path", &self.path())
            .field("usage", &c.usage())
            .field("max", &c.max())
            .field("high", &c.high())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ChargeTreePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.scope.group.counter();
        write!(f, "chargetree '{}'(reserved: {}", self.path(), human_readable_size(self.reserved()))?;
        if c.max() < COUNTER_MAX {
            write!(f, ", max: {}", human_readable_size(c.max()))?;
        }
        if c.high() < COUNTER_MAX {
            write!(f, ", high: {}", human_readable_size(c.high()))?;
        }
        f.write_str(")")
    }
}

/// One consumer's statistics (a snapshot; exact at quiescence).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// `MemoryConsumer::name`.
    pub name: String,
    /// `MemoryConsumer::id`.
    pub id: usize,
    /// `MemoryConsumer::can_spill`.
    pub can_spill: bool,
    /// The level path of the consumer's group (`global/tenant/q1/ExternalSorter[0]#12`).
    pub path: String,
    /// Σ its reservations' sizes.
    pub reserved: usize,
    /// The largest `reserved` it had.
    pub peak: usize,
    /// Infallible grows forced past a limit.
    pub forced: usize,
    /// `try_grow`s refused.
    pub refused: usize,
}

impl ConsumerStats {
    fn of(c: &ConsumerState) -> Self {
        Self {
            name: c.name.clone(),
            id: c.id,
            can_spill: c.can_spill,
            path: c.path(0).to_owned(),
            reserved: c.counts.bytes.load(Ordering::Relaxed),
            peak: c.counts.peak.load(Ordering::Relaxed),
            forced: c.counts.forced.load(Ordering::Relaxed),
            refused: c.counts.refused.load(Ordering::Relaxed),
        }
    }
}

/// One level's statistics (each field read on its own).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LevelStats {
    /// The level's path.
    pub path: String,
    /// `reserved()`: Σ the reservations below it.
    pub reserved: usize,
    /// The chargetree group's usage: `reserved` plus bytes cached in per-CPU stocks.
    pub usage: usize,
    /// The group's peak usage.
    pub peak: usize,
    /// Its `max` (`COUNTER_MAX` for none).
    pub max: usize,
    /// Its `high` (`COUNTER_MAX` for none).
    pub high: usize,
    /// Its guarantee (`min`).
    pub guarantee: usize,
    /// Charges its `max` refused (chargetree's fail count).
    pub refused_max: usize,
    /// Spillable `try_grow`s refused because it was above its `high`.
    pub refused_high: usize,
    /// `try_grow`s refused because they would have taken guarantees of its children.
    pub refused_guarantee: usize,
    /// Infallible grows forced past a limit, in the whole tree.
    pub forced: usize,
    /// Its events and its descendants' (`max`, `high`, `oom`, ...).
    pub events: EventCounts,
}
