//! "This CPU's slot" without a kernel: who is running, as an index into per-CPU arrays.
//!
//! The kernel's per-CPU data relies on preemption being disabled while a CPU's slot is used.
//! A library cannot disable preemption, so the notion is abstracted as a [`CpuProvider`]:
//!
//! | provider | where | what a "CPU" is | exclusive? |
//! |----------|-------|-----------------|------------|
//! | [`ThreadCpus`] (`std`) | ordinary processes | a live thread (indices are reused after a thread exits; what a thread cached in any tree's stock goes back to the counters when it exits) | yes: one thread per index, so migration and preemption cannot make two contexts share one |
//! | your own `unsafe impl` | bare metal, hypervisors | a physical CPU or pinned vCPU thread | yes, by the embedder's contract (interrupts off, pinning) |
//! | [`TestCpus`] | tests, loom | whatever index the test sets with [`TestCpus::run_on`] | by the test's discipline |
//! | [`NoCpus`] | the safe `no_std` default | none: per-CPU caches are bypassed | trivially |
//!
//! Per-CPU data indexed by a provider is used two ways: as a *hint* (spreading a group's
//! reference count over shards, where any index is correct and a good one only avoids cache
//! line bouncing) and as an *owner* (a per-CPU charge stock, where the index must not be used
//! by two contexts at once). The safety contract below is written for the stronger use.

use core::ptr::NonNull;

#[cfg(all(feature = "std", not(loom)))]
pub use thread::{EXIT_HOOKS, MAX_THREADS, ThreadCpus};

/// Tells chargetree which CPU-like execution context the caller runs on.
///
/// # Safety
///
/// Implementations must guarantee all of:
///
/// 1. [`count`](CpuProvider::count) returns the same value for the provider's whole life.
/// 2. [`current`](CpuProvider::current) returns `None` or `Some(i)` with `i < count()`.
/// 3. **Exclusivity**: if `current()` returns `Some(i)` in an execution context, then until
///    that context returns from the chargetree call that asked, no other context obtains `i`
///    *except* one nested inside it on the same CPU (an interrupt or signal handler that runs
///    to completion before the interrupted code resumes). chargetree detects such nesting and
///    falls back to its slow paths, so nested use is safe; concurrent use from two CPUs or
///    two threads is not.
///
/// A bare-metal embedder satisfies 3 by calling into chargetree with the CPU pinned (no
/// migration) and with interrupts that charge disabled or nested as above; a hypervisor by
/// pinning each vCPU thread to its index.
///
/// # Example
///
/// ```
/// use chargetree::cpu::CpuProvider;
///
/// /// A single-core microcontroller whose interrupt handlers never run chargetree code.
/// struct OneCore;
///
/// // SAFETY: one CPU, so there is nobody to share index 0 with; interrupts do not charge.
/// unsafe impl CpuProvider for OneCore {
///     fn count(&self) -> usize { 1 }
///     fn current(&self) -> Option<usize> { Some(0) }
/// }
/// assert_eq!(OneCore.current(), Some(0));
/// ```
pub unsafe trait CpuProvider: Send + Sync + 'static {
    /// The number of CPU slots; constant.
    fn count(&self) -> usize;
    /// The caller's slot, or `None` to bypass per-CPU caches for this call.
    fn current(&self) -> Option<usize>;

    /// Crate-internal (a provider whose contexts end: [`ThreadCpus`]). Asks the provider to
    /// run `hook` in the context that holds `cpu` when that context gives `cpu` up (a thread
    /// exits), before any other context can get `cpu`. `None`: the provider's contexts never
    /// end (the default); `Some(false)`: it cannot take another hook for `cpu` now.
    ///
    /// # Safety
    ///
    /// Called by the context that holds `cpu`; `hook` stays valid until
    /// [`CpuProvider::unwatch_exit`] for it has returned.
    #[doc(hidden)]
    unsafe fn watch_exit(&self, cpu: usize, hook: NonNull<SlotHook>) -> Option<bool> {
        let _ = (cpu, hook);
        None
    }

    /// Crate-internal: a number for spreading a reference count's shards: any value is
    /// correct (the shards are summed), and values that differ between contexts running at
    /// once spread the contention. [`CpuProvider::current`] (or 0) by default.
    #[doc(hidden)]
    #[inline(always)]
    fn shard_hint(&self) -> usize {
        self.current().unwrap_or(0)
    }

    /// Crate-internal: forgets `hook` for `cpu`, waiting while it runs.
    ///
    /// # Safety
    ///
    /// `hook` was passed to [`CpuProvider::watch_exit`] for `cpu` (or never was).
    #[doc(hidden)]
    unsafe fn unwatch_exit(&self, cpu: usize, hook: NonNull<SlotHook>) {
        let _ = (cpu, hook);
    }
}

/// Crate-internal: what a tree runs when a context that cached something for it goes away
/// (see [`CpuProvider::watch_exit`]). Opaque; created only by the crate.
#[doc(hidden)]
pub struct SlotHook {
    run: unsafe fn(*const (), usize),
    data: *const (),
}

impl SlotHook {
    /// A hook that calls `run(data, cpu)`.
    #[cfg(feature = "alloc")]
    pub(crate) const fn new(run: unsafe fn(*const (), usize), data: *const ()) -> Self {
        Self { run, data }
    }

    /// Points the hook at its data (once it has an address).
    #[cfg(feature = "alloc")]
    pub(crate) fn set_data(&mut self, data: *const ()) {
        self.data = data;
    }

    /// Runs the hook for `cpu`.
    ///
    /// # Safety
    ///
    /// As promised by `watch_exit`'s caller: the hook's data is alive, and the caller is the
    /// context that held `cpu`, giving it up.
    #[cfg_attr(not(all(feature = "std", not(loom))), allow(dead_code))]
    unsafe fn run(&self, cpu: usize) {
        // SAFETY: forwarded to the caller.
        unsafe { (self.run)(self.data, cpu) }
    }
}

impl core::fmt::Debug for SlotHook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad("SlotHook { .. }")
    }
}

// SAFETY: a hook is two words the crate sets up so that running it on the exiting thread is
// sound (its data is `Sync` stock state, touched as the slot's owner).
unsafe impl Send for SlotHook {}
// SAFETY: see `Send`; `run` takes `&self` and touches only data meant for it.
unsafe impl Sync for SlotHook {}

/// The provider used when none is named: [`ThreadCpus`] with `std`, [`NoCpus`] without.
#[cfg(all(feature = "std", not(loom)))]
pub type DefaultCpus = ThreadCpus;
/// The provider used when none is named: [`ThreadCpus`] with `std`, [`NoCpus`] without.
#[cfg(not(all(feature = "std", not(loom))))]
pub type DefaultCpus = NoCpus;

/// No CPU slots: every per-CPU cache is bypassed and reference counts use one shard. Always
/// correct; the safe default without `std`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCpus;

// SAFETY: `current` always returns `None`, so no index is ever handed out.
unsafe impl CpuProvider for NoCpus {
    #[inline]
    fn count(&self) -> usize {
        0
    }
    #[inline]
    fn current(&self) -> Option<usize> {
        None
    }
}

#[cfg(all(feature = "std", not(loom)))]
mod thread {
    use core::cell::Cell;
    use core::ptr::{self, NonNull};

    use super::{CpuProvider, SlotHook};
    use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    /// How many threads can hold an index at once, process-wide. Threads beyond it get
    /// `None` (they bypass per-CPU caches) until an index is freed by a thread exiting.
    pub const MAX_THREADS: usize = 4096;
    const BITS: usize = usize::BITS as usize;
    const WORDS: usize = MAX_THREADS / BITS;
    const UNASSIGNED: usize = usize::MAX;
    /// Set while a thread takes its first index: a nested call (a signal handler) that finds
    /// it bypasses the caches instead of taking a second index the interrupted assignment
    /// would then overwrite (and leak).
    const ASSIGNING: usize = usize::MAX - 1;

    /// How many trees a thread's index can carry exit hooks for at once (trees that cached
    /// something on that thread and still exist). A thread that uses more trees than this at
    /// once bypasses the stock of the others.
    pub const EXIT_HOOKS: usize = 8;

    /// Tag of a hook pointer while its hook runs (hooks are word-aligned).
    const RUNNING: usize = 1;

    /// Per index: the hooks of the trees whose stocks the thread holding the index uses;
    /// run by that thread at exit, before it gives the index back. Lock-free and
    /// allocation-free like `TAKEN` (only the rows of used indices are ever touched).
    ///
    /// Protocol X (exit vs a tree's drop), per entry:
    ///
    /// | step | exiting thread | dropping tree (`unwatch_exit`) |
    /// |------|----------------|--------------------------------|
    /// | 1 | CAS `hook → hook|RUNNING` (Acquire) | CAS `hook → null` (AcqRel); fails on `RUNNING` |
    /// | 2 | run the hook (drain its own slot) | on failure: spin until the entry changes |
    /// | 3 | store `null` (Release) | done: the hook is never run again |
    ///
    /// Only the owner of the index adds hooks (when a tree first caches for it), so an
    /// exiting thread races only with trees forgetting theirs.
    static HOOKS: [[AtomicPtr<SlotHook>; EXIT_HOOKS]; MAX_THREADS] =
        [const { [const { AtomicPtr::new(ptr::null_mut()) }; EXIT_HOOKS] }; MAX_THREADS];

    /// Occupancy bitmap of thread indices. Lock-free and allocation-free, so taking an index
    /// from inside a global allocator is safe. This is the only process-wide state in the
    /// crate: like `std::thread::ThreadId`, thread identity is a property of the process.
    static TAKEN: [AtomicUsize; WORDS] = [const { AtomicUsize::new(0) }; WORDS];

    /// Gives the thread's index back when the thread exits.
    struct Release(Cell<usize>);

    impl Drop for Release {
        fn drop(&mut self) {
            let i = self.0.get();
            if i != UNASSIGNED {
                // The trees that cached something for this thread get it back now (Linux
                // drains a dead CPU's stock: `memcg_hotplug_cpu_dead`), while the index is
                // still ours: their stock slot is ours to drain as its owner.
                run_exit_hooks(i);
                // The thread can still run thread-local destructors that charge: from here on
                // it has no index.
                let _ = INDEX.try_with(|c| c.set(UNASSIGNED));
                // ORDERING: Release pairs with the Acquire CAS in `take_index`, so the next
                // thread to get this index sees everything this thread did under it (the
                // per-CPU structures it owned are handed over with the index).
                TAKEN[i / BITS].fetch_and(!(1 << (i % BITS)), Ordering::Release);
            }
        }
    }

    std::thread_local! {
        // Read on every charge: no destructor, so reading it is one thread-local load with no
        // registration check.
        static INDEX: Cell<usize> = const { Cell::new(UNASSIGNED) };
        // Written once per thread; its destructor returns the index.
        static RELEASE: Release = const { Release(Cell::new(UNASSIGNED)) };
    }

    impl ThreadCpus {
        /// [`CpuProvider::current`] for an index that is not below `count`: none yet (assign
        /// one), one being assigned (a nested context: bypass), or one beyond `count`.
        #[cold]
        #[inline(never)]
        fn current_cold(&self, i: usize) -> Option<usize> {
            let i = if i == UNASSIGNED { assign() } else { i };
            if i < self.count { Some(i) } else { None }
        }
    }

    /// Assigns this thread an index (first call on a thread, or after its release at exit).
    #[cold]
    #[inline(never)]
    fn assign() -> usize {
        // Register the destructor first: if the thread is already tearing down its
        // thread-locals, do not take an index that could never be given back.
        let Ok(()) = RELEASE.try_with(|_| ()) else { return UNASSIGNED };
        let _ = INDEX.try_with(|c| c.set(ASSIGNING));
        let i = take_index();
        if i != UNASSIGNED {
            let _ = RELEASE.try_with(|r| r.0.set(i));
        }
        let _ = INDEX.try_with(|c| c.set(i));
        i
    }

    /// Protocol X, exiting side: runs every hook registered for index `i`.
    fn run_exit_hooks(i: usize) {
        for entry in &HOOKS[i] {
            // ORDERING: Acquire pairs with the Release CAS in `watch`: the hook's data is
            // visible.
            let p = entry.load(Ordering::Acquire);
            let Some(hook) = NonNull::new(p) else { continue };
            let running = hook.as_ptr().map_addr(|a| a | RUNNING);
            // ORDERING: Acquire, as above; a failure means the tree just forgot the hook.
            if entry.compare_exchange(p, running, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // SAFETY: the entry held the hook, so its tree has not returned from
                // `unwatch_exit` (which waits while RUNNING is set): the hook is valid; this
                // thread holds index `i` and is giving it up.
                unsafe { hook.as_ref().run(i) };
                // ORDERING: Release pairs with the tree's Acquire load while it waits.
                entry.store(ptr::null_mut(), Ordering::Release);
            }
        }
    }

    fn take_index() -> usize {
        for (w, word) in TAKEN.iter().enumerate() {
            // ORDERING: Relaxed pre-check; the CAS below decides.
            let mut bits = word.load(Ordering::Relaxed);
            while bits != usize::MAX {
                let bit = (!bits).trailing_zeros() as usize;
                // ORDERING: Acquire pairs with the Release in `Index::drop` of the thread that
                // gave this index back.
                match word.compare_exchange_weak(
                    bits,
                    bits | (1 << bit),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return w * BITS + bit,
                    Err(now) => bits = now,
                }
            }
        }
        UNASSIGNED
    }

    /// Each live thread is its own "CPU": the thread's index is taken from a process-wide
    /// lock-free bitmap on first use and given back when the thread exits.
    ///
    /// Exclusive by construction (two live threads never share an index), so it is correct
    /// whatever the OS does with migration and preemption. The cost of `current()` is one
    /// thread-local read.
    ///
    /// The first call on a thread registers a thread-local destructor, which the C library
    /// may implement with an allocation (glibc's `__cxa_thread_atexit_impl` does). Code that
    /// runs inside a global allocator should call [`ThreadCpus::register_current_thread`]
    /// once per thread beforehand, or tolerate that one re-entrant allocation.
    #[derive(Clone, Copy, Debug)]
    pub struct ThreadCpus {
        count: usize,
    }

    impl ThreadCpus {
        /// A provider with `count` slots: threads whose index is `>= count` bypass per-CPU
        /// caches. `count` is clamped to [`MAX_THREADS`].
        #[must_use]
        pub const fn new(count: usize) -> Self {
            Self { count: if count > MAX_THREADS { MAX_THREADS } else { count } }
        }

        /// Takes this thread's index now, outside any allocator, if it has none yet.
        pub fn register_current_thread() -> Option<usize> {
            Self::new(MAX_THREADS).current()
        }
    }

    impl Default for ThreadCpus {
        /// 256 slots: enough for the threads of most processes; per-CPU arrays of a tree
        /// are sized by it.
        ///
        /// Under miri the default is 16 slots: miri interprets the construction and the
        /// final drain of every slot of every tree, which at 256 slots made each test that
        /// builds a tree take seconds. Threads beyond the 16th bypass the caches there, the
        /// documented behaviour for any index `>= count`.
        fn default() -> Self {
            Self::new(if cfg!(miri) { 16 } else { 256 })
        }
    }

    // SAFETY: (1) `count` is fixed at construction. (2) indices `>= count` are mapped to
    // `None`. (3) an index is owned by exactly one live thread (bitmap CAS), and a thread's
    // own nested contexts (signal handlers) are the only others that can observe it.
    unsafe impl CpuProvider for ThreadCpus {
        #[inline]
        fn count(&self) -> usize {
            self.count
        }

        #[inline(always)]
        fn current(&self) -> Option<usize> {
            let i = INDEX.with(Cell::get);
            // One comparison on the fast path: `UNASSIGNED` and `ASSIGNING` are never below
            // `count`, so they take the cold path with the indices `>= count`.
            if i < self.count {
                return Some(i);
            }
            self.current_cold(i)
        }

        /// The thread's index as it is, without taking one: a thread that has none yet (or
        /// is past `count`) spreads onto whichever shard the mask makes of it.
        #[inline(always)]
        fn shard_hint(&self) -> usize {
            INDEX.with(Cell::get)
        }

        unsafe fn watch_exit(&self, cpu: usize, hook: NonNull<SlotHook>) -> Option<bool> {
            let row = HOOKS.get(cpu)?;
            let p = hook.as_ptr();
            // ORDERING: Relaxed; only this thread (the index's owner) adds to its row.
            if row.iter().any(|e| e.load(Ordering::Relaxed) == p) {
                return Some(true);
            }
            // ORDERING: Release publishes the hook's data to `run_exit_hooks`.
            Some(row.iter().any(|e| {
                e.compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed).is_ok()
            }))
        }

        unsafe fn unwatch_exit(&self, cpu: usize, hook: NonNull<SlotHook>) {
            let Some(row) = HOOKS.get(cpu) else { return };
            let p = hook.as_ptr();
            let running = p.map_addr(|a| a | RUNNING);
            for e in row {
                loop {
                    // ORDERING: AcqRel: Acquire (on success or while waiting) orders the end
                    // of a run before the caller frees the hook.
                    match e.compare_exchange(p, ptr::null_mut(), Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => break,
                        Err(now) if now == running => crate::sync::yield_now(),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// Deterministic CPUs for tests: each thread (or loom thread) runs "on" whatever CPU the test
/// sets with [`TestCpus::run_on`]; outside it, on none.
///
/// The exclusivity of the [`CpuProvider`] contract is the caller's obligation, which is why
/// [`TestCpus::run_on`] is an `unsafe fn`: two threads that run on the same CPU at the same
/// time share its stock slot, and the stock's reference ownership breaks (counts wrap,
/// counters drift). Safe code cannot impersonate a CPU.
#[cfg(any(feature = "std", loom))]
#[derive(Clone, Copy, Debug)]
pub struct TestCpus {
    count: usize,
}

#[cfg(any(feature = "std", loom))]
crate::sync::thread_local! {
    // Not `const { .. }`: loom's `thread_local!` does not accept it.
    #[allow(clippy::missing_const_for_thread_local)]
    static TEST_CPU: core::cell::Cell<Option<usize>> = core::cell::Cell::new(None);
}

#[cfg(any(feature = "std", loom))]
impl TestCpus {
    /// A provider with `count` CPUs.
    #[must_use]
    pub const fn new(count: usize) -> Self {
        Self { count }
    }

    /// Runs `f` with this thread impersonating `cpu` (nesting restores the outer CPU).
    ///
    /// # Safety
    ///
    /// While `f` runs, no other thread may run chargetree code "on" `cpu` of any `TestCpus`
    /// used by the same tree (that is, inside another `run_on(cpu, ..)`): the
    /// [`CpuProvider`] contract's exclusivity. Nesting on the same thread is allowed, as
    /// is running on distinct CPUs from distinct threads.
    ///
    /// ```
    /// use chargetree::cpu::TestCpus;
    /// use chargetree::group::{Tree, TreeConfig};
    ///
    /// let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(2)));
    /// let root = tree.root();
    /// std::thread::scope(|s| {
    ///     for cpu in 0..2 {
    ///         let root = &root;
    ///         // SAFETY: each thread runs on a CPU of its own.
    ///         s.spawn(move || unsafe { TestCpus::run_on(cpu, || root.try_charge(1).unwrap()) });
    ///     }
    /// });
    /// ```
    pub unsafe fn run_on<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<usize>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let prev = self.0;
                TEST_CPU.with(|c| c.set(prev));
            }
        }
        let _restore = Restore(TEST_CPU.with(|c| c.replace(Some(cpu))));
        f()
    }
}

// SAFETY: (1) `count` is fixed. (2) out-of-range impersonations map to `None`. (3) an index is
// handed out only inside `run_on`, an `unsafe fn` whose caller promises exclusivity.
#[cfg(any(feature = "std", loom))]
unsafe impl CpuProvider for TestCpus {
    #[inline]
    fn count(&self) -> usize {
        self.count
    }
    #[inline]
    fn current(&self) -> Option<usize> {
        TEST_CPU.with(|c| c.get()).filter(|&i| i < self.count)
    }
}
