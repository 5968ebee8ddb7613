//! The model of the object layer: [`ObjGroup`](crate::objgroup::ObjGroup)s, the bytes they
//! charge and the per-CPU object stock, after the [`objgroup`](crate::objgroup) module docs
//! and the object-stock functions they describe (Linux's `obj_cgroup_charge()`,
//! `refill_obj_stock()` and `drain_obj_stock()`, with the library's one deviation: parked
//! bytes that make a whole unit are returned at once).
//!
//! `ObjGroup`s are numbered in creation order (the count is
//! [`TreeStats::objgroups_created`](crate::group::TreeStats::objgroups_created)). For each,
//! the model keeps the group it was created for (`home`), the group it charges now (`owner`),
//! the units charged through it and not yet returned, its parked bytes (`nr_charged_bytes`)
//! and the bytes of its live objects; and for each group, `local`: the units charged to it
//! through `ObjGroup`s it owned at the time, minus those returned while it owned them. After
//! a reparenting the dying group keeps its `local` (O3: the residue is never uncharged) and
//! the parent's goes negative as it takes the returns: so the units the object layer charges
//! in a subtree are `Σ local` over it ([`ObjModel::charged_in`]).
//!
//! Two ways to drive it:
//!
//! * exactly: [`ObjModel::charge`], [`ObjModel::uncharge`], [`ObjModel::drain_cpu`] and
//!   [`ObjModel::drain_subtree`] run the object stock themselves, so cached bytes
//!   ([`ObjModel::cached`]), parked bytes and units are the model's own, for callers that know
//!   every charge succeeds (no limits);
//! * as a ledger: [`ObjModel::record_charge`] and [`ObjModel::record_uncharge`] count the live
//!   bytes only, and [`ObjModel::observe`] takes the stocked and parked bytes read from the
//!   real `ObjGroup`, checks O1 and books the change in units to the current owner; for
//!   callers whose charges may fail or be forced.

use alloc_crate::vec::Vec;

use super::TreeModel;

/// One `ObjGroup`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjGroupModel {
    /// The group it was created for (whose own `ObjGroup` it was).
    pub home: usize,
    /// The group it charges now: `home`, or an ancestor after reparenting.
    pub owner: usize,
    /// Units charged through it and not yet returned.
    pub units: usize,
    /// Bytes parked in it (`nr_charged_bytes`): always below a unit.
    pub parked: usize,
    /// Bytes of the live objects charged through it.
    pub live: u128,
}

/// The object layer of one tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjModel {
    /// Bytes per unit (the tree's `unit_bytes`, after its clamp).
    pub unit: usize,
    /// The `ObjGroup`s, in creation order.
    pub objgroups: Vec<ObjGroupModel>,
    /// Per group: its own active `ObjGroup`, once created (none after it went offline).
    pub own: Vec<Option<usize>>,
    /// Per group: units charged to it through `ObjGroup`s while it owned them, minus units
    /// returned from them while it owned them.
    pub local: Vec<i128>,
    /// Per CPU: the `ObjGroup` its object stock caches and the bytes cached (exact mode).
    pub stocks: Vec<Option<(usize, usize)>>,
}

impl ObjModel {
    /// No `ObjGroup` yet, on a tree of `cpus` CPUs with `unit` bytes per unit.
    #[must_use]
    pub fn new(unit: usize, cpus: usize) -> Self {
        assert!(unit > 0, "model: a unit has at least one byte");
        Self {
            unit,
            objgroups: Vec::new(),
            own: Vec::new(),
            local: Vec::new(),
            stocks: (0..cpus).map(|_| None).collect(),
        }
    }

    /// The stock slot of CPU index `cpu`: none for an index a `TestCpus` of this many CPUs maps
    /// to "no CPU" (the stocks are bypassed).
    #[must_use]
    pub fn slot(&self, cpu: usize) -> Option<usize> {
        (cpu < self.stocks.len()).then_some(cpu)
    }

    fn local_mut(&mut self, g: usize) -> &mut i128 {
        if self.local.len() <= g {
            self.local.resize(g + 1, 0);
        }
        &mut self.local[g]
    }

    /// `Group::obj_group` on `g`: the own `ObjGroup` of `g`, or of its nearest online
    /// ancestor if `g` is offline ([`TreeModel::obj_group_owner`]), created on first use.
    /// Returns its index and whether this call created it.
    pub fn obj_group(&mut self, tree: &TreeModel, g: usize) -> (usize, bool) {
        let home = tree.obj_group_owner(g);
        if self.own.len() <= home {
            self.own.resize(home + 1, None);
        }
        if let Some(o) = self.own[home] {
            return (o, false);
        }
        self.objgroups.push(ObjGroupModel { home, owner: home, ..ObjGroupModel::default() });
        let o = self.objgroups.len() - 1;
        self.own[home] = Some(o);
        (o, true)
    }

    /// Reparenting, after `tree.offline(g)` succeeded (the objgroup module's reparenting):
    /// `g` has no own `ObjGroup` any more, and every `ObjGroup` charging `g` (its own and
    /// those inherited from removed descendants) charges `g`'s parent from now on; what they
    /// charged so far stays in `g`'s `local` (O3). A ledger caller [`observe`](Self::observe)s
    /// them just before, so that the units charged until then are booked to `g`.
    pub fn reparent(&mut self, tree: &TreeModel, g: usize) {
        let parent = tree.parents[g].expect("the root never goes offline");
        if let Some(own) = self.own.get_mut(g) {
            *own = None;
        }
        for o in &mut self.objgroups {
            if o.owner == g {
                o.owner = parent;
            }
        }
    }

    /// Units the object layer charges in `i`'s subtree: `Σ local` over it (may be negative
    /// for a group that took a removed descendant's returns, never for a subtree).
    #[must_use]
    pub fn charged_in(&self, tree: &TreeModel, i: usize) -> i128 {
        tree.subtree(i).into_iter().map(|j| self.local.get(j).copied().unwrap_or(0)).sum()
    }

    /// Bytes cached for `ObjGroup` `o` in the object stocks (exact mode).
    #[must_use]
    pub fn cached(&self, o: usize) -> usize {
        self.stocks.iter().flatten().filter(|s| s.0 == o).map(|s| s.1).sum()
    }

    fn add_units(&mut self, o: usize, n: usize) {
        self.objgroups[o].units += n;
        let owner = self.objgroups[o].owner;
        *self.local_mut(owner) += n as i128;
    }

    fn sub_units(&mut self, o: usize, n: usize) {
        let units = self.objgroups[o].units;
        assert!(units >= n, "model: ObjGroup {o} returns {n} units, it charged {units}");
        self.objgroups[o].units -= n;
        let owner = self.objgroups[o].owner;
        *self.local_mut(owner) -= n as i128;
    }

    /// `ObjNode::flush_bytes`: `bytes` already charged are parked in `o`; whole units among
    /// them, and the whole units the parked bytes then make, are returned to its owner.
    fn flush(&mut self, o: usize, bytes: usize) {
        let unit = self.unit;
        let m = &mut self.objgroups[o];
        let mut units = bytes / unit;
        m.parked += bytes % unit;
        units += m.parked / unit;
        m.parked %= unit;
        self.sub_units(o, units);
    }

    /// `Stocks::refill_obj`: `bytes` already charged to `o` go to CPU slot `cpu`'s object
    /// stock. A stock caching another `ObjGroup` is flushed first and re-seeded with `o`'s
    /// parked bytes (and may then return whole units); otherwise whole units beyond the
    /// stock's last unit are returned only with `allow_uncharge`. Without a slot the bytes are
    /// parked in `o`. (The overflow fallback for absurd byte counts is not modelled.)
    fn refill(&mut self, cpu: Option<usize>, o: usize, bytes: usize, allow_uncharge: bool) {
        let Some(c) = cpu else { return self.flush(o, bytes) };
        let (have, old, allow) = match self.stocks[c] {
            Some((x, b)) if x == o => (b, None, allow_uncharge),
            old => (core::mem::take(&mut self.objgroups[o].parked), old, true),
        };
        let total = have + bytes;
        let (keep, out) =
            if allow && total > self.unit { (total % self.unit, total / self.unit) } else { (total, 0) };
        self.stocks[c] = Some((o, keep));
        if let Some((x, b)) = old {
            self.flush(x, b);
        }
        self.sub_units(o, out);
    }

    /// A successful `ObjGroup::charge_bytes(size)` through `o` on CPU slot `cpu` (exact
    /// mode): from the stock if it caches `o` with enough bytes (no unit charged); else
    /// `⌈size / unit⌉` units charged to the owner and the rounding remainder refilled into the
    /// stock without returning whole units (Linux's `allow_uncharge = false`).
    pub fn charge(&mut self, cpu: Option<usize>, o: usize, size: usize) {
        self.objgroups[o].live += size as u128;
        if let Some(c) = cpu {
            if let Some((x, b)) = self.stocks[c] {
                if x == o && b >= size {
                    self.stocks[c] = Some((o, b - size));
                    return;
                }
            }
        }
        let units = size.div_ceil(self.unit);
        self.add_units(o, units);
        let rem = if size % self.unit == 0 { 0 } else { self.unit - size % self.unit };
        if rem > 0 {
            self.refill(cpu, o, rem, false);
        }
    }

    /// `ObjGroup::uncharge_bytes(size)` of a live object of `o` on CPU slot `cpu` (exact
    /// mode): the bytes are refilled into the stock, whole units beyond its last one returned
    /// to `o`'s owner by then.
    pub fn uncharge(&mut self, cpu: Option<usize>, o: usize, size: usize) {
        self.record_uncharge(o, size);
        self.refill(cpu, o, size, true);
    }

    /// A drain of CPU slot `c`'s object stock (`drain_local` there, or `drain_all` taking it):
    /// its bytes are flushed into the cached `ObjGroup` (exact mode).
    pub fn drain_cpu(&mut self, c: usize) {
        if let Some((x, b)) = self.stocks[c].take() {
            self.flush(x, b);
        }
    }

    /// `Tree::drain_all(g)`'s part in the object stocks: every CPU's stock caching an
    /// `ObjGroup` that charges a group of `g`'s subtree is drained (exact mode).
    pub fn drain_subtree(&mut self, tree: &TreeModel, g: usize) {
        for c in 0..self.stocks.len() {
            if let Some((x, _)) = self.stocks[c] {
                if tree.is_under(self.objgroups[x].owner, g) {
                    self.drain_cpu(c);
                }
            }
        }
    }

    /// A successful byte charge of `bytes` through `o` (ledger mode): a live object more.
    pub fn record_charge(&mut self, o: usize, bytes: usize) {
        self.objgroups[o].live += bytes as u128;
    }

    /// An object of `bytes` charged through `o` given back (either mode).
    pub fn record_uncharge(&mut self, o: usize, bytes: usize) {
        let live = &mut self.objgroups[o].live;
        assert!(*live >= bytes as u128, "model: ObjGroup {o} gives back {bytes} bytes of {live} live");
        *live -= bytes as u128;
    }

    /// Ledger mode: `o` shows `cached` bytes in the object stocks and `parked` bytes parked.
    /// O1 (the objgroup module docs) says `live + cached + parked` is a whole number of units:
    /// the units charged through `o`. The change since the last observation is booked to `o`'s
    /// owner. Returns the units; panics, naming the numbers, if O1 does not hold.
    pub fn observe(&mut self, o: usize, cached: usize, parked: usize) -> usize {
        let unit = self.unit as u128;
        let live = self.objgroups[o].live;
        let total = live + cached as u128 + parked as u128;
        assert_eq!(
            total % unit,
            0,
            "O1: ObjGroup {o}: live {live} + stocked {cached} + parked {parked} is not whole units of {unit}"
        );
        let units = (total / unit) as usize;
        let m = &mut self.objgroups[o];
        let delta = units as i128 - m.units as i128;
        m.units = units;
        m.parked = parked;
        let owner = m.owner;
        *self.local_mut(owner) += delta;
        units
    }
}
