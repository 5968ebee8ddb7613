//! A registered consumer's state and the per-thread cache that finds it without a lock.
//!
//! `MemoryPool::grow`/`shrink`/`try_grow` receive a reservation, whose consumer has only a
//! process-unique id. The pool keeps `id → ConsumerState` in one mutex-protected map (taken
//! at `register`/`unregister` and for statistics), and each thread keeps the last
//! [`CACHE_SLOTS`] states it used, keyed by (pool, consumer id). An operator's reservations
//! are used by the task that runs it, so after its first operation on a thread a consumer is
//! found in that thread's cache: no lock, no shared write. Consumer ids are never reused and
//! a consumer registers with one pool, so an entry can never answer for another consumer;
//! an entry left behind by an unregistered consumer is only memory (it keeps that
//! consumer's offline group referenced until the entry is evicted or the thread exits).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chargetree::group::Group;

/// Consumers each thread remembers.
pub(crate) const CACHE_SLOTS: usize = 8;

/// A level on a consumer's path: the consumer's own group, the spillable/unspillable
/// group, the query, the tenant, ..., the global root.
#[derive(Clone)]
pub(crate) struct Level {
    pub(crate) group: Group,
    pub(crate) info: Arc<LevelInfo>,
}

/// What the pool knows of a level beyond its chargetree counter.
pub(crate) struct LevelInfo {
    /// `global/tenant-a/q1` style, for error messages.
    pub(crate) path: String,
    /// Σ the guarantees (`min`) of this level's child groups that are online.
    pub(crate) children_guarantee: AtomicUsize,
    /// Spillable `try_grow`s refused because this level was above its `high`.
    pub(crate) refused_high: AtomicUsize,
    /// `try_grow`s refused because they would have taken a sibling's guarantee here.
    pub(crate) refused_guarantee: AtomicUsize,
}

impl LevelInfo {
    pub(crate) fn new(path: String) -> Arc<Self> {
        Arc::new(Self {
            path,
            children_guarantee: AtomicUsize::new(0),
            refused_high: AtomicUsize::new(0),
            refused_guarantee: AtomicUsize::new(0),
        })
    }
}

/// One registered `MemoryConsumer`.
pub(crate) struct ConsumerState {
    pub(crate) id: usize,
    pub(crate) name: String,
    pub(crate) can_spill: bool,
    /// `levels[0]` is the consumer's own group; the last is the global root.
    pub(crate) levels: Box<[Level]>,
    pub(crate) counts: Counts,
}

/// A consumer's numbers, written by its reservations' operations: on cache lines of their
/// own, so that consumers used by different threads never write one line (two states
/// allocated side by side would otherwise share one).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Counts {
    /// Σ the sizes of the consumer's reservations, as the pool was told them.
    pub(crate) bytes: AtomicUsize,
    pub(crate) peak: AtomicUsize,
    /// Bytes of infallible `grow`s that no counter could hold (above `COUNTER_MAX`): part
    /// of `bytes`, charged nowhere, given back first by `shrink`.
    pub(crate) unaccounted: AtomicUsize,
    /// Infallible `grow`s forced past a limit.
    pub(crate) forced: AtomicUsize,
    /// `try_grow`s refused.
    pub(crate) refused: AtomicUsize,
}

impl ConsumerState {
    #[inline]
    pub(crate) fn group(&self) -> &Group {
        &self.levels[0].group
    }

    /// Records `n` more bytes and raises the peak.
    #[inline]
    pub(crate) fn add_bytes(&self, n: usize) {
        let c = &self.counts;
        // ORDERING: Relaxed; statistics. The RMW makes concurrent reservations of one
        // consumer add up exactly; the value is exact once they are quiescent.
        let now = c.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        // Read first: the peak only moves while the consumer grows to a new high.
        if now > c.peak.load(Ordering::Relaxed) {
            c.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Takes `n` bytes off the record; returns how many were there (`n`, unless the caller
    /// shrinks more than it grew, which only a direct caller of the pool can do: then the
    /// record is clamped at 0).
    #[inline]
    pub(crate) fn sub_bytes(&self, n: usize) -> usize {
        let c = &self.counts;
        // ORDERING: Relaxed; statistics. One RMW: reservations never shrink more than they
        // hold, so the subtraction does not wrap for DataFusion's calls; a wrap by a direct
        // caller is undone at once (a concurrent reader may see it in between).
        let prev = c.bytes.fetch_sub(n, Ordering::Relaxed);
        if prev >= n {
            return n;
        }
        c.bytes.fetch_add(n - prev, Ordering::Relaxed);
        prev
    }

    /// Takes up to `n` bytes off `unaccounted`; returns how many.
    #[inline]
    pub(crate) fn take_unaccounted(&self, n: usize) -> usize {
        let u = &self.counts.unaccounted;
        // ORDERING: Relaxed; only ever non-zero after a grow above COUNTER_MAX.
        if u.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        match u.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n))) {
            Ok(prev) | Err(prev) => prev.min(n),
        }
    }

    /// The path of level `i`.
    pub(crate) fn path(&self, i: usize) -> &str {
        &self.levels[i].info.path
    }
}

struct Slot {
    pool: usize,
    id: usize,
    state: Arc<ConsumerState>,
}

struct Cache {
    slots: [Option<Slot>; CACHE_SLOTS],
    next: usize,
}

thread_local! {
    static CACHE: RefCell<Cache> =
        const { RefCell::new(Cache { slots: [const { None }; CACHE_SLOTS], next: 0 }) };
}

/// Runs `f` on the cached state of consumer `id` of pool `pool`, if this thread has it.
/// `Err(f)` gives `f` back on a miss (or while the cache is unavailable: during thread
/// teardown).
#[inline]
pub(crate) fn with_cached<R, F: FnOnce(&ConsumerState) -> R>(pool: usize, id: usize, f: F) -> Result<R, F> {
    let mut f = Some(f);
    let hit = CACHE.try_with(|cell| {
        // A shared borrow: `f` may look the cache up again (nothing does today).
        let cache = cell.try_borrow().ok()?;
        let slot = cache.slots.iter().flatten().find(|s| s.id == id && s.pool == pool)?;
        let f = f.take().expect("taken once");
        Some(f(&slot.state))
    });
    match hit {
        Ok(Some(r)) => Ok(r),
        _ => Err(f.take().expect("not taken on a miss")),
    }
}

/// Remembers `state` on this thread, evicting round-robin.
pub(crate) fn remember(pool: usize, state: Arc<ConsumerState>) {
    let evicted = CACHE.try_with(|cell| {
        let mut cache = cell.try_borrow_mut().ok()?;
        let i = cache.next;
        cache.next = (i + 1) % CACHE_SLOTS;
        cache.slots[i].replace(Slot { pool, id: state.id, state })
    });
    // Dropped outside the borrow (dropping a group handle never calls back, but this costs
    // nothing).
    drop(evicted);
}

/// Forgets consumer `id` of pool `pool` on this thread (the unregistering one; other
/// threads' entries age out).
pub(crate) fn forget(pool: usize, id: usize) {
    let gone = CACHE.try_with(|cell| {
        let mut cache = cell.try_borrow_mut().ok()?;
        let slot =
            cache.slots.iter_mut().find(|s| s.as_ref().is_some_and(|s| s.id == id && s.pool == pool))?;
        slot.take()
    });
    drop(gone);
}
