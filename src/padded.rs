//! Cache-line padding, so that write-hot fields do not share a line with read-mostly ones.

use core::fmt;
use core::ops::Deref;

/// Pads and aligns a value to the length of a cache line (or of the pair of lines an adjacent-
/// line prefetcher pulls in together).
///
/// The per-architecture sizes follow the survey in crossbeam-utils' `cache_padded.rs`
/// (Intel's optimisation manual for the 128-byte spatial prefetcher on x86-64, Arm's and IBM's
/// manuals for aarch64 / powerpc64, 32 bytes on 32-bit Arm, MIPS and friends, 256 on s390x).
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "powerpc64"), repr(align(128)))]
#[cfg_attr(
    any(
        target_arch = "arm",
        target_arch = "mips",
        target_arch = "mips32r6",
        target_arch = "mips64",
        target_arch = "mips64r6",
        target_arch = "sparc",
        target_arch = "hexagon",
    ),
    repr(align(32))
)]
#[cfg_attr(target_arch = "m68k", repr(align(16)))]
#[cfg_attr(target_arch = "s390x", repr(align(256)))]
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "powerpc64",
        target_arch = "arm",
        target_arch = "mips",
        target_arch = "mips32r6",
        target_arch = "mips64",
        target_arch = "mips64r6",
        target_arch = "sparc",
        target_arch = "hexagon",
        target_arch = "m68k",
        target_arch = "s390x",
    )),
    repr(align(64))
)]
#[derive(Default)]
pub(crate) struct CachePadded<T>(pub(crate) T);

// Without `alloc` only the counter's `LinePadded` is built.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
impl<T> CachePadded<T> {
    crate::const_fn! {
        pub(crate) const fn new(value: T) -> Self {
            Self(value)
        }
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for CachePadded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Pads and aligns a value to one cache line, as Linux's `L1_CACHE_BYTES`: 64 bytes on x86-64
/// and aarch64, elsewhere [`CachePadded`]'s size (which already is one line there: 128 on
/// powerpc64, 256 on s390x, 32 on 32-bit Arm and MIPS, ...). For structures allocated per
/// group, where `CachePadded`'s prefetch pairs would double the footprint: the counter's
/// lines (see `Counter`'s layout note).
pub(crate) struct LinePadded<T> {
    pub(crate) value: T,
    /// Sizeless; only its alignment counts (a struct's size is a multiple of its alignment).
    _align: [LineAlign; 0],
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(align(64))]
struct LineAlign;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
type LineAlign = CachePadded<()>;

impl<T> LinePadded<T> {
    crate::const_fn! {
        pub(crate) const fn new(value: T) -> Self {
            Self { value, _align: [] }
        }
    }
}

impl<T> Deref for LinePadded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.value
    }
}
