//! The two halves of the stock's store-buffering handshake: a *light* barrier the owner of a
//! CPU slot executes on every operation, and a *heavy* barrier a remote drainer executes once
//! per drain.
//!
//! Symmetric mode: both are `fence(SeqCst)`. Always correct; the owner pays a full fence
//! (tens of cycles) on every stock operation.
//!
//! Asymmetric mode: the light barrier is only a compiler fence, and the heavy barrier is
//! Linux's `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running thread
//! of the process execute a full memory barrier before the call returns (threads that are
//! not running pass one at their next context switch). Together they order "owner stores
//! `busy`, then loads `steal`" against "drainer stores `steal`, then loads `busy`" exactly
//! like two SeqCst fences would, while the owner's fast path keeps no fence at all. This is
//! the technique of userspace RCU's `urcu-memb` flavour and of folly's
//! `asymmetricThreadFence`. It is outside what the Rust memory model can express, so loom
//! and miri check the symmetric mode (which they select automatically); the asymmetric one
//! rests on the kernel's documented guarantee (`membarrier(2)`).
//!
//! The mode is chosen once per tree, at creation: asymmetric only with `std` on Linux when
//! the process could register for expedited private membarriers.

use crate::sync::atomic::{Ordering, compiler_fence, fence};

/// The owner's half. `asymmetric` must be the value chosen for the tree at creation.
#[inline(always)]
pub(crate) fn light(asymmetric: bool) {
    if asymmetric {
        // ORDERING: a compiler fence only; the drainer's membarrier supplies the CPU-level
        // barrier on this thread (module docs).
        compiler_fence(Ordering::SeqCst);
    } else {
        // ORDERING: SeqCst fence, pairs with the SeqCst fence in `heavy` (symmetric Dekker).
        fence(Ordering::SeqCst);
    }
}

/// How many times the heavy barrier retries a failing `membarrier` before it reports the
/// failure (`ENOMEM` may be transient).
const MEMBARRIER_TRIES: usize = 3;

/// The drainer's half. Returns `false` if it could not be executed: `membarrier(2)` failed
/// even after registration (it can return `ENOMEM`, and a seccomp filter installed later can
/// make it return `EPERM`). Then owners that only compiler-fence are not ordered against the
/// caller, which must behave as if every owner were inside its critical section: take
/// nothing from any slot, trust no `busy == 0` (the degraded but safe path).
#[inline]
#[must_use]
pub(crate) fn heavy(asymmetric: bool) -> bool {
    if asymmetric {
        return (0..MEMBARRIER_TRIES).any(|_| membarrier::expedited());
    }
    // ORDERING: SeqCst fence, pairs with the owner's fence in `light` (symmetric mode).
    fence(Ordering::SeqCst);
    true
}

/// Whether the asymmetric mode is available in this process (registers on first call).
pub(crate) fn asymmetric_available() -> bool {
    membarrier::available()
}

#[cfg(all(feature = "std", target_os = "linux", not(loom), not(miri)))]
mod membarrier {
    use crate::sync::atomic::{AtomicU8, Ordering};

    // From <linux/membarrier.h>.
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;

    /// Registration is per process (membarrier(2)); so is this cache of its outcome.
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

    pub(super) fn available() -> bool {
        // ORDERING: Relaxed; idempotent registration, the kernel orders the rest.
        match STATE.load(Ordering::Relaxed) {
            YES => true,
            NO => false,
            _ => {
                // SAFETY: membarrier takes (cmd, flags, cpu_id) integers and touches no
                // memory of ours.
                let r = unsafe {
                    libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)
                };
                let ok = r == 0;
                STATE.store(if ok { YES } else { NO }, Ordering::Relaxed);
                ok
            }
        }
    }

    pub(super) fn expedited() -> bool {
        // SAFETY: as in `available`; only called after a successful registration.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
        r == 0
    }
}

#[cfg(not(all(feature = "std", target_os = "linux", not(loom), not(miri))))]
mod membarrier {
    pub(super) fn available() -> bool {
        false
    }
    pub(super) fn expedited() -> bool {
        false
    }
}
