//! Decoding fuzz input: a cursor over the bytes that never fails. Once the input is used up
//! every read returns zero, so any byte string is a valid program (smallvec's `fuzz` style:
//! one byte picks the operation, the following bytes are its arguments).

use chargetree::COUNTER_MAX;

/// A cursor over the fuzzer's bytes.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `N` bytes as a little-endian integer (missing bytes read as 0).
    fn le<const N: usize>(&mut self) -> u64 {
        let mut v = 0u64;
        for i in 0..N {
            v |= u64::from(self.u8()) << (8 * i);
        }
        v
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        self.le::<2>() as u16
    }

    /// A little-endian `usize` (8 bytes).
    pub fn usize(&mut self) -> usize {
        self.le::<8>() as usize
    }

    /// A flag.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// An index below `len` (`len > 0`).
    pub fn index(&mut self, len: usize) -> usize {
        debug_assert!(len > 0);
        usize::from(self.u8()) % len
    }

    /// An amount: mostly small, sometimes the edges of the representable range (and past
    /// them), sometimes anything at all.
    pub fn amount(&mut self) -> usize {
        match self.u8() % 16 {
            0..=7 => usize::from(self.u8() % 32),
            8 | 9 => usize::from(self.u8()),
            10 => COUNTER_MAX,
            11 => usize::MAX,
            12 => COUNTER_MAX - usize::from(self.u8()),
            13 => COUNTER_MAX + 1 + usize::from(self.u8()),
            14 => 1usize << (self.u8() % 64),
            _ => self.usize(),
        }
    }

    /// A limit or protection value: like [`Input::amount`], but the small values stay
    /// within what a few charges reach.
    pub fn limit(&mut self) -> usize {
        match self.u8() % 8 {
            0..=4 => usize::from(self.u8() % 128),
            5 => COUNTER_MAX,
            _ => self.amount(),
        }
    }
}

/// Whether `FUZZ_TRACE` is set: the interpreters then print each operation to stderr (for
/// reading a crash: `FUZZ_TRACE=1 cargo +nightly fuzz run <target> <crash file>`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// Prints an operation when [`tracing`] is on.
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::input::tracing() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use trace;
