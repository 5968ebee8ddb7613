//! The one place that names atomics, cells and spin hints.
//!
//! Three backends, picked at compile time:
//!
//! | cfg / feature            | atomics from            | used for                                  |
//! |--------------------------|-------------------------|-------------------------------------------|
//! | default                  | `core::sync::atomic`    | every target with pointer-width CAS       |
//! | `feature = "portable-atomic"` | `portable_atomic`  | targets without native RMW (thumbv6m, ...) |
//! | `cfg(loom)`              | `loom::sync::atomic`    | the crate's own loom models only          |
//!
//! Loom is selected by a `--cfg`, never by a Cargo feature: a feature could be switched on by
//! a downstream crate through feature unification (the convention of bytes and sharded-slab).
//!
//! Nothing outside this module may name `core::sync::atomic`, `portable_atomic` or `loom`
//! (the before-stop hook and review grep for it), so that one switch here moves every atomic
//! in the crate between the backends.
#![allow(dead_code, unused_imports)] // not every item is used under every backend

#[cfg(all(not(loom), not(feature = "portable-atomic")))]
pub(crate) mod atomic {
    pub(crate) use core::sync::atomic::{
        AtomicBool, AtomicIsize, AtomicPtr, AtomicU8, AtomicUsize, Ordering, compiler_fence, fence,
    };
}

#[cfg(all(not(loom), feature = "portable-atomic"))]
pub(crate) mod atomic {
    pub(crate) use core::sync::atomic::compiler_fence;
    pub(crate) use portable_atomic::{
        AtomicBool, AtomicIsize, AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence,
    };
}

#[cfg(loom)]
pub(crate) mod atomic {
    // FIXME(loom#117): loom has no `compiler_fence`; a `fence` is the (stronger) stand-in,
    // as in crossbeam-epoch's shim.
    pub(crate) use loom::sync::atomic::fence as compiler_fence;
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicIsize, AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence,
    };
}

/// `thread_local!` that loom can see (loom runs its threads on one OS thread).
#[cfg(loom)]
pub(crate) use loom::thread_local;
/// `thread_local!` that loom can see (loom runs its threads on one OS thread).
#[cfg(all(not(loom), feature = "std"))]
pub(crate) use std::thread_local;

/// Spin-loop hint. Under loom it yields to the model scheduler, so spin loops make progress.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Lets other threads run: the OS scheduler's yield with `std`, a spin hint without it, the
/// model scheduler under loom. For waits on another thread that may be descheduled.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(all(not(loom), feature = "std"))]
    std::thread::yield_now();
    #[cfg(all(not(loom), not(feature = "std")))]
    core::hint::spin_loop();
}

/// The barrier between a `SeqCst` read-modify-write of a counter's `usage` and the following
/// `SeqCst` load of its `max` (and, mirrored, between `set_max`'s swap of `max` and its
/// re-read of `usage`): the two halves of the store-buffering ("Dekker") protocol of
/// [`Counter::try_charge`](crate::counter::Counter::try_charge) vs
/// [`Counter::set_max`](crate::counter::Counter::set_max).
///
/// Outside loom this is empty: all four accesses are `SeqCst`, so they sit in the single
/// total order of `SeqCst` operations, and either the charger's load of `max` sees the new
/// limit or the setter's re-read of `usage` sees the charger's increment (C++20
/// \[atomics.order\] p4; on x86 the `lock xadd` is itself a full barrier). Loom treats
/// `SeqCst` accesses as `AcqRel` and would report a false violation, but it does model
/// `fence(SeqCst)`, so under loom the fence is real and the model checks the stronger
/// program. FIXME(loom: "SeqCst accesses are treated as AcqRel", loom README "Unsupported
/// features"): drop the loom fence if loom learns `SeqCst` accesses.
#[inline(always)]
pub(crate) fn dekker_fence() {
    #[cfg(loom)]
    atomic::fence(atomic::Ordering::SeqCst);
}

pub(crate) mod cell {
    /// `UnsafeCell` with loom's closure API (`with` / `with_mut`), so loom can track every
    /// access when the crate is built with `--cfg loom` (the recipe of loom's crate docs).
    #[cfg(loom)]
    pub(crate) use loom::cell::UnsafeCell;

    /// `UnsafeCell` with loom's closure API (`with` / `with_mut`), so loom can track every
    /// access when the crate is built with `--cfg loom` (the recipe of loom's crate docs).
    #[cfg(not(loom))]
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) const fn new(data: T) -> Self {
            Self(core::cell::UnsafeCell::new(data))
        }
    }

    #[cfg(not(loom))]
    impl<T: ?Sized> UnsafeCell<T> {
        /// Runs `f` with a shared raw pointer to the contents.
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with a mutable raw pointer to the contents.
        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

use atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set flag used to serialise *configuration writers* (limit writes,
/// peak resets). Never taken on a charge or uncharge path.
///
/// Writers hold it for a handful of instructions and never block while holding it, so
/// spinning is bounded by the other writer's critical section. It is not re-entrant and
/// must not be taken from an interrupt handler that can interrupt another writer of the same
/// counter on the same CPU (that would spin forever); the counter docs repeat this.
#[derive(Debug)]
pub(crate) struct SpinFlag(AtomicBool);

impl SpinFlag {
    crate::const_fn! {
        pub(crate) const fn new() -> Self {
            Self(AtomicBool::new(false))
        }
    }

    /// Takes the flag, spinning while another writer holds it.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_> {
        loop {
            // ORDERING: Acquire pairs with the Release store in `SpinGuard::drop`, so this
            // writer sees everything the previous writer did under the flag.
            if self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return SpinGuard(self);
            }
            while self.0.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }
}

/// Holds a [`SpinFlag`]; releases it on drop.
#[derive(Debug)]
pub(crate) struct SpinGuard<'a>(&'a SpinFlag);

impl Drop for SpinGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire CAS in `SpinFlag::lock`.
        (self.0).0.store(false, Ordering::Release);
    }
}
