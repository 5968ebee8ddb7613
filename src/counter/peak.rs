//! Peaks: the global watermark, its reset, and per-reader resettable peaks
//! (cgroup2's `memory.peak`, where each open file can reset its own view).
//!
//! Charges raise one shared *local* watermark, which every reset restarts from the current
//! usage. A [`PeakWatcher`] that has reset at least once reads
//! `max(its private value, local watermark)`. When anybody resets, each registered watcher's
//! private value is first raised to the local watermark being discarded, so no watcher loses
//! the part of its window that precedes someone else's reset. (Linux raises the other
//! readers only to the usage at the time of the reset; the local watermark taken with a swap
//! is the exact maximum of the discarded segment, so this is a strict improvement.)
//!
//! Registered watchers form an intrusive doubly-linked list headed in the counter, linked
//! and unlinked only under the counter's configuration flag (protocol W). A watcher is
//! pinned while registered and unlinks itself in `Drop`, so the list never points at freed
//! or moved memory and no allocation is needed.

use core::fmt;
use core::marker::PhantomPinned;
use core::pin::Pin;
use core::ptr;

use super::{Counter, clamp_nonneg};
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::dekker_fence;

/// How many times a peak reset re-reads a usage above `max` before it installs `max`
/// instead (see `Counter::peak_floor`).
const PEAK_FLOOR_SPINS: usize = 16;
use crate::sync::cell::UnsafeCell;

/// One registered watcher's node in the counter's list.
pub(super) struct WatchLink {
    /// Peak of the windows that ended at other readers' resets since this one's own reset.
    value: AtomicUsize,
    /// Set once this watcher has reset (and linked itself); only changed under the flag.
    registered: AtomicBool,
    prev: UnsafeCell<*const WatchLink>,
    next: UnsafeCell<*const WatchLink>,
}

impl Counter<'_> {
    /// Restarts both the global and the local peak from the current usage (cgroup1's
    /// `max_usage_in_bytes` write). Registered [`PeakWatcher`]s keep the peak of the window
    /// that this reset ends.
    ///
    /// A charge that commits while the reset runs is never lost from the new window: the
    /// reset re-reads the usage after installing the new peak (see [`Counter::peak`]).
    pub fn reset_peak(&self) {
        let _writer = self.conf.writer.lock();
        let usage = self.peak_floor();
        // SAFETY: `conf.writer` is held.
        unsafe { self.restart_local_peak(usage) };
        // ORDERING: SeqCst store, then (loom only) a fence, then `settle_peaks`' SeqCst
        // re-read of `usage`: the resetter's half of the store-buffering pair with a
        // charger's SeqCst add and SeqCst load of the watermark (`raise_peaks`).
        self.track.watermark.store(usage, Ordering::SeqCst);
        self.settle_peaks(usage, true);
    }

    /// After a reset installed `installed`: raises the new peaks to the usage as re-read
    /// now, so a charge that added before this re-read but compared its value with the old
    /// watermark (and so did not raise the new one) is counted.
    fn settle_peaks(&self, installed: usize, global: bool) {
        dekker_fence();
        let now = self.peak_floor();
        if now > installed {
            // ORDERING: SeqCst, as in `raise_peaks`.
            self.track.local_watermark.fetch_max(now, Ordering::SeqCst);
            if global {
                self.track.watermark.fetch_max(now, Ordering::SeqCst);
            }
        }
    }

    /// The usage a reset may install as the new peak: the current usage, unless it is above
    /// `max` while no forced charge or `swap_max` ever left the node there, which means a refused charge's
    /// speculative add is in flight (it is taken back within a few instructions). Then the
    /// usage is re-read a few times, and at worst `max` (which the committed usage is below)
    /// is installed: no reset makes `peak > max`.
    fn peak_floor(&self) -> usize {
        let mut spins = 0;
        loop {
            // ORDERING: SeqCst, see `reset_peak`.
            let usage = clamp_nonneg(self.hot.usage.load(Ordering::SeqCst));
            let max = self.max();
            // ORDERING: Relaxed; a sticky hint set by forced charges and `swap_max`.
            if usage <= max || self.hot.above_max.load(Ordering::Relaxed) {
                return usage;
            }
            if spins == PEAK_FLOOR_SPINS {
                return max;
            }
            spins += 1;
            crate::sync::spin_loop();
        }
    }

    /// The local (resettable) watermark: the peak since the last reset by any reader.
    #[must_use]
    pub fn local_peak(&self) -> usize {
        // ORDERING: Relaxed; racy statistic.
        self.track.local_watermark.load(Ordering::Relaxed)
    }

    /// Sets the local watermark to `usage` and folds the discarded window into every
    /// registered watcher.
    ///
    /// # Safety
    ///
    /// The caller holds `self.conf.writer`.
    unsafe fn restart_local_peak(&self, usage: usize) {
        // ORDERING: SeqCst swap (the store half of the reset's store-buffering pair, see
        // `reset_peak`); the exchange itself returns the exact maximum of the window that
        // ends here, including charges that raced with the reset.
        let ended = self.track.local_watermark.swap(usage, Ordering::SeqCst);
        // SAFETY: the writer flag is held (caller's obligation), which is what guards the
        // list head and links.
        let mut link = self.conf.watchers.with(|head| unsafe { *head });
        while !link.is_null() {
            // SAFETY: every link on the list belongs to a pinned, live `PeakWatcher`: it was
            // linked under this flag from a `Pin<&PeakWatcher>` and is unlinked under this
            // flag in the watcher's `Drop` before its memory can be reused.
            let l = unsafe { &*link };
            // ORDERING: Relaxed; statistic.
            l.value.fetch_max(ended, Ordering::Relaxed);
            // SAFETY: the flag is held, so nobody writes `next` concurrently.
            link = l.next.with(|n| unsafe { *n });
        }
    }
}

/// A reader's own resettable view of a counter's peak, like one open `memory.peak` file.
///
/// Until its first [`reset`](PeakWatcher::reset) it reads the global peak. After that it
/// reads the peak of usage since its own last reset, unaffected by other watchers' resets.
/// It must be pinned to reset (it links itself into the counter's list, without allocating)
/// and unlinks itself when dropped.
///
/// ```
/// use core::pin::pin;
/// use chargetree::counter::{Counter, PeakWatcher};
///
/// let c = Counter::new_root();
/// let a = pin!(PeakWatcher::new(&c));
/// let b = pin!(PeakWatcher::new(&c));
/// c.charge(10).unwrap();
/// a.as_ref().reset();           // a's window starts at 10
/// c.uncharge(8);
/// b.as_ref().reset();           // b's window starts at 2; a keeps its 10
/// c.charge(3).unwrap();
/// assert_eq!((a.read(), b.read(), c.peak()), (10, 5, 10));
/// ```
pub struct PeakWatcher<'c, 'p> {
    counter: &'c Counter<'p>,
    link: WatchLink,
    _pinned: PhantomPinned,
}

// SAFETY: `value` and `registered` are atomics; `prev` / `next` are read and written only
// under the counter's configuration flag (by this watcher's `reset`/`drop` and by other
// watchers' list updates), so shared access from several threads is synchronised by that
// flag. The counter reference is `Sync`.
unsafe impl Sync for PeakWatcher<'_, '_> {}
// SAFETY: see `Sync`; an unregistered watcher has no links, and a registered one is pinned
// (moving it to another thread by value is impossible while pinned).
unsafe impl Send for PeakWatcher<'_, '_> {}

impl<'c, 'p> PeakWatcher<'c, 'p> {
    /// A watcher of `counter`'s peak, not registered until its first reset.
    #[must_use]
    pub fn new(counter: &'c Counter<'p>) -> Self {
        Self {
            counter,
            link: WatchLink {
                value: AtomicUsize::new(0),
                registered: AtomicBool::new(false),
                prev: UnsafeCell::new(ptr::null()),
                next: UnsafeCell::new(ptr::null()),
            },
            _pinned: PhantomPinned,
        }
    }

    /// The counter watched.
    #[must_use]
    pub fn counter(&self) -> &'c Counter<'p> {
        self.counter
    }

    /// The peak since this watcher's last reset, or the global peak if it never reset.
    #[must_use]
    pub fn read(&self) -> usize {
        // ORDERING: Relaxed; `registered` is only ever set by this watcher's own `reset`, and
        // peaks are racy statistics.
        if !self.link.registered.load(Ordering::Relaxed) {
            return self.counter.peak();
        }
        self.link.value.load(Ordering::Relaxed).max(self.counter.local_peak())
    }

    /// Restarts this watcher's window from the current usage. Other watchers keep the peak
    /// of the window this ends. Registers the watcher on first use.
    pub fn reset(self: Pin<&Self>) {
        let counter = self.counter;
        let _writer = counter.conf.writer.lock();
        let usage = counter.peak_floor();
        // SAFETY: the writer flag is held.
        unsafe { counter.restart_local_peak(usage) };
        let me: *const WatchLink = &self.link;
        // ORDERING: Relaxed; under the writer flag.
        if !self.link.registered.load(Ordering::Relaxed) {
            // SAFETY: the flag is held, so the head and the current first link's `prev` are
            // ours to write; `self` is pinned, so `me` stays valid until `Drop` unlinks it.
            unsafe {
                let head = counter.conf.watchers.with(|h| *h);
                self.link.next.with_mut(|n| *n = head);
                self.link.prev.with_mut(|p| *p = ptr::null());
                if !head.is_null() {
                    (*head).prev.with_mut(|p| *p = me);
                }
                counter.conf.watchers.with_mut(|h| *h = me);
            }
            self.link.registered.store(true, Ordering::Relaxed);
        }
        // ORDERING: Relaxed; statistic, written under the flag.
        self.link.value.store(usage, Ordering::Relaxed);
        // A charge racing with this reset: see `Counter::reset_peak`.
        counter.settle_peaks(usage, false);
    }
}

impl Drop for PeakWatcher<'_, '_> {
    fn drop(&mut self) {
        // ORDERING: Relaxed; only this watcher sets `registered`, and we own it now.
        if !self.link.registered.load(Ordering::Relaxed) {
            return;
        }
        let _writer = self.counter.conf.writer.lock();
        // SAFETY: the flag is held, so our links and our neighbours' links are ours to read
        // and write; the neighbours are live pinned watchers (they unlink under this flag).
        unsafe {
            let prev = self.link.prev.with(|p| *p);
            let next = self.link.next.with(|n| *n);
            if prev.is_null() {
                self.counter.conf.watchers.with_mut(|h| *h = next);
            } else {
                (*prev).next.with_mut(|n| *n = next);
            }
            if !next.is_null() {
                (*next).prev.with_mut(|p| *p = prev);
            }
        }
    }
}

impl fmt::Debug for PeakWatcher<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeakWatcher").field("peak", &self.read()).finish_non_exhaustive()
    }
}
