//! Allocations that report failure instead of aborting: what group and tree creation use,
//! so that a tenant created while memory is short gets an error (Linux's `mkdir` of a cgroup
//! returns `ENOMEM`) and the process lives.

use alloc_crate::alloc::alloc;
use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

/// The allocator refused memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutOfMemory;

/// `Box::new(value)`, or `Err` (and `value` dropped) if the allocator refuses.
pub(crate) fn try_box<T>(value: T) -> Result<Box<T>, OutOfMemory> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(Box::new(value));
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc(layout) }.cast::<T>();
    let Some(ptr) = NonNull::new(ptr) else { return Err(OutOfMemory) };
    // SAFETY: `ptr` is a fresh allocation of `T`'s layout from the global allocator, which
    // is what `Box` deallocates with; writing initialises it.
    unsafe {
        ptr.as_ptr().write(value);
        Ok(Box::from_raw(ptr.as_ptr()))
    }
}

/// A boxed slice of `len` values made by `f`, or `Err` if the allocator refuses.
pub(crate) fn try_boxed_slice<T>(len: usize, f: impl FnMut(usize) -> T) -> Result<Box<[T]>, OutOfMemory> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| OutOfMemory)?;
    v.extend((0..len).map(f));
    // Exact capacity: no reallocation.
    Ok(v.into_boxed_slice())
}

/// A boxed copy of `s`, or `Err` if the allocator refuses.
pub(crate) fn try_box_str(s: &str) -> Result<Box<str>, OutOfMemory> {
    let mut v = Vec::new();
    v.try_reserve_exact(s.len()).map_err(|_| OutOfMemory)?;
    v.extend_from_slice(s.as_bytes());
    let bytes = v.into_boxed_slice();
    // SAFETY: a copy of the bytes of a `str`, so valid UTF-8.
    Ok(unsafe { alloc_crate::str::from_boxed_utf8_unchecked(bytes) })
}
