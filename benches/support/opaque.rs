//! Register-only value hiding for the benches' hot loops, shared by `benches/counter.rs`
//! and `benches/stock.rs`.

#![allow(dead_code)] // each includer uses a different part

/// Hides `x` from the optimiser without touching memory: an empty `asm!` that "may modify"
/// the register holding it. Not `pure`, so it is neither hoisted out of the loop nor merged.
///
/// `std::hint::black_box` is not used on the hot path on purpose: it passes its argument by
/// address, so every use is a store to the stack, and a `lock`ed RMW must wait for every
/// older store to drain from the store buffer. Two such stores between the baseline's two
/// RMWs made the bare atomic pair *slower* than a whole depth-1 `try_charge` + `uncharge`
/// (see `atomic_blackbox` in `benches/counter.rs`, and BENCHMARKS.md).
#[inline(always)]
pub(crate) fn opaque(mut x: usize) -> usize {
    // SAFETY: an empty asm block; it reads and "writes" one register and nothing else.
    unsafe { core::arch::asm!("/* {0} */", inout(reg) x, options(nomem, nostack, preserves_flags)) };
    x
}

/// Consumes `x` in a register (so the RMW result is live and x86 emits `lock xadd`, like the
/// counter's path, rather than `lock add`), without a store.
#[inline(always)]
pub(crate) fn sink(x: usize) {
    // SAFETY: an empty asm block that only reads one register.
    unsafe { core::arch::asm!("/* {0} */", in(reg) x, options(nomem, nostack, preserves_flags)) };
}

/// `opaque` for a reference.
#[inline(always)]
pub(crate) fn opaque_ref<T>(r: &T) -> &T {
    let p = opaque(core::ptr::from_ref(r) as usize) as *const T;
    // SAFETY: `p` is `r`'s address, unchanged (the asm block is empty).
    unsafe { &*p }
}

/// `opaque` for a non-null pointer.
#[inline(always)]
pub(crate) fn opaque_ptr<T>(p: core::ptr::NonNull<T>) -> core::ptr::NonNull<T> {
    let q = opaque(p.as_ptr() as usize) as *mut T;
    // SAFETY: `q` is `p`'s address, unchanged (the asm block is empty), so non-null.
    unsafe { core::ptr::NonNull::new_unchecked(q) }
}
