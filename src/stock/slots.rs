//! Per-CPU slots with an owner and a remote drainer: protocol S, once for every per-CPU cache
//! of the crate (the unit stock of `units.rs`, the object stock of the object layer).
//!
//! # Protocol S (owner vs remote drainer)
//!
//! Every slot has two flags: `busy`, written only by the slot's owner (the context the
//! [`CpuProvider`] hands the index to), and `steal`, written only by a drainer (one at a
//! time: [`PerCpu::drain_all`] holds the drain flag). The slot's payload is touched by
//! whoever holds the slot: the owner between `enter` and the end of its [`Held`], the drainer
//! between its heavy barrier (having seen `busy == 0`) and clearing `steal`.
//!
//! | step | owner ([`PerCpu::enter`] … drop of [`Held`]) | drainer ([`PerCpu::drain_all`]) |
//! |------|--------------------------|-------------------|
//! | 1 | `busy == 1` already → nested context (an interrupt inside an operation): miss, use the counters | `steal = 1` on every slot whose payload is not empty |
//! | 2 | `busy = 1` | heavy barrier (one `membarrier`, or `fence(SeqCst)`), once for all slots |
//! | 3 | light barrier (compiler fence, or `fence(SeqCst)`) | per slot: `busy == 1` → owner inside: `steal = 0`, skip the slot |
//! | 4 | `steal == 1` → `busy = 0`, miss (use the counters) | else take what the payload holds |
//! | 5 | use the payload | `steal = 0` (Release) |
//! | 6 | `busy = 0` (Release) | give back what was taken |
//!
//! Steps 2–3 of each side form a store-buffering pair: the barriers guarantee that the owner
//! sees `steal == 1` or the drainer sees `busy == 1`, so they never use the payload at the
//! same time. The `Release` stores pair with the other side's `Acquire` loads of the same
//! flag, ordering the payload accesses of one holder before the next. The barrier choice
//! (asymmetric with `membarrier`, or symmetric) is made once per array; see `barrier.rs`.
//! If the heavy barrier fails (`membarrier` refused after registration), a drain treats every
//! owner as busy and takes nothing.
//!
//! The owner's fast path therefore costs a few plain loads and stores and no atomic
//! read-modify-write; a drain costs one system call however many CPUs it visits.
//!
//! Visitors that must see every payload (the teardown's [`PerCpu::is_drained`]) stop at a
//! high-water mark `used` of the slots that ever held something, which an owner raises before
//! step 2 when it may fill its payload ([`PerCpu::note_used`]) and such a visitor loads after
//! its heavy barrier: a third store-buffering pair beside `busy`/`steal` and
//! `busy`/`closed`. A remote drain loads it before its barrier (it flags only slots used
//! when it started; a payload filled after a drain began may be missed by it anyway), so a
//! provider with thousands of slots costs a process that uses three of them three slots per
//! drain.
//!
//! Slots of a provider whose contexts end (`ThreadCpus`: threads exit) hold something only
//! while the array's exit hook is registered for the context holding them
//! ([`PerCpu::ensure_exit_hook`]); the context runs it when it gives its index up, and the
//! hook drains the slot as its owner (Linux's `memcg_hotplug_cpu_dead`). The array's owner
//! forgets the hooks ([`PerCpu::unwatch_exits`]) after its last drain (protocol X in
//! `cpu.rs`).

use alloc_crate::boxed::Box;
use core::ops::Deref;
use core::ptr::{self, NonNull};

use super::barrier;
use crate::cpu::{CpuProvider, SlotHook};
use crate::fallible::{OutOfMemory, try_boxed_slice};
use crate::padded::CachePadded;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What a slot caches, with a racy emptiness check for a drain's flagging pass.
pub(crate) trait Payload {
    /// Whether the payload holds nothing. Called by drainers without holding the slot: it
    /// must only compare pointers or numbers, never dereference anything.
    fn is_empty(&self) -> bool;
}

/// The owner-written part of one CPU's slot.
struct Owned<T> {
    busy: AtomicUsize,
    /// Whether the array's exit hook is registered for the context holding this slot.
    hooked: AtomicBool,
    payload: T,
}

/// One CPU's slot: the owner's line and the drainer's flag on a line of its own (read by the
/// owner on every operation, so it stays shared in the owner's cache).
struct Slot<T> {
    owned: CachePadded<Owned<T>>,
    steal: CachePadded<AtomicBool>,
}

/// One slot per CPU of a provider, each with a payload `T` owned under protocol S.
pub(crate) struct PerCpu<P, T> {
    slots: Box<[Slot<T>]>,
    asymmetric: bool,
    draining: AtomicBool,
    /// Set when the owner of the array goes away: owners stop filling their payloads.
    closed: AtomicBool,
    /// Heavy barriers that failed (`membarrier` refused): drains that took nothing.
    barrier_failures: AtomicUsize,
    /// High-water mark of the slots that ever held something (see the module docs).
    used: CachePadded<AtomicUsize>,
    /// The provider whose indices these are (it lives beside the array and as long); set by
    /// [`PerCpu::bind`].
    provider: *const P,
}

// SAFETY: the payloads are shared under protocol S (their own types say what they hold, and
// every access goes through atomics); `provider` points at a `Send + Sync` provider that
// lives beside the array.
unsafe impl<P: CpuProvider, T: Send> Send for PerCpu<P, T> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, T: Send> Sync for PerCpu<P, T> {}

/// The owner's hold on its slot (protocol S steps 2–5): the payload, until dropped (step 6).
pub(crate) struct Held<'a, P, T> {
    array: &'a PerCpu<P, T>,
    slot: &'a Slot<T>,
    cpu: usize,
}

impl<P, T> Deref for Held<'_, P, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.slot.owned.payload
    }
}

impl<P, T> Drop for Held<'_, P, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // ORDERING: Release pairs with the drainer's Acquire load of `busy`, so a later
        // drainer sees this operation's payload writes.
        self.slot.owned.busy.store(0, Ordering::Release);
    }
}

impl<P: CpuProvider, T> Held<'_, P, T> {
    /// The slot's index.
    #[inline(always)]
    pub(crate) fn cpu(&self) -> usize {
        self.cpu
    }

    /// Whether the array is closed: its payload must not be filled. Only meaningful while
    /// held (it is read after `enter`'s barrier, see [`PerCpu::close`]).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        // ORDERING: Relaxed; ordered after the owner's `busy` store by `enter`'s light
        // barrier, which pairs with the heavy barrier in `close`.
        self.array.closed.load(Ordering::Relaxed)
    }

    /// Before the owner fills a payload that was empty: makes sure the context will empty it
    /// when it goes away (`hook` is the owning stock's exit hook). `false`: the provider
    /// cannot take the hook (the thread uses too many caches at once), so nothing may be
    /// cached for this context.
    #[inline]
    pub(crate) fn ensure_exit_hook(&self, hook: &SlotHook) -> bool {
        // ORDERING: Relaxed; owner-only flag.
        if self.slot.owned.hooked.load(Ordering::Relaxed) {
            return true;
        }
        // SAFETY: the provider lives as long as the array (`bind`); this context holds
        // `cpu`; the hook lives in the stock that owns this array, which forgets it with
        // `unwatch_exits` before it goes away.
        match unsafe { (*self.array.provider).watch_exit(self.cpu, NonNull::from(hook)) } {
            // A provider whose contexts never end: nothing to watch, nothing to ask again.
            None | Some(true) => {
                self.slot.owned.hooked.store(true, Ordering::Relaxed);
                true
            }
            Some(false) => false,
        }
    }

    /// The context goes away (its exit hook runs): the next one to hold the slot registers
    /// anew.
    pub(crate) fn forget_exit_hook(&self) {
        // ORDERING: Relaxed; owner-only flag.
        self.slot.owned.hooked.store(false, Ordering::Relaxed);
    }
}

impl<P: CpuProvider, T: Payload> PerCpu<P, T> {
    /// `count` slots, each with a payload made by `payload`. `Err` if the allocator refuses.
    pub(crate) fn try_new(count: usize, mut payload: impl FnMut() -> T) -> Result<Self, OutOfMemory> {
        // Exactly `count` slots: `slot` relies on it.
        let slots = try_boxed_slice(count, |_| Slot {
            owned: CachePadded::new(Owned {
                busy: AtomicUsize::new(0),
                hooked: AtomicBool::new(false),
                payload: payload(),
            }),
            steal: CachePadded::new(AtomicBool::new(false)),
        })?;
        Ok(Self {
            slots,
            asymmetric: !(count == 0 || cfg!(loom)) && barrier::asymmetric_available(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            barrier_failures: AtomicUsize::new(0),
            used: CachePadded::new(AtomicUsize::new(0)),
            provider: ptr::null(),
        })
    }

    /// Names the provider.
    ///
    /// # Safety
    ///
    /// `provider` outlives the array.
    pub(crate) unsafe fn bind(me: *mut Self, provider: *const P) {
        // SAFETY: the caller's promise: `me` is the array's final address, unique for now.
        unsafe { ptr::addr_of_mut!((*me).provider).write(provider) };
    }

    /// Whether remote drains use `membarrier` (the owner's fast path has no fence).
    pub(crate) fn is_asymmetric(&self) -> bool {
        self.asymmetric
    }

    /// How many drains and closes found the heavy barrier failing and took nothing.
    pub(crate) fn barrier_failures(&self) -> usize {
        // ORDERING: Relaxed; a statistic.
        self.barrier_failures.load(Ordering::Relaxed)
    }

    fn note_barrier_failure(&self) {
        // ORDERING: Relaxed; a statistic.
        self.barrier_failures.fetch_add(1, Ordering::Relaxed);
    }

    #[inline(always)]
    fn slot(&self, cpu: usize) -> &Slot<T> {
        debug_assert!(cpu < self.slots.len(), "CpuProvider contract: index below count()");
        // SAFETY: `CpuProvider` is an unsafe trait whose contract guarantees
        // `cpu < count()`, and there are exactly `count()` slots (see `try_new`).
        unsafe { self.slots.get_unchecked(cpu) }
    }

    /// Steps 1–4 of protocol S, owner side: the slot of `cpu`, unless there is none, the
    /// context is nested inside an operation on it, or a drainer holds it.
    #[inline(always)]
    pub(crate) fn enter(&self, cpu: Option<usize>) -> Option<Held<'_, P, T>> {
        let cpu = cpu?;
        let slot = self.slot(cpu);
        let busy = &slot.owned.busy;
        // ORDERING: Relaxed; only this context (or one nested inside it) writes `busy`.
        if busy.load(Ordering::Relaxed) != 0 {
            return None;
        }
        busy.store(1, Ordering::Relaxed);
        barrier::light(self.asymmetric);
        // ORDERING: Acquire pairs with the drainer's Release store of `steal = 0`, so payload
        // writes of a finished drain are visible; the barrier above orders this load after
        // the `busy` store (protocol S, steps 2–4).
        if slot.steal.load(Ordering::Acquire) {
            // ORDERING: Release, like the end of a hold: nothing was touched in this
            // attempt, but a Relaxed store would end the release sequence of the previous
            // hold's store (a later drainer reading this 0 would then not be ordered after
            // that operation's payload writes). The same instruction on x86 and Arm.
            busy.store(0, Ordering::Release);
            return None;
        }
        Some(Held { array: self, slot, cpu })
    }

    /// Raises the high-water mark to cover slot `cpu`, before its owner enters to fill its
    /// payload. Visitors that must see every payload load `used` after their heavy barrier;
    /// the owner stores it before the light barrier in `enter`: the Dekker pair of protocol
    /// S (the same as `busy`), so a visitor that misses the raise is one whose barrier came
    /// first, and the owner then sees its `steal` or `closed`. Off the fast paths: only
    /// refills call it, and after the first time it is one load of a line nobody writes.
    #[inline(always)]
    pub(crate) fn note_used(&self, cpu: Option<usize>) {
        let Some(cpu) = cpu.filter(|&c| c < self.slots.len()) else { return };
        // ORDERING: Relaxed; published by `enter`'s light barrier (see above).
        if self.used.load(Ordering::Relaxed) <= cpu {
            self.used.fetch_max(cpu + 1, Ordering::Relaxed);
        }
    }

    /// The slots that ever held something.
    #[inline]
    fn used_slots(&self) -> &[Slot<T>] {
        // ORDERING: Relaxed; ordered after the caller's heavy barrier where that matters (see
        // `note_used`).
        let used = self.used.load(Ordering::Relaxed).min(self.slots.len());
        &self.slots[..used]
    }

    /// Every used slot's payload, read racily (statistics; never for what needs a hold).
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &T> {
        self.used_slots().iter().map(|s| &s.owned.payload)
    }

    /// Stops owners from filling their payloads (the owner of the array goes away); the
    /// caller then drains until [`PerCpu::is_drained`]. Returns `false` if the heavy barrier
    /// failed: then neither `is_drained` nor a drain can be trusted to see every owner, and
    /// the caller must leave the slots as they are (their payloads keep what they hold alive:
    /// a leak, never a use-after-free).
    ///
    /// Owners read `closed` only while holding their slot (after `enter`'s barrier), so this
    /// is the same Dekker pattern as `steal` in protocol S: the store here, then the heavy
    /// barrier, then (in `is_drained`) the load of each `busy`; on the owner's side the store
    /// of `busy`, the light barrier, then the load of `closed`.
    #[must_use]
    pub(crate) fn close(&self) -> bool {
        // ORDERING: Relaxed store published by the heavy barrier right after it, which pairs
        // with the light barrier in the owners' `enter` (see above).
        self.closed.store(true, Ordering::Relaxed);
        let ok = barrier::heavy(self.asymmetric);
        if !ok {
            self.note_barrier_failure();
        }
        ok
    }

    /// Whether the array is closed (a hint outside a hold).
    pub(crate) fn is_closed_hint(&self) -> bool {
        // ORDERING: Relaxed; a hint (owners check while holding, see `close`).
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether no payload holds anything and no owner holds its slot. After
    /// [`PerCpu::close`], a `true` is final; before, a racy hint.
    pub(crate) fn is_drained(&self) -> bool {
        self.used_slots().iter().all(|s| {
            // ORDERING: Acquire pairs with the owners' Release store at the end of a hold:
            // with `busy == 0` seen, the payload they wrote before leaving is visible below.
            s.owned.busy.load(Ordering::Acquire) == 0 && s.owned.payload.is_empty()
        })
    }

    /// Protocol S, drainer side, over every used slot: flags the slots whose payload `flag`
    /// picks (a racy check that must only compare pointers or numbers), issues one heavy
    /// barrier, and for each flagged slot whose owner is not inside
    /// runs `take` on its payload (the slot is held meanwhile); then `give` on what was
    /// taken, outside the slot. `None` if another drain is under way (this caller does not
    /// wait for it); else whether the heavy barrier worked (if not, nothing was taken).
    pub(crate) fn drain_all<X>(
        &self,
        flag: impl Fn(&T) -> bool,
        mut take: impl FnMut(&T) -> X,
        mut give: impl FnMut(X),
    ) -> Option<bool> {
        // ORDERING: Acquire pairs with the Release store of the previous drainer (in
        // `DrainGuard`), so drains are serialised (one steals at a time, as protocol S
        // assumes).
        if self.draining.swap(true, Ordering::Acquire) {
            return None;
        }
        // Whatever happens below (`take` or `give` may panic), every flag this drain set is
        // cleared when it ends, or the slots it flagged would stay disabled and every later
        // drain would be refused.
        let _release = DrainGuard(self);
        // Loaded *before* the heavy barrier (see the module docs): this drain visits only
        // the slots used when it started.
        let slots = self.used_slots();
        let mut flagged = false;
        for s in slots {
            if flag(&s.owned.payload) {
                // ORDERING: Relaxed; published by the heavy barrier below.
                s.steal.store(true, Ordering::Relaxed);
                flagged = true;
            }
        }
        if !flagged {
            return Some(true);
        }
        // Step 2: one heavy barrier for all the slots; if it fails, every owner is treated
        // as busy (the guard clears the flags).
        if !barrier::heavy(self.asymmetric) {
            self.note_barrier_failure();
            return Some(false);
        }
        for s in slots {
            // ORDERING: Relaxed; our own flag.
            if !s.steal.load(Ordering::Relaxed) {
                continue;
            }
            // ORDERING: Acquire pairs with the owner's Release store at the end of its hold,
            // so its payload writes are visible before we read the payload.
            let taken = (s.owned.busy.load(Ordering::Acquire) == 0).then(|| take(&s.owned.payload));
            // ORDERING: Release pairs with the owner's Acquire load in `enter`, so the owner
            // sees the emptied payload before using it again.
            s.steal.store(false, Ordering::Release);
            if let Some(x) = taken {
                give(x);
            }
        }
        Some(true)
    }

    /// Forgets `hook` for every slot that may have registered it (the array's owner goes
    /// away, after its last drain: no new hook can be registered).
    pub(crate) fn unwatch_exits(&self, hook: &SlotHook) {
        // ORDERING: Relaxed; after `close`'s heavy barrier and the drains, no owner raises it.
        let used = self.used.load(Ordering::Relaxed).min(self.slots.len());
        for cpu in 0..used {
            // SAFETY: the provider lives as long as the array; the hook was registered (if at
            // all) for these slots only.
            unsafe { (*self.provider).unwatch_exit(cpu, NonNull::from(hook)) };
        }
    }

    /// The owner of slot `cpu` empties it for good (it goes away), retrying while a remote
    /// drain holds the slot (which would otherwise skip it, seeing it busy). Returns what
    /// `take` took, to give back outside.
    pub(crate) fn drain_own<X>(&self, cpu: usize, take: impl FnOnce(&Held<'_, P, T>) -> X) -> X {
        loop {
            if let Some(held) = self.enter(Some(cpu)) {
                let x = take(&held);
                held.forget_exit_hook();
                return x;
            }
            crate::sync::spin_loop();
        }
    }
}

/// Clears a drain's flags when the drain ends, also by unwinding.
struct DrainGuard<'a, P, T>(&'a PerCpu<P, T>);

impl<P, T> Drop for DrainGuard<'_, P, T> {
    fn drop(&mut self) {
        // Every slot the drain flagged is below `used` (which only grows).
        // ORDERING: Relaxed; see `used_slots`.
        let used = self.0.used.load(Ordering::Relaxed).min(self.0.slots.len());
        for s in &self.0.slots[..used] {
            // ORDERING: Release, as for each slot in `drain_all` (a no-op for slots already
            // cleared there: only the drainer writes these flags, and it still holds the
            // drain flag).
            s.steal.store(false, Ordering::Release);
        }
        // ORDERING: Release pairs with the Acquire swap at the start of the next drain.
        self.0.draining.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Payload, PerCpu};
    use crate::cpu::NoCpus;
    use crate::sync::atomic::{AtomicUsize, Ordering};

    /// A payload of a number of cached units: empty at 0.
    struct Units(AtomicUsize);

    impl Payload for Units {
        fn is_empty(&self) -> bool {
            self.0.load(Ordering::Relaxed) == 0
        }
    }

    /// Four slots, indexed directly (the provider is never asked: no exit hooks are used).
    fn array() -> PerCpu<NoCpus, Units> {
        match PerCpu::try_new(4, || Units(AtomicUsize::new(0))) {
            Ok(a) => a,
            Err(_) => panic!("allocating four slots"),
        }
    }

    /// Drains every non-empty payload; returns what was taken.
    fn drain(a: &PerCpu<NoCpus, Units>) -> usize {
        let mut taken = 0;
        let done = a.drain_all(|p| !p.is_empty(), |p| p.0.swap(0, Ordering::Relaxed), |x| taken += x);
        assert_eq!(done, Some(true), "no other drain runs and the barrier works");
        taken
    }

    /// The teardown's `is_drained` (what `Domain::close_caches` spins on after `close`) says
    /// `false` while a used slot's payload holds something (before and after `close`) and
    /// while an owner is inside its slot (even with an empty payload), and `true` only once
    /// every used slot is empty and free. Catches an `is_drained` that always answers `true`
    /// (the tree would stop draining with units still cached), one that ignores `busy`, and
    /// one that ignores the payload.
    #[test]
    fn is_drained_sees_cached_payloads_and_owners_inside() {
        let a = array();
        assert!(a.is_drained(), "nothing was ever used");

        // An owner fills slot 2 and leaves: its payload still holds 7 units.
        a.note_used(Some(2));
        {
            let held = a.enter(Some(2)).expect("slot 2 is free");
            held.0.store(7, Ordering::Relaxed);
            assert!(!a.is_drained(), "an owner is inside slot 2 and its payload holds 7");
        }
        assert!(!a.is_drained(), "slot 2's payload still holds 7");

        // Closing stops new fills but empties nothing.
        assert!(a.close(), "the heavy barrier works here");
        assert!(!a.is_drained(), "closed, but slot 2 still holds 7");

        // A drain takes the 7 back: now drained.
        assert_eq!(drain(&a), 7);
        assert!(a.is_drained(), "every used slot is empty and free");

        // An owner inside a slot with an empty payload (it may be about to fill it, having
        // read `closed` before the close): not drained until it leaves.
        a.note_used(Some(1));
        let held = a.enter(Some(1)).expect("slot 1 is free");
        assert!(held.is_closed());
        assert!(!a.is_drained(), "an owner is inside slot 1");
        drop(held);
        assert!(a.is_drained(), "the owner left slot 1 empty");

        // A payload below the high-water mark is seen wherever it is (slot 0, below 3).
        {
            let held = a.enter(Some(0)).expect("slot 0 is free");
            held.0.store(1, Ordering::Relaxed);
        }
        assert!(!a.is_drained(), "slot 0 holds 1");
        assert_eq!(drain(&a), 1);
        assert!(a.is_drained());
    }
}
