//! The unit stock (Linux's `memcg_stock_pcp`): units already charged to an owner's counters,
//! cached per CPU, so that most charges and uncharges touch no shared cache line.
//!
//! Each CPU's slot is a direct-mapped table of `K` entries: an owner (a group, for the crate)
//! is cached only in entry `stock_index % K`, so finding it is one comparison whatever `K`
//! is, and `K` can be large (the default, [`STOCK_SLOTS`], is 64) without a scan. Two owners
//! whose indices collide evict each other; the group layer hands out dense indices (the
//! lowest free one, reused after a group is freed), so the first `K` live groups never
//! collide. Each entry caches at most the stock's batch, so a CPU pins at most `K × batch`
//! units (64 × 64 = 4,096 units, 16 MiB of 4 KiB pages, at the defaults), and a tree at most
//! that times the CPUs that ever cached something.
//!
//! * [`UnitStock::consume`]: take `n` units from this CPU's entry for the owner, if it has
//!   them.
//! * [`UnitStock::refill`]: give `n` pre-charged units to this CPU's entry for the owner
//!   (installing it, or evicting the owner that entry cached); above the batch, the
//!   excess goes back to the counters.
//! * [`UnitStock::uncharge_cached`]: an uncharge goes to the entry if this CPU caches the
//!   owner.
//! * [`UnitStock::drain_local`], [`UnitStock::drain_all`], [`UnitStock::drain_owner`]:
//!   return cached units to the counters and drop the entries' references: this CPU's, every
//!   CPU's entries whose owner passes a filter, or every CPU's entry for one owner (which
//!   flags only the CPUs whose entry holds that owner: an offline touches nothing when no
//!   CPU caches its group).
//!
//! Every slot is held under protocol S (`slots.rs`).
//!
//! # Invariants (those of Linux's `memcg_stock_pcp`, plus the crate's own)
//!
//! * S1: units in an entry are charged to the entry's owner and all its ancestors.
//! * S2: an entry is occupied ⇔ it owns one reference on its owner.
//! * S3: `0 ≤ units ≤ batch` after every operation.
//! * S4: an owner is only ever cached in entry `stock_index % K`; `occupied` counts the
//!   occupied entries of a slot.
//! * S5: `consume` never charges the counters and a miss is silent.
//! * S7: slots at or above `used` have no entry (`slots.rs`).
//! * S8: a slot of a provider whose contexts end has an entry only while the exit hook is
//!   registered for the context holding it (`slots.rs`).

use core::ptr::{self, NonNull};

use arrayvec::ArrayVec;

use super::slots::{Held, Payload, PerCpu};
use crate::counter::Counter;
use crate::cpu::{CpuProvider, SlotHook};
use crate::fallible::OutOfMemory;
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The default number of entries of a CPU's unit stock: owners cached at once per CPU
/// before two of them collide (Linux caches 7 memcgs per CPU and scans them; a direct-mapped
/// table of 64 costs one comparison and 1 KiB per CPU).
pub const STOCK_SLOTS: usize = 64;

/// Linux's `MEMCG_CHARGE_BATCH` since v6.1: how many units one counter walk pre-charges.
pub const DEFAULT_BATCH: usize = 64;

/// The largest batch a tree accepts ([`TreeConfig::batch`](crate::group::TreeConfig::batch)
/// clamps to it): 2^16 units cached per CPU and group at most.
pub const MAX_BATCH: usize = 1 << 16;

/// What a unit stock caches units for: something with a counter chain and a reference count
/// (a group's node). Implemented by the layer above; the stock only moves numbers and
/// references.
pub(crate) trait StockOwner {
    /// The counter the cached units are charged to (and, through it, its ancestors).
    fn counter(&self) -> &Counter<'_>;
    /// A number constant for the owner's life; the owner is cached in entry
    /// `stock_index() % K`.
    fn stock_index(&self) -> usize;
    /// Takes one more reference (the caller holds one).
    fn get_ref(&self, cpu: usize);
    /// Gives up one reference.
    ///
    /// # Safety
    ///
    /// The caller owns a reference on `this` and gives it up.
    unsafe fn put_ref(this: NonNull<Self>);
}

/// One entry: an owner and the units cached for it.
struct Entry<O> {
    owner: AtomicPtr<O>,
    units: AtomicUsize,
}

/// One CPU's table.
pub(crate) struct Units<O, const K: usize> {
    /// Occupied entries (S4); owner-written, read racily by drainers' flagging passes.
    occupied: AtomicUsize,
    entries: [Entry<O>; K],
}

impl<O, const K: usize> Payload for Units<O, K> {
    #[inline]
    fn is_empty(&self) -> bool {
        // ORDERING: Relaxed; a racy check (drainers) or one made visible by an Acquire load
        // of `busy` (`is_drained`).
        self.occupied.load(Ordering::Relaxed) == 0
    }
}

/// Units and references taken out of a table, returned to the counters after the slot is
/// released (so slot critical sections stay short).
type Taken<O, const K: usize> = ArrayVec<(NonNull<O>, usize), K>;

/// Every CPU's unit stock.
pub(crate) struct UnitStock<P, O, const K: usize> {
    cpus: PerCpu<P, Units<O, K>>,
    batch: usize,
    /// The exit hook of the tree these stocks belong to (see `slots.rs`), set by `bind`.
    hook: *const SlotHook,
}

// SAFETY: the owner pointers in the entries each own a reference (sendable like the owner's
// handle, which `O: Sync` stands for); every shared access goes through protocol S; `hook`
// points at a `SlotHook` that outlives the stock (`bind`) and is only passed to the provider.
unsafe impl<P: CpuProvider, O: Sync, const K: usize> Send for UnitStock<P, O, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, O: Sync, const K: usize> Sync for UnitStock<P, O, K> {}

impl<P: CpuProvider, O: StockOwner, const K: usize> UnitStock<P, O, K> {
    /// `count` CPU slots with `batch` units per entry at most. `batch == 0` disables the
    /// stock (every operation then misses).
    pub(crate) fn try_new(count: usize, batch: usize) -> Result<Self, OutOfMemory> {
        let cpus = PerCpu::try_new(count, || Units {
            occupied: AtomicUsize::new(0),
            entries: core::array::from_fn(|_| Entry {
                owner: AtomicPtr::new(ptr::null_mut()),
                units: AtomicUsize::new(0),
            }),
        })?;
        Ok(Self { cpus, batch, hook: ptr::null() })
    }

    /// Names the provider and the exit hook that drains a context's slot when it ends.
    ///
    /// # Safety
    ///
    /// Both outlive the stock, and the hook drains this stock's slot of the context that
    /// runs it ([`UnitStock::drain_own`]).
    pub(crate) unsafe fn bind(me: *mut Self, provider: *const P, hook: *const SlotHook) {
        // SAFETY: forwarded; `me` is the stock's final address, unique for now.
        unsafe {
            PerCpu::bind(ptr::addr_of_mut!((*me).cpus), provider);
            ptr::addr_of_mut!((*me).hook).write(hook);
        }
    }

    /// The batch: the most units an entry caches.
    #[inline(always)]
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    #[inline(always)]
    fn entry<'a>(t: &'a Held<'_, P, Units<O, K>>, owner: &O) -> &'a Entry<O> {
        &t.entries[owner.stock_index() % K]
    }

    /// Takes `n` units for `owner` from this CPU's entry. Never touches the counters.
    #[inline(always)]
    pub(crate) fn consume(&self, cpu: Option<usize>, owner: &O, n: usize) -> bool {
        let Some(t) = self.cpus.enter(cpu) else { return false };
        let e = Self::entry(&t, owner);
        // ORDERING: Relaxed; entries are only touched by the slot's holder (protocol S).
        if e.owner.load(Ordering::Relaxed).cast_const() == ptr::from_ref(owner) {
            let u = e.units.load(Ordering::Relaxed);
            // Also refuses `n > batch`: an entry never holds more (S3).
            if u >= n {
                e.units.store(u - n, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Uncharges `n` of `owner` into this CPU's entry if it caches `owner` (the excess above
    /// the batch goes to the counters); `false` if it does not (the caller uncharges the
    /// counters).
    #[inline(always)]
    pub(crate) fn uncharge_cached(&self, cpu: Option<usize>, owner: &O, n: usize) -> bool {
        let Some(t) = self.cpus.enter(cpu) else { return false };
        let e = Self::entry(&t, owner);
        // ORDERING: Relaxed; slot held (protocol S).
        if e.owner.load(Ordering::Relaxed).cast_const() != ptr::from_ref(owner) {
            return false;
        }
        let u = e.units.load(Ordering::Relaxed);
        // `u ≤ batch` (S3), so this cannot wrap.
        if n <= self.batch - u {
            e.units.store(u + n, Ordering::Relaxed);
            return true;
        }
        if n > self.batch {
            // More than an entry can hold: all of it goes to the counters.
            return false;
        }
        e.units.store(self.batch, Ordering::Relaxed);
        drop(t);
        // Above the batch: the excess goes back to the counters (`batch - u < n ≤ batch`).
        owner.counter().uncharge_counted(n - (self.batch - u));
        true
    }

    /// Gives `n` units, already charged to `owner`'s counters, to this CPU's stock. What does
    /// not fit (above the batch, no slot, nested context, a closed stock) is uncharged from
    /// the counters. The caller holds a reference on `owner`.
    pub(crate) fn refill(&self, cpu: Option<usize>, owner: NonNull<O>, n: usize) {
        // SAFETY: the caller holds a reference on `owner`.
        let o = unsafe { owner.as_ref() };
        if n <= self.batch {
            self.cpus.note_used(cpu);
        }
        let t = match self.cpus.enter(cpu) {
            Some(t) if n <= self.batch => t,
            _ => return o.counter().uncharge_counted(n),
        };
        // Checked inside the critical section, never before it (see `PerCpu::close`). A
        // context whose end could not be watched caches nothing either: nothing would
        // drain it then.
        // SAFETY: `bind` set the hook, which outlives the stock.
        if t.is_closed() || !t.ensure_exit_hook(unsafe { &*self.hook }) {
            drop(t);
            return o.counter().uncharge_counted(n);
        }
        let e = Self::entry(&t, o);
        // ORDERING: Relaxed; slot held (protocol S).
        let cached = e.owner.load(Ordering::Relaxed);
        if cached == owner.as_ptr() {
            let u = e.units.load(Ordering::Relaxed) + n;
            let keep = u.min(self.batch);
            e.units.store(keep, Ordering::Relaxed);
            drop(t);
            if u > keep {
                o.counter().uncharge_counted(u - keep);
            }
            return;
        }
        let evicted = NonNull::new(cached).map(|c| (c, e.units.load(Ordering::Relaxed)));
        if evicted.is_none() {
            t.occupied.store(t.occupied.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        // The entry's reference (S2). The caller holds one, so a plain get is legal.
        o.get_ref(t.cpu());
        e.owner.store(owner.as_ptr(), Ordering::Relaxed);
        e.units.store(n, Ordering::Relaxed);
        drop(t);
        if let Some((c, u)) = evicted {
            // SAFETY: the evicted entry's reference was moved to us with its units.
            unsafe { give_back(c, u) };
        }
    }

    /// Returns this CPU's cached units to the counters and drops its entries' references.
    /// Returns the units returned (0 if the slot is busy or being drained).
    pub(crate) fn drain_local(&self, cpu: Option<usize>) -> usize {
        let Some(t) = self.cpus.enter(cpu) else { return 0 };
        let taken = take_entries(&t, |_| true);
        drop(t);
        give_back_all(taken)
    }

    /// The owner of slot `cpu` drains it for good (its context goes away: the exit hook).
    pub(crate) fn drain_own(&self, cpu: usize) {
        let taken = self.cpus.drain_own(cpu, |t| take_entries(t, |_| true));
        give_back_all(taken);
    }

    /// Takes every cached entry whose owner satisfies `filter` from every CPU, idle ones
    /// included (protocol S, drainer side), and returns the units to the counters. `None` if
    /// another drain was under way (this caller does not wait for it), else the units
    /// returned. CPUs inside a stock operation at that moment are skipped.
    pub(crate) fn drain_all(&self, filter: impl Fn(&O) -> bool) -> Option<usize> {
        let mut units = 0;
        self.cpus.drain_all(
            |t| !t.is_empty(),
            |t| take_entries(t, &filter),
            |taken| units += give_back_all(taken),
        )?;
        Some(units)
    }

    /// [`UnitStock::drain_all`] for one owner: flags only the CPUs whose entry for it holds
    /// it (a pointer comparison), so a drain for an owner no CPU caches costs no barrier.
    pub(crate) fn drain_owner(&self, owner: &O) -> Option<usize> {
        let i = owner.stock_index() % K;
        let me = ptr::from_ref(owner).cast_mut();
        let mut units = 0;
        self.cpus.drain_all(
            // ORDERING: Relaxed; a racy pre-check that compares pointers only.
            |t| t.entries[i].owner.load(Ordering::Relaxed) == me,
            |t| take_entry_if(t, i, me),
            |taken| {
                if let Some((c, u)) = taken {
                    units += u;
                    // SAFETY: the entry's reference was moved to us with it.
                    unsafe { give_back(c, u) };
                }
            },
        )?;
        Some(units)
    }

    /// Sum of the units cached for `owner` on every CPU. Racy (a statistic): entries change
    /// under it; never dereferences the cached pointers.
    pub(crate) fn cached_units(&self, owner: &O) -> usize {
        let i = owner.stock_index() % K;
        let me = ptr::from_ref(owner).cast_mut();
        self.cpus
            .payloads()
            // ORDERING: Relaxed; a racy statistic.
            .filter(|t| t.entries[i].owner.load(Ordering::Relaxed) == me)
            .map(|t| t.entries[i].units.load(Ordering::Relaxed))
            .fold(0, usize::saturating_add)
    }

    /// The slots, for closing, teardown checks and statistics.
    pub(crate) fn slots(&self) -> &PerCpu<P, Units<O, K>> {
        &self.cpus
    }
}

/// Empties the entries of table `t` whose owner satisfies `filter`. The caller holds the
/// slot (as its owner or as the drainer).
fn take_entries<O, const K: usize>(t: &Units<O, K>, filter: impl Fn(&O) -> bool) -> Taken<O, K> {
    let mut taken = Taken::new();
    // ORDERING: Relaxed; the slot is held (protocol S) for every access below.
    if t.occupied.load(Ordering::Relaxed) == 0 {
        return taken;
    }
    for e in &t.entries {
        let Some(o) = NonNull::new(e.owner.load(Ordering::Relaxed)) else { continue };
        // SAFETY: the entry owns a reference on `o` and the slot is held, so nobody can drop
        // that reference meanwhile: the owner is alive.
        if !filter(unsafe { o.as_ref() }) {
            continue;
        }
        taken.push((o, e.units.load(Ordering::Relaxed)));
        e.owner.store(ptr::null_mut(), Ordering::Relaxed);
        e.units.store(0, Ordering::Relaxed);
    }
    t.occupied.store(t.occupied.load(Ordering::Relaxed) - taken.len(), Ordering::Relaxed);
    taken
}

/// Empties entry `i` of table `t` if it caches `me`. The caller holds the slot.
fn take_entry_if<O, const K: usize>(t: &Units<O, K>, i: usize, me: *mut O) -> Option<(NonNull<O>, usize)> {
    let e = &t.entries[i];
    // ORDERING: Relaxed; the slot is held (protocol S).
    if e.owner.load(Ordering::Relaxed) != me {
        return None;
    }
    let u = e.units.load(Ordering::Relaxed);
    e.owner.store(ptr::null_mut(), Ordering::Relaxed);
    e.units.store(0, Ordering::Relaxed);
    t.occupied.store(t.occupied.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    Some((NonNull::new(me)?, u))
}

/// Uncharges `units` of `owner` and puts the entry's reference on it.
///
/// # Safety
///
/// The caller owns the reference of an entry that cached `owner` with `units`.
unsafe fn give_back<O: StockOwner>(owner: NonNull<O>, units: usize) {
    // SAFETY: the entry's reference keeps the owner alive until the put below.
    unsafe { owner.as_ref() }.counter().uncharge_counted(units);
    // SAFETY: that reference, given up.
    unsafe { O::put_ref(owner) };
}

/// [`give_back`] for every entry taken. Returns the units.
fn give_back_all<O: StockOwner, const K: usize>(taken: Taken<O, K>) -> usize {
    let mut units = 0;
    for (o, u) in taken {
        units += u;
        // SAFETY: each entry's reference was moved to us with it.
        unsafe { give_back(o, u) };
    }
    units
}
