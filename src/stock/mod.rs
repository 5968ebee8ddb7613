//! The per-CPU charge stock (Linux's `memcg_stock_pcp`): units already charged to the
//! counters, cached per CPU so that most charges and uncharges touch no shared cache line.
//!
//! Each CPU slot caches up to `K` groups (default [`STOCK_SLOTS`]), each with a number of
//! pre-charged units (at most the tree's batch). Every occupied entry owns one reference to
//! its group (the 2020 rule: references follow pointers, charges own none).
//!
//! * `consume(group, n)`: take `n` units from this CPU's entry for `group`, if it has them.
//! * `refill(group, n)`: give `n` pre-charged units to this CPU's entry for `group`
//!   (installing it in a free entry, or evicting the next entry in round-robin order);
//!   anything above the batch goes back to the counters.
//! * `uncharge_cached(group, n)`: an uncharge goes to the entry if this CPU caches `group`.
//! * `drain_local`: return this CPU's units to the counters and drop its references.
//! * `drain_all(subtree)`: the same for every CPU, taking the entries of `subtree`'s groups
//!   even from CPUs that are idle (a remote steal); a caller that finds another drain under
//!   way returns at once instead of piling up.
//!
//! # Protocol S (owner vs remote drainer)
//!
//! Every slot has two flags: `busy`, written only by the slot's owner (the context the
//! [`CpuProvider`] hands the index to), and `steal`, written only
//! by a drainer (one at a time: `drain_all` holds the tree's drain flag). The entries are
//! touched by whoever holds the slot: the owner between `enter` and `exit`, the drainer
//! between its heavy barrier (having seen `busy == 0`) and clearing `steal`.
//!
//! | step | owner (`enter` … `exit`) | drainer (`steal`) |
//! |------|--------------------------|-------------------|
//! | 1 | `busy == 1` already → nested context (an interrupt inside an operation): miss, use the counters | `steal = 1` on every slot with an occupied entry |
//! | 2 | `busy = 1` | heavy barrier (one `membarrier`, or `fence(SeqCst)`), once for all slots |
//! | 3 | light barrier (compiler fence, or `fence(SeqCst)`) | per slot: `busy == 1` → owner inside: `steal = 0`, skip the slot |
//! | 4 | `steal == 1` → `busy = 0`, miss (use the counters) | else take the matching entries (units and references) |
//! | 5 | use the entries | `steal = 0` (Release) |
//! | 6 | `busy = 0` (Release) | uncharge the units taken, put the references taken |
//!
//! Steps 2–3 of each side form a store-buffering pair: the barriers guarantee that the owner
//! sees `steal == 1` or the drainer sees `busy == 1`, so they never use the entries at the
//! same time. The `Release` stores pair with the other side's `Acquire` loads of the same
//! flag, ordering the entry accesses of one holder before the next. The barrier choice
//! (asymmetric with `membarrier`, or symmetric) is made once per tree; see `barrier.rs`.
//!
//! The owner's fast path therefore costs a few plain loads and stores and no atomic
//! read-modify-write; a drain costs one system call however many CPUs it visits.
//!
//! Visitors of every slot (drains, the teardown's `is_drained`, statistics) stop at a
//! high-water mark `used` of the slots that ever had an entry, which an owner raises before
//! step 2 when it may install one (`note_used`), and a visitor loads after its heavy
//! barrier. It is a third store-buffering pair beside `busy`/`steal` and `busy`/`closed`: so
//! a provider with thousands of slots costs a process that uses three of them three slots
//! per drain.
//!
//! # Invariants (those of Linux's `memcg_stock_pcp`, plus the crate's own)
//!
//! * S1: units in an entry are charged to the entry's group and all its ancestors.
//! * S2: an entry is occupied ⇔ it owns one reference on its group.
//! * S3: `0 ≤ units ≤ batch` after every operation.
//! * S5: `consume` never charges the counters and a miss is silent.
//! * S6: an occupied object stock owns `1 + refs` references on its `ObjGroup` (its own and
//!   `refs ≤ 2 × OBJ_REF_BATCH` spares for objects); an empty one owns none and has
//!   `refs == 0`. A drain takes the spares with the entry and puts them all at once.
//! * S7: slots at or above `used` have no entry.
//! * S8: a slot of a provider whose contexts end (`ThreadCpus`: threads exit) has an entry
//!   only while the stocks' exit hook is registered for the context holding it, which runs
//!   the hook when it gives the index up and drains the slot as its owner (Linux's
//!   `memcg_hotplug_cpu_dead`); a context whose hook cannot be registered caches nothing.
//!   The tree's drop forgets the hooks after its last drain (protocol X in `cpu.rs`).

pub(crate) mod barrier;

use alloc_crate::boxed::Box;
use core::ptr::{self, NonNull};

use arrayvec::ArrayVec;

use crate::cpu::{CpuProvider, SlotHook};
use crate::fallible::{OutOfMemory, try_boxed_slice};
use crate::group::node::Node;
use crate::objgroup::ObjNode;
use crate::padded::CachePadded;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// The default number of groups a CPU's stock caches (Linux caches 7 in one cache line; 8
/// entries of a pointer and a word fill two 64-byte lines or one 128-byte pair).
pub const STOCK_SLOTS: usize = 8;

/// Linux's `MEMCG_CHARGE_BATCH` since v6.1: how many units one counter walk pre-charges.
pub const DEFAULT_BATCH: usize = 64;

/// The largest batch a tree accepts ([`TreeConfig::batch`](crate::group::TreeConfig::batch)
/// clamps to it): 2^16 units cached per CPU and group at most.
pub const MAX_BATCH: usize = 1 << 16;

/// How many references on its `ObjGroup` a CPU's object stock takes at once to hand out with
/// [`ObjGroup::charge_object`](crate::objgroup::ObjGroup::charge_object) (one atomic
/// read-modify-write per batch instead of one per object). Objects' references given back
/// with [`ObjGroup::uncharge_object`](crate::objgroup::ObjGroup::uncharge_object) on a CPU
/// that caches the same `ObjGroup` are kept there, and a batch goes back to the count once
/// more than two batches are cached, so a CPU holds at most `2 × OBJ_REF_BATCH` spare
/// references. Smaller under loom, so the models cross the batch boundaries.
pub const OBJ_REF_BATCH: usize = if cfg!(loom) { 1 } else { 32 };

/// The owner-written part of one CPU's stock.
struct Owned<P: CpuProvider, const K: usize> {
    busy: AtomicUsize,
    /// Round-robin eviction cursor (the 2026 `drain_idx` fix for random eviction).
    next_victim: AtomicUsize,
    /// Whether the stocks' exit hook is registered with the provider for the context that
    /// holds this slot (see [`Stocks::ensure_exit_hook`]). Owner-written.
    hooked: AtomicBool,
    groups: [AtomicPtr<Node<P, K>>; K],
    units: [AtomicUsize; K],
}

/// The owner-written part of one CPU's object stock (Linux's `obj_stock_pcp`): one cached
/// `ObjGroup`, the bytes it has charged but not handed out, and spare references on it for
/// objects (see [`OBJ_REF_BATCH`]). It has its own `busy` flag (Linux gives the object stock
/// its own lock), so a byte charge can use the unit stock underneath without seeing itself
/// as a nested context.
struct ObjOwned<P: CpuProvider, const K: usize> {
    busy: AtomicUsize,
    obj: AtomicPtr<ObjNode<P, K>>,
    bytes: AtomicUsize,
    /// Spare references on `obj` beyond the entry's own (S6).
    refs: AtomicUsize,
}

/// The drainer-written flags: one per stock.
struct Steal {
    units: AtomicBool,
    objs: AtomicBool,
}

/// One CPU's stock.
pub(crate) struct CpuStock<P: CpuProvider, const K: usize> {
    owned: CachePadded<Owned<P, K>>,
    obj: CachePadded<ObjOwned<P, K>>,
    /// Written by drainers only; read by the owner on every operation, so it has a line of
    /// its own that stays shared in the owner's cache.
    steal: CachePadded<Steal>,
}

/// Units and references taken out of a stock, returned to the counters after the slot is
/// released (so slot critical sections stay short).
type Taken<P, const K: usize> = ArrayVec<(NonNull<Node<P, K>>, usize), K>;

/// Every CPU's stock, plus the drain flag.
pub(crate) struct Stocks<P: CpuProvider, const K: usize> {
    cpus: Box<[CpuStock<P, K>]>,
    pub(crate) batch: usize,
    /// Bytes per unit, for the object stock (the tree's `unit_bytes`).
    unit_bytes: usize,
    asymmetric: bool,
    draining: AtomicBool,
    /// Set when the tree is dropped: refills stop caching (nothing could drain them later).
    closed: AtomicBool,
    /// Heavy barriers that failed (`membarrier` refused): drains that took nothing.
    barrier_failures: AtomicUsize,
    /// High-water mark of the slots that ever had an entry: slots at and above it are empty,
    /// so drains and checks visit only `cpus[..used]` (a process with a few threads pays
    /// for a few slots, not for the provider's `count`). Raised before an owner enters to
    /// install (see [`Stocks::note_used`]).
    used: CachePadded<AtomicUsize>,
    /// The tree's provider (it lives beside the stocks and as long), for exit hooks; set by
    /// [`Stocks::bind`].
    provider: *const P,
    /// Run by a context that cached something here when it goes away (a thread's exit):
    /// drains that context's slot. Its data is these stocks; set by [`Stocks::bind`].
    exit_hook: SlotHook,
}

impl<P: CpuProvider, const K: usize> Stocks<P, K> {
    /// Fixes the stocks' address for the exit hook and names the provider. Called once the
    /// stocks are at their final address, before they are shared.
    ///
    /// # Safety
    ///
    /// `provider` outlives the stocks, and the stocks do not move after this.
    pub(crate) unsafe fn bind(&mut self, provider: *const P) {
        self.provider = provider;
        let me = ptr::from_mut(self).cast_const().cast::<()>();
        self.exit_hook.set_data(me);
    }

    /// The exit hook: the context that holds `cpu` goes away; give its entries back.
    ///
    /// # Safety
    ///
    /// `data` is a bound `Stocks<P, K>` that is alive (its tree unwatches before freeing it),
    /// and the caller is the context that holds `cpu`, giving it up.
    unsafe fn run_exit_hook(data: *const (), cpu: usize) {
        // SAFETY: the caller's obligations.
        let stocks = unsafe { &*data.cast::<Self>() };
        stocks.drain_own(cpu);
    }

    /// Before an owner installs an entry in slot `s` (index `cpu`), inside its critical
    /// section: makes sure the context will give it back when it goes away. `false`: the
    /// provider cannot take the hook (the thread uses too many trees at once), so nothing
    /// may be cached for this context.
    #[inline]
    fn ensure_exit_hook(&self, s: &CpuStock<P, K>, cpu: usize) -> bool {
        // ORDERING: Relaxed; owner-only flag.
        if s.owned.hooked.load(Ordering::Relaxed) {
            return true;
        }
        // SAFETY: the provider lives as long as the stocks (`bind`); the caller holds `cpu`;
        // the hook stays valid until `unwatch_exits` (the tree's drop) has returned for it.
        match unsafe { (*self.provider).watch_exit(cpu, NonNull::from(&self.exit_hook)) } {
            // A provider whose contexts never end: nothing to watch, nothing to ask again.
            None | Some(true) => {
                s.owned.hooked.store(true, Ordering::Relaxed);
                true
            }
            Some(false) => false,
        }
    }

    /// The tree is going away: forget the exit hooks of every slot (waiting for one that
    /// runs). After the stocks were closed and drained: no new hook can be registered.
    pub(crate) fn unwatch_exits(&self) {
        // ORDERING: Relaxed; after `close`'s heavy barrier and the drains, no owner raises it.
        let used = self.used.load(Ordering::Relaxed).min(self.cpus.len());
        for cpu in 0..used {
            // SAFETY: the provider lives as long as the stocks; the hook was registered (if
            // at all) for these slots only.
            unsafe { (*self.provider).unwatch_exit(cpu, NonNull::from(&self.exit_hook)) };
        }
    }

    /// The owner of slot `cpu` drains it for good (it goes away): both stocks, retried while
    /// a remote drain holds the slot (which would otherwise skip it, seeing us busy).
    fn drain_own(&self, cpu: usize) {
        let Some(s) = self.slot(Some(cpu)) else { return };
        loop {
            if self.enter_on(&s.obj.busy, &s.steal.objs) {
                let taken = take_obj_if(s, |_| true);
                Self::exit_on(&s.obj.busy);
                give_back_obj(taken);
                break;
            }
            crate::sync::spin_loop();
        }
        loop {
            if self.enter(s) {
                let taken = take_entries(s, |_| true);
                // ORDERING: Relaxed; owner-only flag, the next holder of `cpu` registers anew.
                s.owned.hooked.store(false, Ordering::Relaxed);
                self.exit(s);
                give_back(taken);
                break;
            }
            crate::sync::spin_loop();
        }
    }

    /// `count` CPU slots with `batch` units per group at most. `batch == 0` disables stocks
    /// (every operation then misses: `n > 0 = batch`, and `n == 0` finds nothing to take).
    pub(crate) fn try_new(count: usize, batch: usize, unit_bytes: usize) -> Result<Self, OutOfMemory> {
        // Exactly `count` slots, even with stocks disabled: `slot` relies on it.
        let cpus = try_boxed_slice(count, |_| CpuStock {
            owned: CachePadded::new(Owned {
                busy: AtomicUsize::new(0),
                next_victim: AtomicUsize::new(0),
                hooked: AtomicBool::new(false),
                groups: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
                units: core::array::from_fn(|_| AtomicUsize::new(0)),
            }),
            obj: CachePadded::new(ObjOwned {
                busy: AtomicUsize::new(0),
                obj: AtomicPtr::new(ptr::null_mut()),
                bytes: AtomicUsize::new(0),
                refs: AtomicUsize::new(0),
            }),
            steal: CachePadded::new(Steal { units: AtomicBool::new(false), objs: AtomicBool::new(false) }),
        })?;
        Ok(Self {
            cpus,
            batch,
            unit_bytes,
            asymmetric: !cpus_is_empty_or_loom(count) && barrier::asymmetric_available(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            barrier_failures: AtomicUsize::new(0),
            used: CachePadded::new(AtomicUsize::new(0)),
            provider: ptr::null(),
            exit_hook: SlotHook::new(Self::run_exit_hook, ptr::null()),
        })
    }

    /// Raises the high-water mark to cover slot `cpu`, before its owner enters to install an
    /// entry. Visitors of `cpus[..used]` that must see every entry (`is_drained`, the tree's
    /// drop) load `used` after their heavy barrier (a remote drain loads it before: see
    /// `drain_all`); the owner stores it before the light barrier in `enter_on`. That is
    /// the Dekker pair of protocol S (the same as `busy`), so a visitor that misses the
    /// raise is one whose barrier came first, and the owner then sees its `steal` or
    /// `closed`. Off the fast paths: only refills call it, and after the first time it is
    /// one load of a line nobody writes.
    #[inline(always)]
    fn note_used(&self, cpu: Option<usize>) {
        let Some(cpu) = cpu.filter(|&c| c < self.cpus.len()) else { return };
        // ORDERING: Relaxed; published by `enter_on`'s light barrier (see above).
        if self.used.load(Ordering::Relaxed) <= cpu {
            self.used.fetch_max(cpu + 1, Ordering::Relaxed);
        }
    }

    /// The slots that ever had an entry (see `used`). A visitor that needs every entry
    /// installed before a point calls this after its heavy barrier.
    #[inline]
    fn used_slots(&self) -> &[CpuStock<P, K>] {
        // ORDERING: Relaxed; ordered after the caller's heavy barrier (see `note_used`).
        let used = self.used.load(Ordering::Relaxed).min(self.cpus.len());
        &self.cpus[..used]
    }

    /// Stops new stock entries (the tree is being dropped); the caller then drains until
    /// [`Stocks::is_drained`].
    ///
    /// Owners read `closed` only inside their critical section (after `enter`'s barrier),
    /// so this is the same Dekker pattern as `steal` in protocol S: the store here, then the
    /// heavy barrier, then (in `is_drained`) the load of each `busy`; on the owner's side
    /// the store of `busy`, the light barrier, then the load of `closed`. Either the owner
    /// sees `closed` and installs nothing, or `is_drained` sees its `busy` (or, once it has
    /// left, the entry it installed) and the caller drains again.
    ///
    /// Returns `false` if the heavy barrier failed (see [`barrier::heavy`]): then neither
    /// `is_drained` nor a drain can be trusted to see every owner, and the caller must leave
    /// the stocks as they are (their entries keep their groups alive: memory stays valid).
    #[must_use]
    pub(crate) fn close(&self) -> bool {
        // ORDERING: Relaxed store published by the heavy barrier right after it, which
        // pairs with the light barrier in the owners' `enter_on` (see above).
        self.closed.store(true, Ordering::Relaxed);
        let ok = barrier::heavy(self.asymmetric);
        if !ok {
            self.note_barrier_failure();
        }
        ok
    }

    fn note_barrier_failure(&self) {
        // ORDERING: Relaxed; a statistic.
        self.barrier_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// How many drains and closes found the heavy barrier failing and took nothing.
    pub(crate) fn barrier_failures(&self) -> usize {
        // ORDERING: Relaxed; a statistic.
        self.barrier_failures.load(Ordering::Relaxed)
    }

    /// Whether the tree is being dropped. Only meaningful to an owner inside its critical
    /// section (see [`Stocks::close`]); elsewhere a hint.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        // ORDERING: Relaxed; ordered after the owner's `busy` store by `enter_on`'s light
        // barrier, which pairs with the heavy barrier in `close`.
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether remote drains use `membarrier` (the owner's fast path has no fence).
    pub(crate) fn is_asymmetric(&self) -> bool {
        self.asymmetric
    }

    #[inline(always)]
    fn slot(&self, cpu: Option<usize>) -> Option<&CpuStock<P, K>> {
        let cpu = cpu?;
        debug_assert!(cpu < self.cpus.len(), "CpuProvider contract: index below count()");
        // SAFETY: `CpuProvider` is an unsafe trait whose contract guarantees
        // `cpu < count()`, and `cpus` has exactly `count()` slots (see `new`).
        Some(unsafe { self.cpus.get_unchecked(cpu) })
    }

    /// Step 1–4 of protocol S, owner side, on one (`busy`, `steal`) pair. `true`: the stock
    /// is ours until `exit_on`.
    #[inline(always)]
    fn enter_on(&self, busy: &AtomicUsize, steal: &AtomicBool) -> bool {
        // ORDERING: Relaxed; only this context (or one nested inside it) writes `busy`.
        if busy.load(Ordering::Relaxed) != 0 {
            return false;
        }
        busy.store(1, Ordering::Relaxed);
        barrier::light(self.asymmetric);
        // ORDERING: Acquire pairs with the drainer's Release store of `steal = 0`, so entry
        // writes of a finished drain are visible; the barrier above orders this load after
        // the `busy` store (protocol S, steps 2–4).
        if steal.load(Ordering::Acquire) {
            // ORDERING: Release, like `exit_on`'s: nothing was touched in this attempt, but a
            // Relaxed store would end the release sequence of the previous `exit_on` (a later
            // drainer reading this 0 would then not be ordered after that operation's entry
            // writes). On x86 and Arm a Release store costs what a Relaxed one does.
            busy.store(0, Ordering::Release);
            return false;
        }
        true
    }

    /// Step 6 of protocol S, owner side.
    #[inline(always)]
    fn exit_on(busy: &AtomicUsize) {
        // ORDERING: Release pairs with the drainer's Acquire load of `busy`, so a later
        // drainer sees this operation's entry writes.
        busy.store(0, Ordering::Release);
    }

    #[inline(always)]
    fn enter(&self, s: &CpuStock<P, K>) -> bool {
        self.enter_on(&s.owned.busy, &s.steal.units)
    }

    #[inline(always)]
    fn exit(&self, s: &CpuStock<P, K>) {
        Self::exit_on(&s.owned.busy);
    }

    /// Takes `n` units for `node` from this CPU's stock. Never touches the counters.
    #[inline(always)]
    pub(crate) fn consume(&self, cpu: Option<usize>, node: NonNull<Node<P, K>>, n: usize) -> bool {
        if n > self.batch {
            return false;
        }
        let Some(s) = self.slot(cpu) else { return false };
        if !self.enter(s) {
            return false;
        }
        let mut ok = false;
        for i in 0..K {
            // ORDERING: Relaxed; entries are only touched by the slot's holder (protocol S).
            if s.owned.groups[i].load(Ordering::Relaxed) == node.as_ptr() {
                let u = s.owned.units[i].load(Ordering::Relaxed);
                if u >= n {
                    s.owned.units[i].store(u - n, Ordering::Relaxed);
                    ok = true;
                }
                break;
            }
        }
        self.exit(s);
        ok
    }

    /// Gives `n` units, already charged to `node`'s counters, to this CPU's stock. What does
    /// not fit (above the batch, no slot, nested context) is uncharged from the counters.
    pub(crate) fn refill(&self, cpu: Option<usize>, node: NonNull<Node<P, K>>, n: usize) {
        // SAFETY: the caller holds a reference on `node` (it just charged it).
        let nref = unsafe { node.as_ref() };
        if n <= self.batch {
            self.note_used(cpu);
        }
        let s = match self.slot(cpu) {
            Some(s) if n <= self.batch && self.enter(s) => s,
            _ => {
                nref.counter.uncharge_counted(n);
                return;
            }
        };
        // Checked inside the critical section, never before it: see `close`. A context whose
        // end could not be watched caches nothing either: nothing would drain it then.
        let cpu_index = cpu.expect("a slot was found for it");
        if self.is_closed() || !self.ensure_exit_hook(s, cpu_index) {
            self.exit(s);
            nref.counter.uncharge_counted(n);
            return;
        }
        let mut taken: Taken<P, K> = ArrayVec::new();
        let mut excess = 0;
        let mut free = None;
        let mut found = false;
        for i in 0..K {
            // ORDERING: Relaxed; slot held (protocol S).
            let g = s.owned.groups[i].load(Ordering::Relaxed);
            if g == node.as_ptr() {
                let u = s.owned.units[i].load(Ordering::Relaxed) + n;
                let keep = u.min(self.batch);
                excess = u - keep;
                s.owned.units[i].store(keep, Ordering::Relaxed);
                found = true;
                break;
            }
            if g.is_null() && free.is_none() {
                free = Some(i);
            }
        }
        if !found {
            let i = match free {
                Some(i) => i,
                None => {
                    // ORDERING: Relaxed; owner-only cursor.
                    let v = s.owned.next_victim.load(Ordering::Relaxed) % K;
                    s.owned.next_victim.store((v + 1) % K, Ordering::Relaxed);
                    let old = s.owned.groups[v].load(Ordering::Relaxed);
                    // SAFETY: occupied entries hold non-null pointers they own a reference on.
                    let old = unsafe { NonNull::new_unchecked(old) };
                    taken.push((old, s.owned.units[v].load(Ordering::Relaxed)));
                    v
                }
            };
            // The entry's reference (S2). The caller holds one, so a plain get is legal.
            nref.refs.get(cpu.unwrap_or(0));
            s.owned.groups[i].store(node.as_ptr(), Ordering::Relaxed);
            s.owned.units[i].store(n, Ordering::Relaxed);
        }
        self.exit(s);
        if excess > 0 {
            nref.counter.uncharge_counted(excess);
        }
        give_back(taken);
    }

    /// Uncharges `n` of `node` into this CPU's stock if it caches `node` (the excess above
    /// the batch goes to the counters); returns `false` if it does not (the caller uncharges
    /// the counters).
    #[inline(always)]
    pub(crate) fn uncharge_cached(&self, cpu: Option<usize>, node: NonNull<Node<P, K>>, n: usize) -> bool {
        if n > self.batch {
            return false;
        }
        let Some(s) = self.slot(cpu) else { return false };
        if !self.enter(s) {
            return false;
        }
        for i in 0..K {
            // ORDERING: Relaxed; slot held (protocol S).
            if s.owned.groups[i].load(Ordering::Relaxed) == node.as_ptr() {
                let u = s.owned.units[i].load(Ordering::Relaxed) + n;
                if u <= self.batch {
                    s.owned.units[i].store(u, Ordering::Relaxed);
                    self.exit(s);
                    return true;
                }
                s.owned.units[i].store(self.batch, Ordering::Relaxed);
                self.exit(s);
                // Above the batch: the excess goes back to the counters.
                // SAFETY: the caller holds a reference on `node`.
                unsafe { node.as_ref() }.counter.uncharge_counted(u - self.batch);
                return true;
            }
        }
        self.exit(s);
        false
    }

    /// Returns this CPU's cached units to the counters and drops the entries' references.
    /// Returns the units returned (0 if the slot is busy or being stolen).
    pub(crate) fn drain_local(&self, cpu: Option<usize>) -> usize {
        let Some(s) = self.slot(cpu) else { return 0 };
        let mut units = 0;
        if self.enter_on(&s.obj.busy, &s.steal.objs) {
            let taken = take_obj_if(s, |_| true);
            Self::exit_on(&s.obj.busy);
            give_back_obj(taken);
        }
        if self.enter(s) {
            let taken = take_entries(s, |_| true);
            self.exit(s);
            units = give_back(taken);
        }
        units
    }

    /// Takes every cached entry whose group satisfies `filter` from every CPU, idle ones
    /// included (protocol S, drainer side), and returns the units to the counters. Returns
    /// `None` if another drain was under way (this caller does not wait for it), else the
    /// units returned. CPUs whose owner is inside an operation at that moment are skipped.
    pub(crate) fn drain_all(&self, filter: impl Fn(&Node<P, K>) -> bool) -> Option<usize> {
        // ORDERING: Acquire pairs with the Release store below of the previous drainer, so
        // drains are serialised (one steals at a time, as protocol S assumes).
        if self.draining.swap(true, Ordering::Acquire) {
            return None;
        }
        // Whatever happens below (a filter or an uncharge may panic), every flag this drain
        // set is cleared when it ends, or the stocks it flagged would stay disabled and every
        // later drain would be refused.
        let _release = DrainGuard(self);
        // Step 1: flag every slot that has an occupied entry (a racy pre-check: the pointers
        // are only compared with null here, never dereferenced).
        let mut flagged = false;
        // Slots never used have no entry. Loaded *before* the heavy barrier (unlike the
        // visitors that must see every entry, `is_drained` and the tree's drop, which load it
        // after theirs): this drain flags and visits only the slots that had been used when
        // it started. A slot used for the first time after this installs its entries after
        // the drain began, which a drain may miss anyway (as an entry installed on a flagged
        // slot after the steal). Offline and teardown, which need every entry, drain after the
        // group (or the stocks) stopped taking new ones.
        let slots = self.used_slots();
        for s in slots {
            // ORDERING: Relaxed; a hint. A slot filled after this check keeps its units.
            if s.owned.groups.iter().any(|g| !g.load(Ordering::Relaxed).is_null()) {
                // ORDERING: Relaxed; published by the heavy barrier below.
                s.steal.units.store(true, Ordering::Relaxed);
                flagged = true;
            }
            // ORDERING: Relaxed; as above.
            if !s.obj.obj.load(Ordering::Relaxed).is_null() {
                s.steal.objs.store(true, Ordering::Relaxed);
                flagged = true;
            }
        }
        let mut returned = 0;
        if flagged {
            // Step 2: one heavy barrier for all the slots. If it fails, every owner is
            // treated as busy: nothing is taken (the guard clears the flags).
            if !barrier::heavy(self.asymmetric) {
                self.note_barrier_failure();
                return Some(0);
            }
            for s in slots {
                // ORDERING: Relaxed; our own flags.
                if s.steal.objs.load(Ordering::Relaxed) {
                    // ORDERING: Acquire pairs with the owner's Release store in `exit_on`.
                    let taken = if s.obj.busy.load(Ordering::Acquire) == 0 {
                        take_obj_if(s, |o| filter(o.current_group().node()))
                    } else {
                        None
                    };
                    // ORDERING: Release pairs with the owner's Acquire load in `enter_on`.
                    s.steal.objs.store(false, Ordering::Release);
                    give_back_obj(taken);
                }
                if !s.steal.units.load(Ordering::Relaxed) {
                    continue;
                }
                // ORDERING: Acquire pairs with the owner's Release store in `exit`, so its
                // entry writes are visible before we read the entries.
                let taken = if s.owned.busy.load(Ordering::Acquire) == 0 {
                    take_entries(s, &filter)
                } else {
                    Taken::new()
                };
                // ORDERING: Release pairs with the owner's Acquire load in `enter`, so the
                // owner sees the emptied entries before using them again.
                s.steal.units.store(false, Ordering::Release);
                returned += give_back(taken);
            }
        }
        Some(returned)
    }

    /// Takes `bytes` for `obj` from this CPU's object stock; with `with_ref`, also one
    /// reference on `obj` for the caller (from the spares, topped up by a batch when
    /// empty). All or nothing.
    #[inline(always)]
    pub(crate) fn consume_obj(
        &self,
        cpu: Option<usize>,
        obj: NonNull<ObjNode<P, K>>,
        bytes: usize,
        with_ref: bool,
    ) -> bool {
        let Some(s) = self.slot(cpu) else { return false };
        if !self.enter_on(&s.obj.busy, &s.steal.objs) {
            return false;
        }
        let mut ok = false;
        // ORDERING: Relaxed; the stock is held (protocol S).
        if s.obj.obj.load(Ordering::Relaxed) == obj.as_ptr() {
            let b = s.obj.bytes.load(Ordering::Relaxed);
            if b >= bytes {
                s.obj.bytes.store(b - bytes, Ordering::Relaxed);
                if with_ref {
                    // ORDERING: Relaxed; the stock is held (protocol S).
                    let spare = match s.obj.refs.load(Ordering::Relaxed) {
                        0 => {
                            // SAFETY: the entry owns a reference on `obj` (S6) and the stock
                            // is held, so the node is alive and a plain get is legal.
                            unsafe { obj.as_ref() }.refs.get_many(cpu.unwrap_or(0), OBJ_REF_BATCH);
                            OBJ_REF_BATCH
                        }
                        n => n,
                    };
                    s.obj.refs.store(spare - 1, Ordering::Relaxed);
                }
                ok = true;
            }
        }
        Self::exit_on(&s.obj.busy);
        ok
    }

    /// Gives `bytes` (already charged to `obj`'s group in whole units) to this CPU's object
    /// stock (Linux's `refill_obj_stock`). A stock caching another `ObjGroup` is flushed
    /// first and re-seeded with `obj`'s parked remainder. With `allow_uncharge`, whole units
    /// beyond the stock's last unit are returned to the group that owns `obj` by then. Without
    /// a usable stock, the bytes are parked in `obj` (whole units uncharged).
    ///
    /// With `give_ref`, the caller also gives up one reference on `obj` (an object's): it is
    /// kept as a spare if this CPU caches `obj` and the bytes fit the fast path, else put
    /// after the bytes are dealt with. Spares above two batches go back to the count, a
    /// batch at a time.
    #[inline(always)]
    pub(crate) fn refill_obj(
        &self,
        cpu: Option<usize>,
        obj: NonNull<ObjNode<P, K>>,
        bytes: usize,
        allow_uncharge: bool,
        give_ref: bool,
    ) {
        // Fast path: this CPU caches `obj` and the bytes stay within a unit (or may exceed
        // it): one add under the stock, as `consume_obj`.
        if let Some(s) = self.slot(cpu) {
            if self.enter_on(&s.obj.busy, &s.steal.objs) {
                // ORDERING: Relaxed; the stock is held (protocol S).
                if s.obj.obj.load(Ordering::Relaxed) == obj.as_ptr() {
                    let have = s.obj.bytes.load(Ordering::Relaxed);
                    if let Some(total) = have.checked_add(bytes) {
                        if !allow_uncharge || total <= self.unit_bytes {
                            s.obj.bytes.store(total, Ordering::Relaxed);
                            let excess = if give_ref { keep_spare(s) } else { 0 };
                            Self::exit_on(&s.obj.busy);
                            if excess > 0 {
                                // SAFETY: `keep_spare` moved `excess` spare references out of
                                // the entry to us; they keep the node alive until this put.
                                unsafe { ObjNode::put_many(obj, excess) };
                            }
                            return;
                        }
                    }
                }
                Self::exit_on(&s.obj.busy);
            }
        }
        self.refill_obj_slow(cpu, obj, bytes, allow_uncharge);
        if give_ref {
            // The caller's reference, given up last: until here it kept `obj` alive for the
            // slow path's uses of it after leaving the stock.
            // SAFETY: the caller owns it and gives it up (see above).
            unsafe { ObjNode::put(obj) };
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_obj_slow(
        &self,
        cpu: Option<usize>,
        obj: NonNull<ObjNode<P, K>>,
        bytes: usize,
        allow_uncharge: bool,
    ) {
        // SAFETY: the caller holds a reference on `obj` (a handle or an object's).
        let o = unsafe { obj.as_ref() };
        self.note_used(cpu);
        let s = match self.slot(cpu) {
            Some(s) if self.enter_on(&s.obj.busy, &s.steal.objs) => s,
            _ => return o.flush_bytes(bytes),
        };
        // Checked inside the critical section, never before it: see `close`.
        // ORDERING: Relaxed; the stock is held (protocol S).
        if s.obj.obj.load(Ordering::Relaxed) != obj.as_ptr()
            && (self.is_closed() || !self.ensure_exit_hook(s, cpu.expect("a slot was found for it")))
        {
            // The tree is being dropped (or this context's end cannot be watched): do not
            // install a new entry nothing could drain.
            Self::exit_on(&s.obj.busy);
            return o.flush_bytes(bytes);
        }
        let mut allow_uncharge = allow_uncharge;
        let mut old = None;
        // ORDERING: Relaxed; the stock is held (protocol S).
        let cached = s.obj.obj.load(Ordering::Relaxed);
        let mut have = s.obj.bytes.load(Ordering::Relaxed);
        if cached != obj.as_ptr() {
            if let Some(c) = NonNull::new(cached) {
                // ORDERING: Relaxed; the stock is held (protocol S).
                let spare = s.obj.refs.load(Ordering::Relaxed);
                s.obj.refs.store(0, Ordering::Relaxed);
                old = Some(TakenObj { obj: c, bytes: have, refs: 1 + spare });
            }
            // The stock's reference (S2 for the object stock). The caller holds one.
            o.refs.get(cpu.unwrap_or(0));
            s.obj.obj.store(obj.as_ptr(), Ordering::Relaxed);
            have = o.take_charged_bytes();
            allow_uncharge = true;
        }
        let unit = self.unit_bytes;
        let (keep, units_out, stray) = match have.checked_add(bytes) {
            Some(total) if allow_uncharge && total > unit => (total % unit, total / unit, 0),
            Some(total) => (total, 0, 0),
            // An absurd uncharge: keep what the stock had, hand the request to the counters.
            None => (have, 0, bytes),
        };
        s.obj.bytes.store(keep, Ordering::Relaxed);
        Self::exit_on(&s.obj.busy);
        give_back_obj(old);
        if units_out > 0 {
            o.current_group().uncharge_counted(units_out);
        }
        if stray > 0 {
            o.flush_bytes(stray);
        }
    }

    /// Bytes cached for `obj` in every CPU's object stock (a racy statistic; never
    /// dereferences the cached pointers).
    pub(crate) fn cached_bytes(&self, obj: NonNull<ObjNode<P, K>>) -> usize {
        let mut sum = 0;
        for s in self.used_slots() {
            // ORDERING: Relaxed; racy statistic.
            if s.obj.obj.load(Ordering::Relaxed) == obj.as_ptr() {
                sum = s.obj.bytes.load(Ordering::Relaxed).saturating_add(sum);
            }
        }
        sum
    }

    /// Whether no stock has an entry and no owner is inside a stock. After [`Stocks::close`]
    /// a `true` is final: every owner that could still install an entry had its `busy` set
    /// when it read `closed == false`, so it is seen here (see `close`). Before `close`, a
    /// racy hint.
    pub(crate) fn is_drained(&self) -> bool {
        // After `close`, `used` is loaded after its heavy barrier (see `note_used`).
        self.used_slots().iter().all(|s| {
            // ORDERING: Acquire pairs with the owners' Release store in `exit_on`: with
            // `busy == 0` seen, the entries they wrote before leaving are visible below.
            s.owned.busy.load(Ordering::Acquire) == 0
                && s.obj.busy.load(Ordering::Acquire) == 0
                // ORDERING: Relaxed; made visible by the Acquire loads above.
                && s.owned.groups.iter().all(|g| g.load(Ordering::Relaxed).is_null())
                && s.obj.obj.load(Ordering::Relaxed).is_null()
        })
    }

    /// Sum of the units cached for `node` on every CPU. Racy (a statistic): entries change
    /// under it; never dereferences the cached pointers.
    pub(crate) fn cached_units(&self, node: NonNull<Node<P, K>>) -> usize {
        let mut sum = 0;
        for s in self.used_slots() {
            for i in 0..K {
                // ORDERING: Relaxed; a racy statistic.
                if s.owned.groups[i].load(Ordering::Relaxed) == node.as_ptr() {
                    sum += s.owned.units[i].load(Ordering::Relaxed);
                }
            }
        }
        sum
    }
}

/// Clears a drain's flags when the drain ends, also by unwinding.
struct DrainGuard<'a, P: CpuProvider, const K: usize>(&'a Stocks<P, K>);

impl<P: CpuProvider, const K: usize> Drop for DrainGuard<'_, P, K> {
    fn drop(&mut self) {
        // Every slot the drain flagged is below `used` (which only grows).
        for s in self.0.used_slots() {
            // ORDERING: Release, as for each slot in `drain_all` (a no-op for slots already
            // cleared there: only the drainer writes these flags, and it still holds the
            // drain flag).
            s.steal.units.store(false, Ordering::Release);
            s.steal.objs.store(false, Ordering::Release);
        }
        // ORDERING: Release pairs with the Acquire swap at the start of the next drain.
        self.0.draining.store(false, Ordering::Release);
    }
}

/// Empties the entries of `s` whose group satisfies `filter`. The caller holds the slot.
fn take_entries<P: CpuProvider, const K: usize>(
    s: &CpuStock<P, K>,
    filter: impl Fn(&Node<P, K>) -> bool,
) -> Taken<P, K> {
    let mut taken = Taken::new();
    for i in 0..K {
        // ORDERING: Relaxed; the slot is held (protocol S).
        let g = s.owned.groups[i].load(Ordering::Relaxed);
        let Some(g) = NonNull::new(g) else { continue };
        // SAFETY: the entry owns a reference on `g` and the slot is held, so nobody can drop
        // that reference meanwhile: the node is alive.
        if !filter(unsafe { g.as_ref() }) {
            continue;
        }
        taken.push((g, s.owned.units[i].load(Ordering::Relaxed)));
        s.owned.groups[i].store(ptr::null_mut(), Ordering::Relaxed);
        s.owned.units[i].store(0, Ordering::Relaxed);
    }
    taken
}

/// Uncharges the units taken and puts the references taken. Returns the units.
fn give_back<P: CpuProvider, const K: usize>(taken: Taken<P, K>) -> usize {
    let mut units = 0;
    for (g, u) in taken {
        // SAFETY: the entry's reference was moved to us with the entry.
        unsafe { g.as_ref() }.counter.uncharge_counted(u);
        units += u;
        // SAFETY: that reference, given up.
        unsafe { Node::put(g) };
    }
    units
}

/// Empties the object stock of `s` if `filter` accepts its cached `ObjGroup`. The caller
/// holds the object stock.
fn take_obj_if<P: CpuProvider, const K: usize>(
    s: &CpuStock<P, K>,
    filter: impl FnOnce(&ObjNode<P, K>) -> bool,
) -> Option<TakenObj<P, K>> {
    // ORDERING: Relaxed; the object stock is held (protocol S).
    let o = NonNull::new(s.obj.obj.load(Ordering::Relaxed))?;
    // SAFETY: the stock owns a reference on `o` and is held, so `o` is alive.
    if !filter(unsafe { o.as_ref() }) {
        return None;
    }
    let bytes = s.obj.bytes.load(Ordering::Relaxed);
    let spare = s.obj.refs.load(Ordering::Relaxed);
    s.obj.obj.store(ptr::null_mut(), Ordering::Relaxed);
    s.obj.bytes.store(0, Ordering::Relaxed);
    s.obj.refs.store(0, Ordering::Relaxed);
    Some(TakenObj { obj: o, bytes, refs: 1 + spare })
}

/// Keeps an object's reference, just given up by the owner, as a spare of the held object
/// stock of `s` (which caches that object's `ObjGroup`). Returns how many spares the caller
/// must put now: a batch once more than two are cached (S6), else none.
#[inline(always)]
fn keep_spare<P: CpuProvider, const K: usize>(s: &CpuStock<P, K>) -> usize {
    // ORDERING: Relaxed; the object stock is held (protocol S).
    let spare = s.obj.refs.load(Ordering::Relaxed) + 1;
    if spare > 2 * OBJ_REF_BATCH {
        s.obj.refs.store(spare - OBJ_REF_BATCH, Ordering::Relaxed);
        OBJ_REF_BATCH
    } else {
        s.obj.refs.store(spare, Ordering::Relaxed);
        0
    }
}

/// An object-stock entry taken out of a stock: its `ObjGroup`, the bytes it cached and the
/// references it owned (its own and the spares), all moved to the taker.
struct TakenObj<P: CpuProvider, const K: usize> {
    obj: NonNull<ObjNode<P, K>>,
    bytes: usize,
    refs: usize,
}

/// Parks the bytes of a taken object-stock entry in its `ObjGroup` (whole units uncharged)
/// and puts the entry's references (its own and the spares) at once.
fn give_back_obj<P: CpuProvider, const K: usize>(taken: Option<TakenObj<P, K>>) {
    if let Some(t) = taken {
        // SAFETY: the entry's references were moved to us with it.
        unsafe { t.obj.as_ref() }.flush_bytes(t.bytes);
        // SAFETY: those references, given up.
        unsafe { ObjNode::put_many(t.obj, t.refs) };
    }
}

/// Loom and empty providers never use the asymmetric mode.
fn cpus_is_empty_or_loom(count: usize) -> bool {
    count == 0 || cfg!(loom)
}

// SAFETY: the raw pointers in the entries each own a group reference (sendable like a
// `Group`); all shared access goes through atomics under protocol S. `provider` points at the
// tree's provider (`Send + Sync`), which lives beside the stocks.
unsafe impl<P: CpuProvider, const K: usize> Send for Stocks<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for Stocks<P, K> {}
