//! The model of a tree of [`Counter`](crate::counter::Counter)s: no atomics, no cleverness,
//! each rule of the [`counter`](crate::counter) module docs written the obvious way.
//!
//! Encodes, per method: the limit-checked charge that names the lowest refusing level and
//! counts the failure there ([`Model::try_charge`]), the forced charge that only
//! `COUNTER_MAX` stops ([`Model::charge`]), the hierarchical underflow clamp
//! ([`Model::uncharge`]), `set_max`'s `Busy` below usage and the other settings' acceptance
//! of any representable value ([`Model::set_max`], [`Model::set_other`], [`setting`]), peaks
//! and their reset, the protected-usage sums (top nodes never summed), and effective
//! protection written recursively from its five rules ([`Model::effective`]).

use alloc_crate::vec::Vec;

use crate::counter::{COUNTER_MAX, LimitError};

/// A setting as a counter stores it (the counter docs' rule for every setting, `max`, `high`,
/// `min` and `low` alike): `usize::MAX` is "no limit" and stored as `COUNTER_MAX`; any other
/// value above `COUNTER_MAX` is refused with [`LimitError::TooLarge`].
pub fn setting(v: usize) -> Result<usize, LimitError> {
    match v {
        usize::MAX => Ok(COUNTER_MAX),
        v if v > COUNTER_MAX => Err(LimitError::TooLarge { value: v }),
        v => Ok(v),
    }
}

/// One node of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelNode {
    /// Index of the parent node.
    pub parent: Option<usize>,
    /// Usage.
    pub usage: usize,
    /// Hard limit.
    pub max: usize,
    /// Throttling threshold.
    pub high: usize,
    /// Declared hard protection.
    pub min: usize,
    /// Declared soft protection.
    pub low: usize,
    /// Global peak.
    pub peak: usize,
    /// Local (resettable) peak.
    pub local_peak: usize,
    /// Failed try-charges at this node.
    pub failcnt: usize,
    /// Clamped uncharges at this node.
    pub underflows: usize,
    /// Units dropped by clamps at this node.
    pub forgiven: usize,
}

/// Outcome of a model try-charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelChargeError {
    /// Refused by the node `level` parents up.
    Limit {
        /// Distance from the charged node.
        level: usize,
    },
    /// Amount above `COUNTER_MAX`.
    TooLarge,
}

/// A tree of model counters.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The nodes; children always come after their parents.
    pub nodes: Vec<ModelNode>,
}

impl Model {
    /// An empty model.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node under `parent` (or a top node) and returns its index.
    pub fn add(&mut self, parent: Option<usize>) -> usize {
        self.nodes.push(ModelNode { parent, max: COUNTER_MAX, high: COUNTER_MAX, ..ModelNode::default() });
        self.nodes.len() - 1
    }

    /// The path from `i` to the top, bottom-up.
    #[must_use]
    pub fn path(&self, i: usize) -> Vec<usize> {
        let mut path = Vec::new();
        let mut c = Some(i);
        while let Some(x) = c {
            path.push(x);
            c = self.nodes[x].parent;
        }
        path
    }

    fn raise(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.local_peak = n.local_peak.max(n.usage);
        n.peak = n.peak.max(n.usage);
    }

    /// Limit-checked charge.
    pub fn try_charge(&mut self, i: usize, amount: usize) -> Result<(), ModelChargeError> {
        if amount > COUNTER_MAX {
            return Err(ModelChargeError::TooLarge);
        }
        if amount == 0 {
            return Ok(());
        }
        let path = self.path(i);
        for (level, &x) in path.iter().enumerate() {
            if self.nodes[x].usage + amount > self.nodes[x].max {
                self.nodes[x].failcnt += 1;
                return Err(ModelChargeError::Limit { level });
            }
        }
        for &x in &path {
            self.nodes[x].usage += amount;
            self.raise(x);
        }
        Ok(())
    }

    /// Forced charge; fails (returns `false`, changing nothing) only past `COUNTER_MAX`.
    pub fn charge(&mut self, i: usize, amount: usize) -> bool {
        if amount > COUNTER_MAX {
            return false;
        }
        let path = self.path(i);
        if path.iter().any(|&x| self.nodes[x].usage + amount > COUNTER_MAX) {
            return false;
        }
        if amount == 0 {
            return true;
        }
        for &x in &path {
            self.nodes[x].usage += amount;
            self.raise(x);
        }
        true
    }

    /// Uncharge with the hierarchical clamp; returns the amount forgiven.
    pub fn uncharge(&mut self, i: usize, amount: usize) -> usize {
        if amount == 0 {
            return 0;
        }
        let mut left = amount;
        for x in self.path(i) {
            let n = &mut self.nodes[x];
            if left > n.usage {
                n.underflows += 1;
                n.forgiven = n.forgiven.saturating_add(left - n.usage);
                left = n.usage;
            }
            n.usage -= left;
            if left == 0 {
                break;
            }
        }
        amount - left
    }

    /// `set_max` with `Busy` below usage; `usize::MAX` means no limit.
    pub fn set_max(&mut self, i: usize, v: usize) -> Result<(), LimitError> {
        let v = setting(v)?;
        let usage = self.nodes[i].usage;
        if usage > v {
            return Err(LimitError::Busy { usage, limit: v });
        }
        self.nodes[i].max = v;
        Ok(())
    }

    /// Sets `high`, `min` or `low` (selected by `which`: 0, 1, 2).
    pub fn set_other(&mut self, i: usize, which: u8, v: usize) -> Result<(), LimitError> {
        let v = setting(v)?;
        let n = &mut self.nodes[i];
        match which {
            0 => n.high = v,
            1 => n.min = v,
            _ => n.low = v,
        }
        Ok(())
    }

    /// Global peak reset.
    pub fn reset_peak(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.peak = n.usage;
        n.local_peak = n.usage;
    }

    /// `min(usage, min)` (0 for top nodes, whose protection is never summed).
    #[must_use]
    pub fn min_usage(&self, i: usize) -> usize {
        let n = &self.nodes[i];
        if n.parent.is_none() { 0 } else { n.usage.min(n.min) }
    }

    /// `min(usage, low)` (0 for top nodes).
    #[must_use]
    pub fn low_usage(&self, i: usize) -> usize {
        let n = &self.nodes[i];
        if n.parent.is_none() { 0 } else { n.usage.min(n.low) }
    }

    /// Σ children's `min_usage`.
    #[must_use]
    pub fn children_min_usage(&self, i: usize) -> usize {
        (0..self.nodes.len()).filter(|&c| self.nodes[c].parent == Some(i)).map(|c| self.min_usage(c)).sum()
    }

    /// Σ children's `low_usage`.
    #[must_use]
    pub fn children_low_usage(&self, i: usize) -> usize {
        (0..self.nodes.len()).filter(|&c| self.nodes[c].parent == Some(i)).map(|c| self.low_usage(c)).sum()
    }

    /// Effective `(min, low)` of `i` for reclaim rooted at `root`, written recursively from
    /// the rules (the stateless variant: zero usage gives zero). `None` if `root` is not on
    /// `i`'s path.
    #[must_use]
    pub fn effective(&self, i: usize, root: usize, recursive: bool) -> Option<(usize, usize)> {
        if !self.path(i).contains(&root) {
            return None;
        }
        if i == root {
            return Some((0, 0));
        }
        let n = &self.nodes[i];
        let parent = n.parent.expect("root is above i");
        if n.usage == 0 {
            return Some((0, 0));
        }
        if parent == root {
            return Some((n.min, n.low));
        }
        let (pmin, plow) = self.effective(parent, root, recursive)?;
        let pu = self.nodes[parent].usage;
        let one = |declared: usize, peff: usize, siblings: usize| -> usize {
            let protected = n.usage.min(declared) as u128;
            let (peff, siblings) = (peff as u128, siblings as u128);
            let ep = if siblings > peff {
                protected * peff / siblings
            } else if recursive && peff > siblings && (pu as u128) > siblings && (n.usage as u128) > protected
            {
                protected + (peff - siblings) * (n.usage as u128 - protected) / (pu as u128 - siblings)
            } else {
                protected
            };
            ep.min(peff) as usize
        };
        Some((
            one(n.min, pmin, self.children_min_usage(parent)),
            one(n.low, plow, self.children_low_usage(parent)),
        ))
    }
}
