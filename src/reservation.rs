//! RAII reservations: an amount charged to a group for as long as the value holds it (the
//! shape of DataFusion's `MemoryReservation`), for query engines and pools that budget per
//! query or per operator.

use core::fmt;

use crate::cpu::{CpuProvider, DefaultCpus};
use crate::engine::{ChargeFailure, ChargeOptions, Charged};
use crate::groups::Group;
use crate::stock::STOCK_SLOTS;

/// An amount charged to a group, uncharged when the reservation is dropped.
///
/// Every change goes through the group's charge engine and the calling CPU's stock, like
/// [`Group::try_charge`] and [`Group::uncharge`]: limits, reclaim hooks, events and `high`
/// reporting all apply. The reservation holds a handle on its group, so the group outlives
/// it.
///
/// ```
/// use chargetree::group::{GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let query = tree.root().create_child(GroupSpec::new().name("query").max(100)).unwrap();
/// let mut sort = query.reservation();
/// let _ = sort.try_grow(60).unwrap();
/// assert!(sort.try_grow(50).is_err(), "the query's limit refuses");
/// assert_eq!(sort.size(), 60, "a refused growth changes nothing");
/// let spill = sort.split(20); // a second reservation of the same group takes 20 of them
/// assert_eq!((sort.size(), spill.size()), (40, 20));
/// drop((sort, spill)); // both uncharged
/// let _ = tree.drain_all(&query);
/// assert_eq!(query.counter().usage(), 0);
/// ```
pub struct Reservation<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    group: Group<P, K>,
    size: usize,
}

impl<P: CpuProvider, const K: usize> Group<P, K> {
    /// An empty reservation of this group.
    #[must_use]
    pub fn reservation(&self) -> Reservation<P, K> {
        Reservation { group: self.clone(), size: 0 }
    }
}

impl<P: CpuProvider, const K: usize> Reservation<P, K> {
    /// An empty reservation of `group` (same as [`Group::reservation`]).
    #[must_use]
    pub fn new(group: &Group<P, K>) -> Self {
        group.reservation()
    }

    /// The amount held.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The group charged.
    #[must_use]
    pub fn group(&self) -> &Group<P, K> {
        &self.group
    }

    /// Grows by `n` if the group's limits (after reclaim and retries) allow it; a refusal
    /// changes nothing.
    pub fn try_grow(&mut self, n: usize) -> Result<Charged, ChargeFailure> {
        self.try_grow_with(n, ChargeOptions::DEFAULT)
    }

    /// [`Reservation::try_grow`] with charge options (for example `no_reclaim` where the
    /// caller cannot wait for reclaim).
    pub fn try_grow_with(&mut self, n: usize, options: ChargeOptions) -> Result<Charged, ChargeFailure> {
        let new = self.size.checked_add(n).ok_or(ChargeFailure::TooLarge { requested: n })?;
        let charged = self.group.charge_with(n, options)?;
        self.size = new;
        Ok(charged)
    }

    /// Grows by `n` whatever the limits (for callers that cannot fail, as DataFusion's
    /// infallible `grow`): a charge the limits refuse is forced past them after reclaim, raises
    /// the group's `max` event and is counted in
    /// [`TreeStats::forced`](crate::group::TreeStats::forced).
    ///
    /// # Panics
    ///
    /// If the group's usage would pass [`COUNTER_MAX`](crate::COUNTER_MAX) (no counter can
    /// hold that; the reservation is unchanged when it panics).
    pub fn grow(&mut self, n: usize) -> Charged {
        match self.try_grow_with(n, ChargeOptions::DEFAULT.no_fail()) {
            Ok(charged) => charged,
            Err(e) => panic!("chargetree: a forced growth of {n} failed: {e}"),
        }
    }

    /// Gives `n` back.
    ///
    /// # Panics
    ///
    /// If `n` is more than the reservation holds (as DataFusion's `shrink`); use
    /// [`Reservation::try_shrink`] to get that as an error.
    pub fn shrink(&mut self, n: usize) {
        if let Err(e) = self.try_shrink(n) {
            panic!("chargetree: {e}");
        }
    }

    /// Gives `n` back, or refuses (changing nothing) if the reservation holds less.
    pub fn try_shrink(&mut self, n: usize) -> Result<(), ShrinkError> {
        if n > self.size {
            return Err(ShrinkError { requested: n, held: self.size });
        }
        self.group.uncharge(n);
        self.size -= n;
        Ok(())
    }

    /// Grows or shrinks to exactly `size`; a growth the limits refuse changes nothing.
    pub fn try_resize(&mut self, size: usize) -> Result<Charged, ChargeFailure> {
        if size >= self.size {
            self.try_grow(size - self.size)
        } else {
            self.group.uncharge(self.size - size);
            self.size = size;
            Ok(Charged::default())
        }
    }

    /// Grows (forced, as [`Reservation::grow`]) or shrinks to exactly `size`.
    pub fn resize(&mut self, size: usize) -> Charged {
        if size >= self.size {
            self.grow(size - self.size)
        } else {
            self.group.uncharge(self.size - size);
            self.size = size;
            Charged::default()
        }
    }

    /// Gives everything back; returns how much that was.
    pub fn free(&mut self) -> usize {
        let size = core::mem::take(&mut self.size);
        self.group.uncharge(size);
        size
    }

    /// Moves `n` of this reservation into a new one of the same group (nothing is charged or
    /// uncharged).
    ///
    /// # Panics
    ///
    /// If `n` is more than the reservation holds.
    #[must_use]
    pub fn split(&mut self, n: usize) -> Reservation<P, K> {
        assert!(n <= self.size, "chargetree: cannot split {n} off a reservation of {}", self.size);
        self.size -= n;
        Reservation { group: self.group.clone(), size: n }
    }

    /// Moves everything into a new reservation of the same group, leaving this one empty.
    #[must_use]
    pub fn take(&mut self) -> Reservation<P, K> {
        let size = self.size;
        self.split(size)
    }

    /// Moves everything `other` holds into this reservation (both must be of the same group).
    ///
    /// # Panics
    ///
    /// If `other` is of another group.
    pub fn merge(&mut self, mut other: Reservation<P, K>) {
        assert!(self.group.ptr_eq(&other.group), "chargetree: merging reservations of two groups");
        self.size += core::mem::take(&mut other.size);
    }
}

impl<P: CpuProvider, const K: usize> Drop for Reservation<P, K> {
    fn drop(&mut self) {
        if self.size > 0 {
            self.group.uncharge(self.size);
        }
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for Reservation<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").field("group", &self.group.id()).field("size", &self.size).finish()
    }
}

/// [`Reservation::try_shrink`] asked for more than the reservation holds; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShrinkError {
    /// The amount asked for.
    pub requested: usize,
    /// What the reservation holds.
    pub held: usize,
}

impl fmt::Display for ShrinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot shrink a reservation of {} by {}", self.held, self.requested)
    }
}

impl core::error::Error for ShrinkError {}
