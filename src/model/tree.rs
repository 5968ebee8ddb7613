//! The model of a [`Tree`](crate::group::Tree) of groups as its caller sees it: the topology,
//! each group's lifecycle state, and the units the caller's objects hold charged to each
//! group through the charge engine (unit charges, uncharges and `move_charge`).
//!
//! Groups are numbered as the tree numbers them: the root is 0 and each successful
//! [`create_child`](TreeModel::create_child) takes the next index, which is the new group's
//! [`GroupId::index`](crate::group::GroupId::index) (ids are dense: a refused creation takes
//! none).
//!
//! What the model does not know, the caller reads from the real tree and combines with it:
//! the units cached in the per-CPU stocks (`Group::cached_units`) and what `ObjGroup`s
//! charged ([`ObjModel`](super::ObjModel)). The usage equation the property tests and the
//! `api` fuzz target check after every step is, for every group `i`,
//!
//! ```text
//! usage(i) = held_in(i) + ObjModel::charged_in(i) + Σ_{j ∈ subtree(i)} cached_units(j)
//! ```
//!
//! (the stock's S1: units in an entry are charged to its group and all its ancestors).

use alloc_crate::vec::Vec;
use core::ops::RangeInclusive;

use crate::counter::LimitError;
use crate::group::GroupError;

use super::counter::setting;

/// A tree of groups: topology, lifecycle and the units held by the caller's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeModel {
    /// Each group's parent (`None` for the root, group 0).
    pub parents: Vec<Option<usize>>,
    /// Whether each group is online.
    pub online: Vec<bool>,
    /// Units the caller's objects hold charged to each group: charged minus uncharged, moves
    /// included.
    pub held: Vec<usize>,
    /// Charges forced past a limit ([`TreeStats::forced`](crate::group::TreeStats::forced)).
    pub forced: usize,
    /// Groups taken offline ([`TreeStats::offlined`](crate::group::TreeStats::offlined)).
    pub offlined: usize,
}

impl Default for TreeModel {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeModel {
    /// A new tree: the root alone, online, nothing held.
    #[must_use]
    pub fn new() -> Self {
        Self {
            parents: Vec::from([None]),
            online: Vec::from([true]),
            held: Vec::from([0]),
            forced: 0,
            offlined: 0,
        }
    }

    /// Groups ever created, the root included
    /// ([`TreeStats::created`](crate::group::TreeStats::created)).
    #[must_use]
    pub fn created(&self) -> usize {
        self.parents.len()
    }

    /// Whether `j` is in `i`'s subtree (`i` itself included).
    #[must_use]
    pub fn is_under(&self, mut j: usize, i: usize) -> bool {
        loop {
            if j == i {
                return true;
            }
            match self.parents[j] {
                Some(p) => j = p,
                None => return false,
            }
        }
    }

    /// The groups of `i`'s subtree, `i` included, in creation order (parents first).
    #[must_use]
    pub fn subtree(&self, i: usize) -> Vec<usize> {
        (0..self.created()).filter(|&j| self.is_under(j, i)).collect()
    }

    /// `i`'s children, in creation order.
    #[must_use]
    pub fn children(&self, i: usize) -> Vec<usize> {
        (0..self.created()).filter(|&j| self.parents[j] == Some(i)).collect()
    }

    /// How many of `i`'s children are online.
    #[must_use]
    pub fn online_children(&self, i: usize) -> usize {
        self.children(i).into_iter().filter(|&j| self.online[j]).count()
    }

    /// `Group::create_child` under `parent` with a spec whose limits are `settings`, in the
    /// order `GroupSpec::validate` checks them (`max`, `high`, `min`, `low`; unset ones may be
    /// left out). The first unrepresentable setting is refused with
    /// `GroupError::Limit(LimitError::TooLarge)` (checked before anything else: the spec is
    /// validated when the node is built); then an offline parent takes no new children
    /// (`GroupError::ParentOffline`, the group module's lifecycle). Otherwise the new group is
    /// online, holds nothing, and its index is the next id.
    pub fn create_child(&mut self, parent: usize, settings: &[usize]) -> Result<usize, GroupError> {
        for &v in settings {
            setting(v).map_err(GroupError::Limit)?;
        }
        if !self.online[parent] {
            return Err(GroupError::ParentOffline);
        }
        self.parents.push(Some(parent));
        self.online.push(true);
        self.held.push(0);
        Ok(self.created() - 1)
    }

    /// `Group::offline` (the group module's lifecycle): refused for the root
    /// (`GroupError::Root`), for a group already offline (`GroupError::Offline`) and for one
    /// with online children (`GroupError::HasOnlineChildren`, counted); otherwise the group
    /// is offline from now on and counted in `offlined`. What its `ObjGroup`s do is
    /// [`ObjModel::reparent`](super::ObjModel::reparent)'s part.
    pub fn offline(&mut self, g: usize) -> Result<(), GroupError> {
        if self.parents[g].is_none() {
            return Err(GroupError::Root);
        }
        if !self.online[g] {
            return Err(GroupError::Offline);
        }
        let online_children = self.online_children(g);
        if online_children > 0 {
            return Err(GroupError::HasOnlineChildren { online_children });
        }
        self.online[g] = false;
        self.offlined += 1;
        Ok(())
    }

    /// The group whose own `ObjGroup` `Group::obj_group` on `g` hands out: `g` while it is
    /// online, else its nearest online ancestor (Linux's `get_obj_cgroup_from_memcg`; the
    /// root is always online).
    #[must_use]
    pub fn obj_group_owner(&self, mut g: usize) -> usize {
        while !self.online[g] {
            g = self.parents[g].expect("the root is always online");
        }
        g
    }

    /// Units the caller's objects hold in `i`'s subtree: the usage `i` must show once the
    /// stocks of its subtree are drained, if nothing else was charged there.
    #[must_use]
    pub fn held_in(&self, i: usize) -> usize {
        self.subtree(i).into_iter().map(|j| self.held[j]).sum()
    }

    /// `Group::set_max(v)` on `g` when the only charges in its subtree are the caller's unit
    /// objects: see [`TreeModel::limit_write`], with [`TreeModel::held_in`] as the usage left
    /// after the drain.
    pub fn set_max(&self, g: usize, v: usize) -> Result<usize, LimitError> {
        Self::limit_write(v, self.held_in(g))
    }

    /// `Group::set_max(v)` on a group whose usage, once the stocks of its subtree are drained,
    /// is `usage`: an unrepresentable `v` is refused (`TooLarge`, [`setting`]); a limit below
    /// that usage is refused with `Busy { usage, limit }` (the write drains the subtree's
    /// stocks before giving up, so cached units never make it busy); otherwise the limit
    /// stored is returned (`usize::MAX` is "no limit", stored as `COUNTER_MAX`).
    pub fn limit_write(v: usize, usage: usize) -> Result<usize, LimitError> {
        let limit = setting(v)?;
        if usage > limit {
            return Err(LimitError::Busy { usage, limit });
        }
        Ok(limit)
    }

    /// Writing `high`, `min` or `low` (selected by `which`: 0, 1, 2, as in
    /// [`Model::set_other`](super::Model::set_other)) on `g`'s counter: an unrepresentable
    /// value is refused first (`TooLarge`); then an offline group's protection is revoked for
    /// good, so `min` and `low` are refused with `LimitError::Retired` (`Counter::set_min`;
    /// the root never goes offline); `high` is always accepted.
    pub fn set_other(&self, g: usize, which: u8, v: usize) -> Result<(), LimitError> {
        setting(v)?;
        if which != 0 && !self.online[g] {
            return Err(LimitError::Retired);
        }
        Ok(())
    }

    /// `n` units charged to `g` for an object of the caller.
    pub fn charged(&mut self, g: usize, n: usize) {
        self.held[g] += n;
    }

    /// `n` units an object of the caller held in `g` uncharged (at most what is held: the
    /// model is for callers that uncharge what they charged).
    pub fn uncharged(&mut self, g: usize, n: usize) {
        assert!(self.held[g] >= n, "model: uncharging {n} from group {g}, which holds {}", self.held[g]);
        self.held[g] -= n;
    }

    /// A successful `OwnerCell::move_charge` of `n` units from `from` to `to` (moving to the
    /// same group changes nothing).
    pub fn moved(&mut self, from: usize, to: usize, n: usize) {
        self.uncharged(from, n);
        self.charged(to, n);
    }

    /// A charge that reported `Charged::forced`.
    pub fn forced_charge(&mut self) {
        self.forced += 1;
    }

    /// The bounds of group `i`'s reference count, from the rule that references follow
    /// pointers (the group module docs; the stock's S2): `pinned` references the caller knows
    /// of (its handles, owner cells, `ObjGroup`s pointing at `i`), the base reference while
    /// `i` is online, one per child that `alive` says is certainly not freed yet (each child
    /// owns one on its parent), and at most one more per other child (released, maybe not
    /// freed yet) and per CPU (a stock entry caching `i`).
    #[must_use]
    pub fn ref_bounds(
        &self,
        i: usize,
        pinned: usize,
        cpus: usize,
        alive: impl Fn(usize) -> bool,
    ) -> RangeInclusive<usize> {
        let children = self.children(i);
        let alive_children = children.iter().filter(|&&j| alive(j)).count();
        let least = pinned + usize::from(self.online[i]) + alive_children;
        least..=least + (children.len() - alive_children) + cpus
    }
}
