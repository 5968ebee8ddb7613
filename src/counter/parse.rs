//! Parsing limits the way cgroup files are written: `"max"`, `"4096"`, `"512M"`, `"1G"`
//! (Linux's `page_counter_memparse()` on top of `memparse()`).

use core::fmt;

use super::COUNTER_MAX;

/// Why [`parse_amount`] rejected its input.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The input was empty (after trimming whitespace).
    Empty,
    /// A character that is not a digit, a known suffix or surrounding whitespace; `at` is its
    /// byte offset in the trimmed input.
    InvalidDigit {
        /// Byte offset in the trimmed input.
        at: usize,
    },
    /// The byte count does not fit 64 bits, or the amount in units is above
    /// [`COUNTER_MAX`]. (Linux clamps such values to "max"; a library user who typed a
    /// number almost certainly did not mean "unlimited", so this is an error.)
    TooLarge,
    /// `unit_bytes` was 0.
    ZeroUnit,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty amount"),
            ParseError::InvalidDigit { at } => write!(f, "invalid character at byte {at}"),
            ParseError::TooLarge => write!(f, "amount is above the counter maximum {COUNTER_MAX}"),
            ParseError::ZeroUnit => f.write_str("unit size must be at least one byte"),
        }
    }
}

impl core::error::Error for ParseError {}

/// Parses a limit written as cgroup files accept it into units of `unit_bytes` bytes.
///
/// * `"max"` → [`COUNTER_MAX`] ("no limit");
/// * a decimal byte count, or hexadecimal with `0x`, optionally followed by one binary suffix
///   `K`, `M`, `G`, `T`, `P` or `E` (either case; ×2¹⁰ … ×2⁶⁰);
/// * surrounding whitespace is ignored; anything else is [`ParseError::InvalidDigit`].
///
/// Bytes are converted to units by truncating division, as Linux does (4095 bytes are 0
/// pages of 4096). Leading zeros are decimal (Linux's base-0 `strtoull` would read `0755` as
/// octal; that is a trap, not a feature).
///
/// ```
/// use chargetree::counter::{COUNTER_MAX, ParseError, parse_amount};
///
/// assert_eq!(parse_amount("max", 4096), Ok(COUNTER_MAX));
/// assert_eq!(parse_amount("512M", 4096), Ok(131_072));
/// assert_eq!(parse_amount(" 1g\n", 1), Ok(1 << 30));
/// assert_eq!(parse_amount("4096", 4096), Ok(1));
/// assert_eq!(parse_amount("4095", 4096), Ok(0));
/// assert_eq!(parse_amount("12Q", 1), Err(ParseError::InvalidDigit { at: 2 }));
/// ```
pub fn parse_amount(input: &str, unit_bytes: usize) -> Result<usize, ParseError> {
    if unit_bytes == 0 {
        return Err(ParseError::ZeroUnit);
    }
    let s = input.trim();
    if s.is_empty() {
        return Err(ParseError::Empty);
    }
    if s == "max" {
        return Ok(COUNTER_MAX);
    }
    let bytes = s.as_bytes();
    let (radix, start) =
        if bytes.len() > 2 && (s.starts_with("0x") || s.starts_with("0X")) { (16u64, 2) } else { (10u64, 0) };
    let mut value: u64 = 0;
    let mut i = start;
    while i < bytes.len() {
        let Some(d) = (bytes[i] as char).to_digit(radix as u32) else {
            break;
        };
        value =
            value.checked_mul(radix).and_then(|v| v.checked_add(u64::from(d))).ok_or(ParseError::TooLarge)?;
        i += 1;
    }
    if i == start {
        return Err(ParseError::InvalidDigit { at: start });
    }
    if i < bytes.len() {
        let shift = match bytes[i] {
            b'k' | b'K' => 10,
            b'm' | b'M' => 20,
            b'g' | b'G' => 30,
            b't' | b'T' => 40,
            b'p' | b'P' => 50,
            b'e' | b'E' if radix == 10 => 60,
            _ => return Err(ParseError::InvalidDigit { at: i }),
        };
        if value.leading_zeros() < shift {
            return Err(ParseError::TooLarge);
        }
        value <<= shift;
        i += 1;
        if i < bytes.len() {
            return Err(ParseError::InvalidDigit { at: i });
        }
    }
    let units = value / unit_bytes as u64;
    if units > COUNTER_MAX as u64 {
        return Err(ParseError::TooLarge);
    }
    Ok(units as usize)
}
