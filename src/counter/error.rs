//! Typed errors of the counter (arrayvec's `CapacityError` style: the payload says what
//! failed and where; `Display` and `core::error::Error` always).

use core::fmt;

use super::{COUNTER_MAX, Counter};

/// Why [`Counter::try_charge`] failed. Nothing stays charged when it is returned.
///
/// It borrows the refusing counter; [`ChargeError::to_owned`] gives a `'static` copy of what
/// it says (for `?` into `Box<dyn Error>`).
#[non_exhaustive]
#[derive(Clone, Copy)]
pub enum ChargeError<'c, 'p> {
    /// The charge would have put `at` above its `max`. `at` is the lowest such node on the
    /// path (this node or an ancestor: Linux's `*fail` out-parameter), `level` its distance
    /// from the node that was charged (0 = that node itself).
    Limit {
        /// The lowest node whose limit was exceeded.
        at: &'c Counter<'p>,
        /// How many parents up from the charged node `at` is.
        level: usize,
    },
    /// The amount is larger than [`COUNTER_MAX`]: no counter can hold it.
    TooLarge {
        /// The amount asked for.
        requested: usize,
    },
}

impl ChargeError<'_, '_> {
    /// For [`ChargeError::Limit`], the failing node's level; `None` for `TooLarge`.
    #[must_use]
    pub fn level(&self) -> Option<usize> {
        match self {
            ChargeError::Limit { level, .. } => Some(*level),
            ChargeError::TooLarge { .. } => None,
        }
    }

    /// What the error says, without the borrow: the refusing node's level, limit and usage
    /// as read now.
    ///
    /// ```
    /// use chargetree::counter::Counter;
    ///
    /// fn charge(c: &Counter<'_>) -> Result<(), Box<dyn std::error::Error>> {
    ///     c.try_charge(10).map_err(|e| e.to_owned())?;
    ///     Ok(())
    /// }
    /// let c = Counter::new_root();
    /// c.set_max(5).unwrap();
    /// assert!(charge(&c).unwrap_err().to_string().contains("max 5"));
    /// ```
    #[must_use]
    pub fn to_owned(&self) -> OwnedChargeError {
        match *self {
            ChargeError::Limit { at, level } => {
                OwnedChargeError::Limit { level, max: at.max(), usage: at.usage() }
            }
            ChargeError::TooLarge { requested } => OwnedChargeError::TooLarge { requested },
        }
    }
}

/// A [`ChargeError`] without its borrow ([`ChargeError::to_owned`]).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnedChargeError {
    /// The node `level` parents up refused: its `max` and its `usage` when the error was
    /// made owned.
    #[non_exhaustive]
    Limit {
        /// How many parents up from the charged node the refusing one is.
        level: usize,
        /// Its limit.
        max: usize,
        /// Its usage.
        usage: usize,
    },
    /// The amount is larger than [`COUNTER_MAX`].
    #[non_exhaustive]
    TooLarge {
        /// The amount asked for.
        requested: usize,
    },
}

impl fmt::Display for OwnedChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnedChargeError::Limit { level, max, usage } => {
                write!(f, "limit exceeded {level} level(s) up: max {max}, usage {usage}")
            }
            OwnedChargeError::TooLarge { requested } => {
                write!(f, "amount {requested} is above the counter maximum {COUNTER_MAX}")
            }
        }
    }
}

impl core::error::Error for OwnedChargeError {}

impl fmt::Debug for ChargeError<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChargeError::Limit { at, level } => f
                .debug_struct("Limit")
                .field("level", level)
                .field("max", &at.max())
                .field("usage", &at.usage())
                .finish(),
            ChargeError::TooLarge { requested } => {
                f.debug_struct("TooLarge").field("requested", requested).finish()
            }
        }
    }
}

impl fmt::Display for ChargeError<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChargeError::Limit { at, level } => {
                write!(f, "limit exceeded {level} level(s) up: max {}, usage {}", at.max(), at.usage())
            }
            ChargeError::TooLarge { requested } => {
                write!(f, "amount {requested} is above the counter maximum {COUNTER_MAX}")
            }
        }
    }
}

/// A forced [`Counter::charge`] would have put some node above [`COUNTER_MAX`]; nothing was
/// charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// The amount asked for.
    pub requested: usize,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "charging {} would overflow the counter maximum {COUNTER_MAX}", self.requested)
    }
}

/// [`Counter::try_uncharge`] asked for more than was charged. The clamp has been applied
/// and counted; `forgiven` of the `requested` amount was never charged and was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underflow {
    /// The amount asked for.
    pub requested: usize,
    /// The part of it that the counters did not hold.
    pub forgiven: usize,
}

impl fmt::Display for Underflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uncharged {} but only {} was charged; {} forgiven",
            self.requested,
            self.requested - self.forgiven,
            self.forgiven
        )
    }
}

/// Why a limit or protection write failed. Nothing changed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    /// Usage is above the requested limit (Linux's `-EBUSY` from `page_counter_set_max`), or
    /// concurrent chargers kept growing it through every retry.
    Busy {
        /// The usage seen.
        usage: usize,
        /// The limit asked for.
        limit: usize,
    },
    /// The value is above [`COUNTER_MAX`] (use `COUNTER_MAX` itself for "no limit").
    TooLarge {
        /// The value asked for.
        value: usize,
    },
    /// The node's protection was revoked (its group went offline): it claims no `min` or
    /// `low` any more.
    Retired,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Busy { usage, limit } => {
                write!(f, "usage {usage} is above the requested limit {limit}")
            }
            LimitError::TooLarge { value } => {
                write!(f, "value {value} is above the counter maximum {COUNTER_MAX}")
            }
            LimitError::Retired => f.write_str("the group is offline: it claims no protection"),
        }
    }
}

impl core::error::Error for ChargeError<'_, '_> {}
impl core::error::Error for Overflow {}
impl core::error::Error for Underflow {}
impl core::error::Error for LimitError {}
