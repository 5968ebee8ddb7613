//! Owner cells: what an object embeds to point at the group it is charged to (Linux's folio
//! `memcg_data`), and moving an object's charge between groups (the seed's
//! `mem_cgroup_move_account`).
//!
//! # Protocol O (owner cell)
//!
//! | who | does | why it is safe |
//! |-----|------|----------------|
//! | storer (`new`, `replace`, `take`) | swaps the pointer; the reference moves with it (in with the new handle, out as the returned handle) | the cell owns exactly one reference whenever it is non-null |
//! | reader (`load` under a guard) | loads the pointer and may dereference it while the guard lives | the node is freed only after its count reached zero *and* a grace period of this tree's epoch passed; a node the cell pointed at when the guard was pinned cannot complete both before the guard is dropped |
//! | reader wanting a handle (`get`) | `tryget` in a loop that re-reads the cell | a failed `tryget` means the count reached zero, which means the cell no longer holds it: re-reading sees the new value |
//! | mover (`move_charge`) | charges `to`; exchanges `from → to` with a CAS; only then touches `from` | see below |
//!
//! # What prevents `from` from being released during a move?
//!
//! In Linux's `mem_cgroup_move_account` the order get(to) → put(from) → switch pointer →
//! unlock(from) left `from` in use after its reference was put; the answer given in review
//! was an external lock (`cgroup_mutex` excludes `kill_css`). Here the answer is the type
//! system: the successful compare-exchange hands the cell's reference on `from` to the mover
//! *as a [`Group`] value*. Every later use of `from` (uncharging it) goes through that value,
//! and the reference is put by dropping it, after the last use; the borrow checker rejects
//! any use after the drop. No external lock is needed, `from` may be taken offline and lose
//! every other reference concurrently (`src/tests/loom_group.rs` models exactly that, and the
//! same scenario runs under miri in `tests/group.rs`).

use core::fmt;
use core::ptr::{self, NonNull};

use super::node::Node;
use super::{Group, GroupId, GroupRef};
use crate::counter::ChargeError;
use crate::cpu::{CpuProvider, DefaultCpus};
use crate::epoch::Guard;
use crate::stock::STOCK_SLOTS;
use crate::sync::atomic::{AtomicPtr, Ordering};

/// A pointer from an object to its group, owning one reference (or empty).
///
/// Two words: the pointer and the identity of the tree it belongs to, so that a guard of
/// another tree is refused without dereferencing anything.
///
/// ```
/// use chargetree::group::{GroupSpec, OwnerCell, Tree};
///
/// let tree = Tree::new();
/// let a = tree.root().create_child(GroupSpec::new().name("a")).unwrap();
/// let b = tree.root().create_child(GroupSpec::new().name("b")).unwrap();
///
/// // An object of 10 units charged to `a` records its owner.
/// a.counter().try_charge(10).unwrap();
/// let owner = OwnerCell::new(a.clone());
///
/// // A reader with only the object finds its group under a guard.
/// let guard = tree.pin();
/// assert_eq!(owner.load(&guard).unwrap().id(), a.id());
/// let held = owner.get(&guard).unwrap(); // a durable handle, via tryget
/// drop(guard);
///
/// // Moving the object moves its charge and its owner pointer.
/// owner.move_charge(&b, 10).unwrap();
/// assert_eq!((a.counter().usage(), b.counter().usage()), (0, 10));
/// drop(held);
/// # b.counter().uncharge(10);
/// ```
pub struct OwnerCell<P: CpuProvider = DefaultCpus, const K: usize = STOCK_SLOTS> {
    ptr: AtomicPtr<Node<P, K>>,
    tree: usize,
}

// SAFETY: the cell owns a reference (sendable, like a `Group`) and an identity word.
unsafe impl<P: CpuProvider, const K: usize> Send for OwnerCell<P, K> {}
// SAFETY: all access goes through the atomic pointer (protocol O).
unsafe impl<P: CpuProvider, const K: usize> Sync for OwnerCell<P, K> {}

/// Why a move was refused. Nothing changed (the target was not left charged).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveError {
    /// The cell is empty: there is no charge to move.
    Empty,
    /// The target group is offline.
    TargetOffline,
    /// The target belongs to another tree than the cell.
    OtherTree,
    /// Charging the target failed at `group` (the target or an ancestor).
    Limit {
        /// The group whose limit refused.
        group: GroupId,
        /// Its limit.
        max: usize,
        /// Its usage when it refused.
        usage: usize,
    },
    /// The amount is above [`COUNTER_MAX`](crate::COUNTER_MAX).
    TooLarge,
    /// The cell changed while the move was under way (the object was freed or moved by
    /// someone else); the target's charge was undone.
    Raced,
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveError::Empty => f.write_str("the owner cell is empty"),
            MoveError::TargetOffline => f.write_str("the target group is offline"),
            MoveError::OtherTree => f.write_str("the target group belongs to another tree"),
            MoveError::Limit { group, max, usage } => {
                write!(f, "group {group} refused the charge: max {max}, usage {usage}")
            }
            MoveError::TooLarge => f.write_str("amount above the counter maximum"),
            MoveError::Raced => f.write_str("the owner changed concurrently"),
        }
    }
}

impl core::error::Error for MoveError {}

impl<P: CpuProvider, const K: usize> OwnerCell<P, K> {
    /// An empty cell for groups of the tree whose identity is `tree`
    /// ([`Domain::identity`](super::domain::Domain::identity)); `OwnerCell::empty` is the
    /// public constructor, one layer up.
    pub(crate) fn empty_for(tree: usize) -> Self {
        Self { ptr: AtomicPtr::new(ptr::null_mut()), tree }
    }

    /// A cell holding `group`'s reference.
    #[must_use]
    pub fn new(group: Group<P, K>) -> Self {
        let tree = group.node().domain().identity();
        Self { ptr: AtomicPtr::new(group.into_node().as_ptr()), tree }
    }

    /// Whether the cell is empty. A racy read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        // ORDERING: Relaxed; a status read, nothing is dereferenced.
        self.ptr.load(Ordering::Relaxed).is_null()
    }

    #[track_caller]
    fn check_guard(&self, guard: &Guard<'_>) {
        assert!(
            guard.owner() == self.tree,
            "chargetree: a guard of another tree cannot protect this owner cell"
        );
    }

    #[track_caller]
    fn check_group(&self, group: &Group<P, K>) {
        assert!(
            group.node().domain().identity() == self.tree,
            "chargetree: an owner cell holds groups of one tree only"
        );
    }

    /// The group the cell points at, borrowed for the guard's lifetime.
    ///
    /// # Panics
    ///
    /// If `guard` belongs to another tree.
    #[must_use]
    #[track_caller]
    pub fn load<'g>(&self, guard: &'g Guard<'_>) -> Option<GroupRef<'g, P, K>> {
        self.check_guard(guard);
        // ORDERING: Acquire pairs with the Release half of the swaps and CAS that stored the
        // pointer, so the node's initialisation is visible.
        let p = NonNull::new(self.ptr.load(Ordering::Acquire))?;
        // SAFETY: the cell owned a reference on `p` when it was loaded, under a guard of the
        // node's own tree (checked above), so it is freed only after the guard is dropped.
        Some(unsafe { GroupRef::new(p, guard) })
    }

    /// A durable handle to the group the cell points at: `tryget` in a loop that re-reads
    /// the cell (the cell may be switched concurrently).
    ///
    /// # Panics
    ///
    /// If `guard` belongs to another tree.
    #[must_use]
    #[track_caller]
    pub fn get(&self, guard: &Guard<'_>) -> Option<Group<P, K>> {
        loop {
            let r = self.load(guard)?;
            if let Some(g) = r.tryget() {
                return Some(g);
            }
            // The count reached zero, so the cell no longer holds this node: re-read.
            crate::sync::spin_loop();
        }
    }

    /// Stores `group` (or empties the cell) and returns the previous group, whose reference
    /// the caller now owns.
    ///
    /// # Panics
    ///
    /// If `group` belongs to another tree.
    #[track_caller]
    pub fn replace(&self, group: Option<Group<P, K>>) -> Option<Group<P, K>> {
        let new = match group {
            Some(g) => {
                self.check_group(&g);
                g.into_node().as_ptr()
            }
            None => ptr::null_mut(),
        };
        // ORDERING: AcqRel: Release publishes the new node to readers' Acquire loads; Acquire
        // makes the previous storer's writes visible to the new owner of the old reference.
        let old = self.ptr.swap(new, Ordering::AcqRel);
        // SAFETY: the cell owned one reference on `old`; the swap moved it to us.
        NonNull::new(old).map(|n| unsafe { Group::from_node(n) })
    }

    /// Empties the cell, returning its group (for example when the object is freed, to
    /// uncharge it).
    pub fn take(&self) -> Option<Group<P, K>> {
        self.replace(None)
    }

    /// Moves an object's charge of `amount` and its owner pointer from the cell's current
    /// group to `to`: charges `to` (respecting its limits and its ancestors'), switches the
    /// cell with a compare-exchange, then uncharges the old group and drops the cell's old
    /// reference. See the module docs for why no lock is needed.
    ///
    /// Moving to the group the cell already points at succeeds and changes nothing. Pins the
    /// tree's epoch: not for allocator paths.
    pub fn move_charge(&self, to: &Group<P, K>, amount: usize) -> Result<(), MoveError> {
        if to.node().domain().identity() != self.tree {
            return Err(MoveError::OtherTree);
        }
        // Pinned for the whole move: the group the cell points at when it is loaded below is
        // not freed (hence its address not reused by another group) before the exchange,
        // so comparing that pointer with `to`'s and exchanging it are not fooled by an ABA.
        let _guard = to.node().domain().pin_internal();
        // ORDERING: Acquire, as in `load`. The pointer is only compared, never dereferenced,
        // until the exchange below has given us its reference.
        let from = self.ptr.load(Ordering::Acquire);
        if from.is_null() {
            return Err(MoveError::Empty);
        }
        if from == to.node_ptr().as_ptr() {
            return Ok(());
        }
        if !to.is_online() {
            return Err(MoveError::TargetOffline);
        }
        to.counter().try_charge(amount).map_err(|e| match e {
            ChargeError::TooLarge { .. } => MoveError::TooLarge,
            ChargeError::Limit { at, level } => {
                let mut g = to.node();
                for _ in 0..level {
                    g = g.parent().expect("level is within the path");
                }
                MoveError::Limit { group: g.id, max: at.max(), usage: at.usage() }
            }
        })?;
        let new = to.clone().into_node();
        // ORDERING: AcqRel on success: Release publishes `to` to readers; Acquire takes over
        // the previous storer's writes along with its reference. Relaxed on failure: we only
        // undo our own work.
        match self.ptr.compare_exchange(from, new.as_ptr(), Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                // SAFETY: the cell owned one reference on `from`; the exchange moved it to us.
                // From here `from` is reachable only through this value (module docs).
                let from = unsafe { Group::from_node(NonNull::new_unchecked(from)) };
                from.counter().uncharge(amount);
                drop(from);
                Ok(())
            }
            Err(_) => {
                // SAFETY: the reference taken by `clone` above, never stored.
                drop(unsafe { Group::from_node(new) });
                to.counter().uncharge(amount);
                Err(MoveError::Raced)
            }
        }
    }
}

impl<P: CpuProvider, const K: usize> Drop for OwnerCell<P, K> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl<P: CpuProvider, const K: usize> fmt::Debug for OwnerCell<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerCell").field("empty", &self.is_empty()).finish_non_exhaustive()
    }
}
