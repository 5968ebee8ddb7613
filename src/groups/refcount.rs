//! A killable, sharded reference count: Linux's `percpu_ref` without RCU.
//!
//! While a group is online its count is spread over per-CPU *shards*, so `get`/`put` from
//! different CPUs touch different cache lines. Offlining *kills* the count: each shard is
//! harvested into one central word, and from then on every operation uses the central word,
//! where reaching zero can be detected.
//!
//! # Encoding
//!
//! Every count is kept doubled, so bit 0 of a shard is free to mean DEAD:
//!
//! * shard `i` = `2·dᵢ (mod 2ʷ) | DEAD`, where `dᵢ` is the net number of gets minus puts
//!   made on shard `i` (it may be "negative": a handle cloned on one CPU and dropped on
//!   another), `w` the word width;
//! * `central` = `2·c + BIAS` while live, `2·count` once killed;
//! * the true count is `(central − BIAS + Σ 2·dᵢ) / 2` while live.
//!
//! All arithmetic is modulo 2ʷ; the true doubled count is below 2ʷ⁻¹, so the sum is exact.
//! `BIAS` (2ʷ⁻²) keeps `central` far from zero while shards hold the real count, so
//! operations that fall through to `central` during a kill cannot see a false zero.
//!
//! # Protocol K (kill vs concurrent get/put)
//!
//! | step | get / put / tryget on shard `i` | kill |
//! |------|--------------------------------|------|
//! | 1 | `old = shardᵢ.fetch_add(±2)` | `killed = true` (`tryget_live` fails from here) |
//! | 2 | `old & DEAD == 0` → done (counted in the shard) | for each shard: `old = fetch_or(DEAD)`; `sum += old & !DEAD` |
//! | 3 | else: the shard is harvested; apply `±2` to `central` (the shard's ±2 is ignored garbage) | `central += sum − BIAS`, then drop the base reference (`central −= 2`) |
//!
//! `get_many`/`put_many` (a cache taking or returning a batch of references) are the same
//! operations with `±2n` in place of `±2`; `n` is bounded far below `BIAS`.
//!
//! A shard operation either lands before the harvest of its shard (and is in `sum`) or sees
//! DEAD (and goes to `central`); `fetch_or` and `fetch_add` on one word are totally ordered,
//! so nothing is lost or counted twice. Only `central` can reach zero, and only after the
//! kill, because the base reference is part of it until the kill drops it.
//!
//! # Where the shards live
//!
//! Not in the node: a per-tree [`ShardArena`] keeps them in blocks of [`BLOCK`] groups, one
//! row per shard *class* (`row[c][g]` is shard `c` of the group in slot `g`), the way Linux's
//! percpu allocator packs one CPU's copies of many counters densely. A CPU of class `c`
//! touches only row `c`, so two CPUs of different classes never share a line, while a group
//! costs 8 bytes per class instead of a padded 128-byte line per shard (8 classes: 64 bytes).
//! A group's slot number is also its dense index (the stock's direct-mapped table uses it):
//! slots are handed out lowest-free-first and reused once a group is freed, after its grace
//! period, when no reader can touch its shards any more; a reused slot's shards are zeroed
//! before its new owner is published.
//!
//! # Orderings
//!
//! The Arc recipe: increments are `Relaxed` (a new reference is made from an existing one,
//! which already orders the data), decrements are `Release`, and whoever observes zero issues
//! an `Acquire` fence before freeing. The harvest `fetch_or` is `AcqRel`: it acquires every
//! `Release` decrement made on that shard (an RMW continues the release sequence) and releases
//! them onwards through `central`, whose final decrement the freeing thread acquires.

use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;
use core::ptr::NonNull;

use crate::fallible::{OutOfMemory, try_box};
use crate::sync::SpinFlag;
#[cfg(not(chargetree_sanitize_thread))]
use crate::sync::atomic::fence;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;

const DEAD: usize = 1;
const ONE: usize = 2;
const BIAS: usize = 1 << (usize::BITS - 2);
/// The largest batch `get_many`/`put_many` accept: far below `BIAS`, so a batch landing on a
/// shard or on `central` mid-kill cannot reach a false zero either.
pub(crate) const MANY_MAX: usize = 1 << 16;

/// Groups per arena block: a class's row of a block is `BLOCK` words (512 bytes, 8 lines).
pub(crate) const BLOCK: usize = 64;

/// The most shard classes a tree uses (`TreeConfig::refcount_shards` clamps to it).
pub(crate) const MAX_CLASSES: usize = 64;

/// One block of the arena: `classes` rows of [`BLOCK`] shards, row-major.
struct Block {
    shards: Box<[AtomicUsize]>,
}

/// The slot bookkeeping of a [`ShardArena`], guarded by its flag.
struct Slots {
    blocks: Vec<NonNull<Block>>,
    /// The last slot given back, plus one (0: none): a list of free slots threaded through
    /// their own class-0 shards, each holding the next one's number plus one. Reused
    /// last-in-first-out, which keeps live slots dense, and giving a slot back never
    /// allocates (an offline or a free may run inside an allocator's `dealloc`) and costs no
    /// memory beyond the shards themselves.
    free_head: usize,
    /// Slots ever handed out: `0..next`.
    next: usize,
}

/// The shards of every reference count of a tree (see the module docs).
pub(crate) struct ShardArena {
    classes: usize,
    lock: SpinFlag,
    slots: UnsafeCell<Slots>,
}

// SAFETY: the block pointers are owned by the arena and freed with it; `slots` is only touched
// under `lock`; the shards are atomics.
unsafe impl Send for ShardArena {}
// SAFETY: see `Send`.
unsafe impl Sync for ShardArena {}

/// A slot of a [`ShardArena`]: its number (the group's dense index) and its class-0 shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) index: usize,
    base: NonNull<AtomicUsize>,
}

impl ShardArena {
    /// An arena for counts spread over `classes` shards (rounded up to a power of two,
    /// clamped to `1..=MAX_CLASSES`). Allocates nothing until the first slot.
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            classes: classes.clamp(1, MAX_CLASSES).next_power_of_two(),
            lock: SpinFlag::new(),
            slots: UnsafeCell::new(Slots { blocks: Vec::new(), free_head: 0, next: 0 }),
        }
    }

    /// Takes a slot whose shards are all zero. `Err` if the allocator refuses a new block.
    pub(crate) fn alloc(&self) -> Result<Slot, OutOfMemory> {
        let _g = self.lock.lock();
        // SAFETY: the flag is held, so the bookkeeping is ours; blocks are alive (freed only
        // with the arena).
        let slot = self.slots.with_mut(|s| unsafe {
            let s = &mut *s;
            if s.free_head != 0 {
                let index = s.free_head - 1;
                // ORDERING: Relaxed; the free list is only touched under the flag.
                s.free_head = Self::shard0(s, index).load(Ordering::Relaxed);
                return Ok(self.slot_at(s, index));
            }
            let index = s.next;
            if index / BLOCK == s.blocks.len() {
                s.blocks.try_reserve(1).map_err(|_| OutOfMemory)?;
                let n = self.classes * BLOCK;
                let shards = crate::fallible::try_boxed_slice(n, |_| AtomicUsize::new(0))?;
                let block = try_box(Block { shards })?;
                s.blocks.push(NonNull::from(Box::leak(block)));
            }
            s.next = index + 1;
            Ok(self.slot_at(s, index))
        })?;
        Ok(slot)
    }

    /// The slot `index`, its shards zeroed. The caller holds the flag; `index < next`.
    fn slot_at(&self, s: &Slots, index: usize) -> Slot {
        // SAFETY: blocks live as long as the arena.
        let block = unsafe { s.blocks[index / BLOCK].as_ref() };
        // From the whole row array, not one element: the count reaches its other shards
        // `c × BLOCK` words further (a pointer from `&shards[i]` could not, under Stacked
        // Borrows).
        // SAFETY: `index % BLOCK < BLOCK <= shards.len()`, inside the array.
        let base = unsafe { NonNull::new_unchecked(block.shards.as_ptr().cast_mut().add(index % BLOCK)) };
        for c in 0..self.classes {
            // ORDERING: Relaxed; the slot is not shared yet (its previous owner was freed
            // after its grace period; the new owner is published by the node's own
            // publication, a Release store or the topology flag).
            block.shards[c * BLOCK + index % BLOCK].store(0, Ordering::Relaxed);
        }
        Slot { index, base }
    }

    /// Class-0 shard of slot `index < next`: a free slot's link. The caller holds the flag.
    fn shard0(s: &Slots, index: usize) -> &AtomicUsize {
        // SAFETY: blocks live as long as the arena; `index < next`, so its block exists.
        let block = unsafe { s.blocks[index / BLOCK].as_ref() };
        &block.shards[index % BLOCK]
    }

    /// Gives `slot` back for reuse. Its owner is gone: no reference and no reader can touch
    /// its shards any more, so its class-0 shard can hold the free list's link. Never
    /// allocates.
    pub(crate) fn free(&self, slot: Slot) {
        let _g = self.lock.lock();
        // SAFETY: the flag is held, so the bookkeeping is ours.
        self.slots.with_mut(|s| unsafe {
            let s = &mut *s;
            debug_assert!(slot.index < s.next, "a slot of this arena");
            // ORDERING: Relaxed; the free list is only touched under the flag.
            Self::shard0(s, slot.index).store(s.free_head, Ordering::Relaxed);
            s.free_head = slot.index + 1;
        });
    }

    /// Slots taken and not given back, and blocks allocated (tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn census(&self) -> (usize, usize) {
        let _g = self.lock.lock();
        // SAFETY: the flag is held.
        self.slots.with_mut(|s| unsafe {
            let s = &*s;
            let mut free = 0;
            let mut at = s.free_head;
            while at != 0 {
                free += 1;
                at = Self::shard0(s, at - 1).load(Ordering::Relaxed);
            }
            (s.next - free, s.blocks.len())
        })
    }
}

/// A [`RefCount`] that owns its arena (unit tests and loom models): frees both when dropped.
#[cfg(test)]
pub(crate) struct TestCount {
    rc: core::mem::ManuallyDrop<RefCount>,
    slot: Slot,
    arena: Box<ShardArena>,
}

#[cfg(test)]
impl TestCount {
    /// A count of `initial` references over `classes` shards in an arena of its own; the
    /// arena is freed with the returned value.
    pub(crate) fn new(initial: usize, classes: usize) -> Self {
        let arena = Box::new(ShardArena::new(classes));
        let slot = arena.alloc().expect("test allocation");
        // SAFETY: the arena is boxed (its blocks never move) and dropped after the count, in
        // `drop`; the slot is given back there, when the count is gone.
        let rc = unsafe { RefCount::new_in(&arena, slot, initial) };
        Self { rc: core::mem::ManuallyDrop::new(rc), slot, arena }
    }
}

#[cfg(test)]
impl core::ops::Deref for TestCount {
    type Target = RefCount;
    fn deref(&self) -> &RefCount {
        &self.rc
    }
}

#[cfg(test)]
impl Drop for TestCount {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the count is not used afterwards.
        unsafe { core::mem::ManuallyDrop::drop(&mut self.rc) };
        self.arena.free(self.slot);
    }
}

impl Drop for ShardArena {
    fn drop(&mut self) {
        self.slots.with_mut(|s| {
            // SAFETY: exclusive access (`&mut self`).
            for b in unsafe { (*s).blocks.drain(..) } {
                // SAFETY: every block came from `Box::leak` in `alloc` and is freed once.
                drop(unsafe { Box::from_raw(b.as_ptr()) });
            }
        });
    }
}

/// A killable sharded reference count. See the module docs for protocol K.
pub(crate) struct RefCount {
    /// Shard 0 of this count's slot; shard `c` is `c × BLOCK` words further.
    base: NonNull<AtomicUsize>,
    /// Classes minus one (a power of two minus one, at most 63).
    mask: u32,
    central: AtomicUsize,
    killed: AtomicBool,
}

// SAFETY: `base` points into an arena block that outlives the count (the arena is freed with
// the tree, after every node); the shards are atomics.
unsafe impl Send for RefCount {}
// SAFETY: see `Send`.
unsafe impl Sync for RefCount {}

impl RefCount {
    /// A live count of `initial` references in `slot` of `arena`.
    ///
    /// # Safety
    ///
    /// The arena outlives the count, and the slot is given back only after the count is
    /// dead and unreachable (see [`ShardArena::free`]).
    pub(crate) unsafe fn new_in(arena: &ShardArena, slot: Slot, initial: usize) -> Self {
        Self {
            base: slot.base,
            // `classes <= MAX_CLASSES`, so this fits.
            mask: (arena.classes - 1) as u32,
            central: AtomicUsize::new(BIAS.wrapping_add(initial.wrapping_mul(ONE))),
            killed: AtomicBool::new(false),
        }
    }

    /// The arena slot numbered `index` this count lives in (the one `new_in` was given).
    pub(crate) fn slot(&self, index: usize) -> Slot {
        Slot { index, base: self.base }
    }

    #[inline(always)]
    fn shard(&self, hint: usize) -> &AtomicUsize {
        // SAFETY: shard `c < classes` of the slot is `c × BLOCK` words from its class-0 shard,
        // inside the same block (rows are `BLOCK` words, `classes` of them).
        unsafe { &*self.base.as_ptr().add((hint & self.mask as usize) * BLOCK) }
    }

    /// The shards of this count, for a kill's harvest and statistics.
    fn shards(&self) -> impl Iterator<Item = &AtomicUsize> {
        (0..=self.mask as usize).map(|c| self.shard(c))
    }

    /// Takes one more reference. The caller must already own one (or otherwise know the
    /// count is non-zero): like `css_get`.
    #[inline]
    pub(crate) fn get(&self, hint: usize) {
        // ORDERING: Relaxed, the Arc recipe: the caller's own reference orders the data.
        let old = self.shard(hint).fetch_add(ONE, Ordering::Relaxed);
        if old & DEAD != 0 {
            self.get_central();
        }
    }

    #[cold]
    fn get_central(&self) {
        self.get_central_many(1);
    }

    /// Takes `n` more references at once (one read-modify-write): for caches that hand
    /// references out one by one (the object stock). As [`RefCount::get`], the caller must
    /// own one already.
    #[inline]
    pub(crate) fn get_many(&self, hint: usize, n: usize) {
        debug_assert!(n <= MANY_MAX, "chargetree: reference batch too large");
        // ORDERING: Relaxed, as in `get`.
        let old = self.shard(hint).fetch_add(n * ONE, Ordering::Relaxed);
        if old & DEAD != 0 {
            self.get_central_many(n);
        }
    }

    #[cold]
    fn get_central_many(&self, n: usize) {
        // ORDERING: Relaxed, as in `get`.
        let old = self.central.fetch_add(n * ONE, Ordering::Relaxed);
        if old > usize::MAX / 2 {
            // 2⁶² references cannot be real: a leak loop. Like Arc, refuse to wrap.
            crate::abort();
        }
    }

    /// Takes a reference unless the count already reached zero: like `css_tryget`. Safe to
    /// call with only a borrowed pointer, as long as the memory is kept valid (the epoch).
    #[inline]
    pub(crate) fn tryget(&self, hint: usize) -> bool {
        // ORDERING: Relaxed, as in `get`: success only ever adds to a non-zero count.
        let old = self.shard(hint).fetch_add(ONE, Ordering::Relaxed);
        if old & DEAD == 0 {
            // Live: the base reference is held, so the count is non-zero.
            return true;
        }
        self.tryget_central()
    }

    #[cold]
    fn tryget_central(&self) -> bool {
        // ORDERING: Relaxed load and CAS: increment-unless-zero; the reference obtained is
        // ordered by whoever made the count non-zero (Arc's `upgrade` uses the same).
        let mut cur = self.central.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return false;
            }
            if cur > usize::MAX / 2 {
                crate::abort();
            }
            match self.central.compare_exchange_weak(cur, cur + ONE, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Takes a reference only if the count has not been killed: like `css_tryget_online`.
    #[inline]
    pub(crate) fn tryget_live(&self, hint: usize) -> bool {
        // ORDERING: Acquire pairs with the Release store in `kill`: a reader that happens after
        // `kill` returned sees `killed` and fails.
        if self.killed.load(Ordering::Acquire) {
            return false;
        }
        // ORDERING: Relaxed, as in `get`.
        let old = self.shard(hint).fetch_add(ONE, Ordering::Relaxed);
        // Landed on a harvested shard: the kill is under way, refuse (the shard's +2 is
        // ignored garbage, nothing to undo).
        old & DEAD == 0
    }

    /// Drops a reference. Returns `true` if it was the last one: the caller now owns the
    /// object exclusively (all other owners' accesses happen-before this return).
    #[inline]
    #[must_use]
    pub(crate) fn put(&self, hint: usize) -> bool {
        // ORDERING: Release, the Arc recipe: this owner's accesses happen-before the free,
        // through the harvest (`kill`'s AcqRel `fetch_or`) or through `central`.
        let old = self.shard(hint).fetch_sub(ONE, Ordering::Release);
        if old & DEAD == 0 {
            return false;
        }
        self.put_central()
    }

    /// Drops `n` references at once (one read-modify-write). Returns `true` if they were
    /// the last ones, as [`RefCount::put`].
    #[inline]
    #[must_use]
    pub(crate) fn put_many(&self, hint: usize, n: usize) -> bool {
        debug_assert!(n <= MANY_MAX, "chargetree: reference batch too large");
        // ORDERING: Release, as in `put`.
        let old = self.shard(hint).fetch_sub(n * ONE, Ordering::Release);
        if old & DEAD == 0 {
            return false;
        }
        self.put_central_many(n)
    }

    #[cold]
    fn put_central(&self) -> bool {
        self.put_central_many(1)
    }

    fn put_central_many(&self, n: usize) -> bool {
        // ORDERING: Release, as in `put`; the zero-observer's Acquire fence pairs with it.
        let old = self.central.fetch_sub(n * ONE, Ordering::Release);
        debug_assert!(old >= n * ONE, "chargetree: reference count underflow");
        if old == n * ONE {
            // ORDERING: Acquire fence pairs with every Release decrement before this one.
            // ThreadSanitizer does not understand fences (bytes' `release_shared` note), so
            // under it an Acquire load of the same word does the job.
            #[cfg(not(chargetree_sanitize_thread))]
            fence(Ordering::Acquire);
            #[cfg(chargetree_sanitize_thread)]
            let _ = self.central.load(Ordering::Acquire);
            return true;
        }
        false
    }

    /// Switches to central counting and drops the base reference (Linux's
    /// `percpu_ref_kill`). Returns `true` if that was the last reference. Must be called at
    /// most once, by the owner of the base reference.
    pub(crate) fn kill(&self) -> bool {
        // ORDERING: Release pairs with the Acquire load in `tryget_live`.
        let was = self.killed.swap(true, Ordering::Release);
        debug_assert!(!was, "chargetree: reference count killed twice");
        let mut sum = 0usize;
        for shard in self.shards() {
            // ORDERING: AcqRel; see the module docs ("Orderings").
            let old = shard.fetch_or(DEAD, Ordering::AcqRel);
            sum = sum.wrapping_add(old & !DEAD);
        }
        // ORDERING: AcqRel: releases the harvested decrements to the eventual zero-observer.
        self.central.fetch_add(sum.wrapping_sub(BIAS), Ordering::AcqRel);
        self.put_central()
    }

    /// Whether `kill` has run.
    #[inline]
    pub(crate) fn is_killed(&self) -> bool {
        // ORDERING: Relaxed; a status read. Callers that need ordering use `tryget_live`.
        self.killed.load(Ordering::Relaxed)
    }

    /// The current count. Exact only once killed and when nobody is changing it; while live
    /// it sums the shards racily (a statistic, off by the operations in flight).
    pub(crate) fn count(&self) -> usize {
        // ORDERING: Relaxed; a statistic (documented as racy).
        let central = self.central.load(Ordering::Relaxed);
        if self.is_killed() {
            return central / ONE;
        }
        let mut sum = central.wrapping_sub(BIAS);
        for shard in self.shards() {
            sum = sum.wrapping_add(shard.load(Ordering::Relaxed) & !DEAD);
        }
        sum / ONE
    }
}

impl core::fmt::Debug for RefCount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RefCount")
            .field("count", &self.count())
            .field("killed", &self.is_killed())
            .field("shards", &(self.mask as usize + 1))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::TestCount as RefCount;
    use super::{BLOCK, ShardArena};
    use alloc_crate::vec::Vec;

    /// Slots given back are reused last-in-first-out, shards zeroed, before any new block;
    /// giving back more slots than a block holds needs no memory (the list is threaded
    /// through the freed slots' own shards).
    #[test]
    fn freed_slots_are_reused_newest_first_with_zeroed_shards() {
        let arena = ShardArena::new(2);
        let slots: Vec<_> = (0..3 * BLOCK).map(|_| arena.alloc().unwrap()).collect();
        assert_eq!(arena.census(), (3 * BLOCK, 3));
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(s.index, i, "fresh slots are dense");
        }
        for s in &slots {
            // A live count dirties both of its classes' shards before it goes.
            // SAFETY: the slot is given back below, after the count is gone.
            let rc = unsafe { super::RefCount::new_in(&arena, *s, 1) };
            rc.get(0);
            rc.get(1);
            assert!(!rc.put(1));
            assert!(!rc.put(0));
            assert!(rc.kill());
        }
        for s in slots.iter().rev().skip(1) {
            arena.free(*s); // every slot but the last, newest first
        }
        assert_eq!(arena.census(), (1, 3));
        let again: Vec<_> = (0..3 * BLOCK - 1).map(|_| arena.alloc().unwrap()).collect();
        for (i, s) in again.iter().enumerate() {
            assert_eq!(s.index, i, "the last given back (slot 0) is the first taken");
            // SAFETY: read only; each slot is ours.
            let rc = unsafe { super::RefCount::new_in(&arena, *s, 1) };
            assert_eq!(rc.count(), 1, "a reused slot's shards are zero");
        }
        assert_eq!(arena.census(), (3 * BLOCK, 3), "no block was added");
        assert_eq!(arena.alloc().unwrap().index, 3 * BLOCK, "then fresh slots again");
        assert_eq!(arena.census(), (3 * BLOCK + 1, 4));
    }

    #[test]
    fn live_gets_and_puts_on_different_shards_balance_at_kill() {
        let rc = RefCount::new(1, 4);
        // A reference taken on shard 0 and dropped on shard 3 leaves +2 / -2 in two shards.
        rc.get(0);
        rc.get(1);
        assert!(!rc.put(3));
        assert_eq!(rc.count(), 2);
        // Killing drops the base reference; one reference (from shard 1) remains.
        assert!(!rc.kill());
        assert_eq!(rc.count(), 1);
        assert!(!rc.tryget_live(0));
        assert!(rc.tryget(2));
        assert!(!rc.put(0));
        assert!(rc.put(1), "the last put reports the release");
        assert!(!rc.tryget(0), "tryget fails once the count reached zero");
        assert_eq!(rc.count(), 0);
    }

    #[test]
    fn kill_of_the_only_reference_releases() {
        let rc = RefCount::new(1, 1);
        assert!(rc.kill());
        assert!(!rc.tryget(0));
    }

    #[test]
    fn batches_count_like_single_references_before_and_after_kill() {
        let rc = RefCount::new(1, 4);
        // A cache takes 32 references on shard 1, hands them out, and they come back one by
        // one on shard 2 and as a batch of 20 on shard 3.
        rc.get_many(1, 32);
        assert_eq!(rc.count(), 33);
        for _ in 0..12 {
            assert!(!rc.put(2));
        }
        assert!(!rc.put_many(3, 10));
        assert_eq!(rc.count(), 11);
        // Killed with 10 batch references still out: they are in `central` now.
        assert!(!rc.kill());
        assert_eq!(rc.count(), 10);
        rc.get_many(0, 5);
        assert_eq!(rc.count(), 15);
        assert!(!rc.put_many(1, 14));
        assert!(rc.put_many(2, 1), "the batch that drops the last reference reports it");
        assert_eq!(rc.count(), 0);
        assert!(!rc.tryget(0));
    }

    #[test]
    fn a_batch_put_reaches_zero_only_with_the_last_reference() {
        let rc = RefCount::new(1, 2);
        rc.get_many(0, 7);
        assert!(!rc.kill());
        assert!(!rc.put_many(1, 6), "one reference left");
        assert_eq!(rc.count(), 1);
        assert!(rc.put_many(0, 1));
    }

    #[test]
    fn wrapping_shards_sum_exactly() {
        let rc = RefCount::new(1, 2);
        // Many references cloned on shard 0 and dropped on shard 1.
        for _ in 0..1000 {
            rc.get(0);
            assert!(!rc.put(1));
        }
        assert_eq!(rc.count(), 1);
        assert!(rc.kill());
    }
}
