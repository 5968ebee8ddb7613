//! What an embedder configures for one level of the pool: its limits and its guarantee.

use core::fmt;

use chargetree::counter::{COUNTER_MAX, LimitError};
use chargetree::group::GroupError;

/// The budget of one level (global, tenant, session, query, ...), in bytes.
///
/// Every field defaults to "none": no `max`, no `high`, nothing guaranteed, nothing reserved
/// for unspillable consumers. Amounts are bytes and at most
/// [`COUNTER_MAX`](chargetree::counter::COUNTER_MAX) (2⁵¹ − 1 bytes, about 2 PiB, on 64-bit
/// targets), chargetree's largest counter value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub(crate) max: Option<usize>,
    pub(crate) high: Option<usize>,
    pub(crate) guarantee: usize,
    pub(crate) unspillable_reserve: usize,
}

impl Budget {
    /// No limits, nothing guaranteed.
    #[must_use]
    pub const fn new() -> Self {
        Self { max: None, high: None, guarantee: 0, unspillable_reserve: 0 }
    }

    /// The hard limit: `try_grow` is refused when this level would go above it (the
    /// chargetree group's `max`).
    #[must_use]
    pub const fn max(mut self, bytes: usize) -> Self {
        self.max = Some(bytes);
        self
    }

    /// The early-spill threshold: while this level is above it, `try_grow` of *spillable*
    /// consumers below it is refused (they spill), and unspillable consumers still get memory
    /// up to `max` (the chargetree group's `high`).
    #[must_use]
    pub const fn high(mut self, bytes: usize) -> Self {
        self.high = Some(bytes);
        self
    }

    /// Bytes this level is guaranteed against its siblings (the chargetree group's `min`):
    /// while this level uses less than its guarantee, the difference is kept free for it and
    /// its siblings' consumers are refused rather than take it. Meaningless on the global
    /// level, which has no siblings.
    #[must_use]
    pub const fn guarantee(mut self, bytes: usize) -> Self {
        self.guarantee = bytes;
        self
    }

    /// Headroom for unspillable consumers: registering consumers under this level splits
    /// them into a `spillable` and an `unspillable` group, the latter guaranteed `bytes`, so
    /// spillable consumers are refused (and spill) before they take the last `bytes` below
    /// this level's `max`.
    #[must_use]
    pub const fn unspillable_reserve(mut self, bytes: usize) -> Self {
        self.unspillable_reserve = bytes;
        self
    }

    /// Checks every amount is representable and the reserve fits the limit.
    pub fn validate(&self) -> Result<(), PoolError> {
        for value in
            [self.max, self.high, Some(self.guarantee), Some(self.unspillable_reserve)].into_iter().flatten()
        {
            if value > COUNTER_MAX {
                return Err(PoolError::TooLarge { bytes: value });
            }
        }
        if let Some(max) = self.max
            && self.unspillable_reserve > max
        {
            return Err(PoolError::ReserveAboveMax { reserve: self.unspillable_reserve, max });
        }
        Ok(())
    }
}

/// Why a level could not be created or changed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// An amount above chargetree's `COUNTER_MAX`.
    TooLarge {
        /// The amount.
        bytes: usize,
    },
    /// An unspillable reserve larger than the level's own `max`.
    ReserveAboveMax {
        /// The reserve asked for.
        reserve: usize,
        /// The level's `max`.
        max: usize,
    },
    /// chargetree refused to create the level's group (e.g. its parent went offline).
    Group(GroupError),
    /// chargetree refused a new limit (e.g. `max` below what is in use).
    Limit(LimitError),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::TooLarge { bytes } => {
                write!(f, "{bytes} bytes is above the largest counter value {COUNTER_MAX}")
            }
            PoolError::ReserveAboveMax { reserve, max } => {
                write!(f, "unspillable reserve {reserve} is above the level's max {max}")
            }
            PoolError::Group(e) => write!(f, "cannot create the level: {e}"),
            PoolError::Limit(e) => write!(f, "cannot set the limit: {e}"),
        }
    }
}

impl std::error::Error for PoolError {}
