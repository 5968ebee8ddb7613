//! Fuzz target `protection`: effective protection on extreme values.
//!
//! The input is a sequence of operations (one byte picks, the following bytes are the
//! arguments):
//!
//! * one call of the pure [`effective_protection`] on extreme values (0, 1, `COUNTER_MAX`
//!   and its neighbours, `usize::MAX`, powers of two, anything): never above the parent's
//!   effective value, never above `min(usage, setting)` without recursion, recursion never
//!   gives less, equal to a 128-bit evaluation of the rules, no overflow, no panic;
//! * a family of siblings with consistent inputs (the parent's usage covers the children's,
//!   the sibling sum is the sum of the children's protected usage): their effective values
//!   never add up to more than the parent's, with or without recursion;
//! * a small tree of counters charged with extreme amounts and given extreme `min`/`low`:
//!   [`Counter::effective_protection_under`] for every node under every ancestor obeys the
//!   rules (first level below the root gets what it declares; deeper never more than the
//!   parent; children together never more than the parent), matches the model when every
//!   node tracks protection, and the stateful walk agrees with it.

use crate::model::Model;
use chargetree::COUNTER_MAX;
use chargetree::counter::{Counter, effective_protection};

use crate::input::Input;

/// Operations per input at most.
const MAX_STEPS: usize = 256;

/// An extreme-biased value.
fn extreme(input: &mut Input<'_>) -> usize {
    match input.u8() % 12 {
        0 => 0,
        1 => 1,
        2 => COUNTER_MAX,
        3 => COUNTER_MAX - 1,
        4 => COUNTER_MAX + 1,
        5 => usize::MAX,
        6 => usize::MAX - 1,
        7 => usize::MAX / 2,
        8 => 1usize << (input.u8() % 64),
        9 => usize::from(input.u8()),
        10 => COUNTER_MAX - usize::from(input.u16()),
        _ => input.usize(),
    }
}

/// Like [`extreme`], but at most `COUNTER_MAX` (what a counter can hold or be set to).
fn representable(input: &mut Input<'_>) -> usize {
    extreme(input).min(COUNTER_MAX)
}

/// The rules of `counter/protection.rs`, evaluated in 128 bits.
fn reference(
    usage: usize,
    pu: usize,
    setting: usize,
    peff: usize,
    siblings: usize,
    recursive: bool,
) -> usize {
    let (u, pu, peff, s) = (usage as u128, pu as u128, peff as u128, siblings as u128);
    let protected = u.min(setting as u128);
    let ep = if s > peff {
        protected * peff / s
    } else if recursive && peff > s && pu > s && u > protected {
        protected + (peff - s) * (u - protected) / (pu - s)
    } else {
        protected
    };
    ep.min(peff) as usize
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut steps = 0;
    while !input.is_empty() && steps < MAX_STEPS {
        steps += 1;
        match input.u8() % 4 {
            0 | 1 => single(&mut input),
            2 => family(&mut input),
            _ => tree(&mut input),
        }
    }
}

fn single(input: &mut Input<'_>) {
    let usage = extreme(input);
    let pu = extreme(input);
    let setting = extreme(input);
    let peff = extreme(input);
    let siblings = extreme(input);
    let args = (usage, pu, setting, peff, siblings);
    let plain = effective_protection(usage, pu, setting, peff, siblings, false);
    let rec = effective_protection(usage, pu, setting, peff, siblings, true);
    assert!(plain <= peff && rec <= peff, "above the parent's effective value: {args:?} -> {plain}, {rec}");
    assert!(plain <= usage.min(setting), "above min(usage, setting) without recursion: {args:?} -> {plain}");
    assert!(rec >= plain, "recursion gave less: {args:?} -> {plain}, {rec}");
    if siblings <= peff {
        assert_eq!(plain, usage.min(setting).min(peff), "undercommitted: {args:?}");
    }
    assert_eq!(plain, reference(usage, pu, setting, peff, siblings, false), "{args:?}");
    assert_eq!(rec, reference(usage, pu, setting, peff, siblings, true), "{args:?} recursive");
}

fn family(input: &mut Input<'_>) {
    let k = 1 + input.index(8);
    let mut kids = [(0usize, 0usize); 8];
    for kid in kids.iter_mut().take(k) {
        *kid = (representable(input), extreme(input));
    }
    let kids = &kids[..k];
    let total: usize = kids.iter().map(|&(u, _)| u).sum(); // k * COUNTER_MAX fits
    let pu = total.saturating_add(representable(input));
    let siblings: usize = kids.iter().map(|&(u, s)| u.min(s)).sum();
    let peff = extreme(input);
    for recursive in [false, true] {
        let mut sum = 0u128;
        for &(u, s) in kids {
            let ep = effective_protection(u, pu, s, peff, siblings, recursive);
            assert!(ep <= peff);
            sum += ep as u128;
        }
        assert!(
            sum <= peff as u128,
            "children get {sum} > parent's {peff} (recursive {recursive}): pu {pu}, kids {kids:?}"
        );
    }
}

/// Nodes of a small tree: heap counters with `'static` parents, freed children first.
struct Nodes(Vec<*mut Counter<'static>>);

impl Nodes {
    fn get(&self, i: usize) -> &Counter<'static> {
        // SAFETY: a live box owned by `self`, freed only in `Drop`.
        unsafe { &*self.0[i] }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for &p in self.0.iter().rev() {
            // SAFETY: from `Box::into_raw`, freed once; children (later) before parents.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

fn tree(input: &mut Input<'_>) {
    let len = 1 + input.index(6);
    let mut nodes = Nodes(Vec::with_capacity(len));
    let mut model = Model::new();
    let mut all_track = true;
    for i in 0..len {
        let b = input.u8();
        let parent = if i == 0 { None } else { Some(usize::from(b & 0x7f) % i) };
        let parent_ref: Option<&'static Counter<'static>> = parent.map(|p| {
            // SAFETY: node `p` is a live box freed only after this child (reverse order).
            unsafe { &*nodes.0[p] }
        });
        let mut c = Counter::new(parent_ref);
        if b & 0x80 != 0 && b & 0x40 != 0 {
            c = c.without_protection();
            all_track = false;
        }
        nodes.0.push(Box::into_raw(Box::new(c)));
        model.add(parent);
    }
    // Charges (forced: limits play no part here), then protection settings.
    for i in 0..len {
        let amount = representable(input);
        let real = nodes.get(i).charge(amount).is_ok();
        assert_eq!(real, model.charge(i, amount), "charge({i}, {amount})");
    }
    for (i, m) in model.nodes.iter_mut().enumerate() {
        let (min, low) = (extreme(input), extreme(input));
        let c = nodes.get(i);
        // `usize::MAX` means "max": stored as COUNTER_MAX.
        let stored = |v: usize| if v == usize::MAX { COUNTER_MAX } else { v };
        let (min, low) = (stored(min), stored(low));
        assert_eq!(c.set_min(min).is_ok(), min <= COUNTER_MAX);
        assert_eq!(c.set_low(low).is_ok(), low <= COUNTER_MAX);
        if min <= COUNTER_MAX {
            m.min = min;
        }
        if low <= COUNTER_MAX {
            m.low = low;
        }
    }
    for root in 0..len {
        for recursive in [false, true] {
            check_tree(&nodes, &model, len, root, recursive, all_track);
        }
    }
}

fn check_tree(nodes: &Nodes, model: &Model, len: usize, root: usize, recursive: bool, all_track: bool) {
    let r = nodes.get(root);
    let eff: Vec<Option<(usize, usize)>> =
        (0..len).map(|i| nodes.get(i).effective_protection_under(r, recursive)).collect();
    for i in 0..len {
        let c = nodes.get(i);
        let under = model.path(i).contains(&root);
        assert_eq!(eff[i].is_some(), under, "Some iff {root} is on {i}'s path");
        let Some((emin, elow)) = eff[i] else { continue };
        if all_track {
            assert_eq!(
                eff[i],
                model.effective(i, root, recursive),
                "model at {i} under {root} ({recursive})"
            );
        }
        if i == root || c.usage() == 0 || !c.tracks_protection() {
            assert_eq!((emin, elow), (0, 0), "{i} under {root}: nothing to protect");
            continue;
        }
        let parent = model.nodes[i].parent.expect("below the root");
        if parent == root {
            assert_eq!((emin, elow), (c.min(), c.low()), "first level below {root} gets what it declares");
        } else {
            let (pmin, plow) = eff[parent].expect("parent is under the root too");
            assert!(emin <= pmin && elow <= plow, "{i} above its parent under {root}");
            if !recursive {
                assert!(emin <= c.usage().min(c.min()) && elow <= c.usage().min(c.low()));
            }
        }
    }
    // Children together never get more than their parent (below the first level).
    for (p, &e) in eff.iter().enumerate() {
        let Some((pmin, plow)) = e else { continue };
        if p == root {
            continue;
        }
        let (mut smin, mut slow) = (0u128, 0u128);
        for (i, &child) in eff.iter().enumerate() {
            if model.nodes[i].parent == Some(p) {
                let (emin, elow) = child.expect("child of a node under the root");
                smin += emin as u128;
                slow += elow as u128;
            }
        }
        assert!(smin <= pmin as u128 && slow <= plow as u128, "children of {p} above it under {root}");
    }
    // The stateful walk stores the same values where the path below the root is charged.
    for i in 0..len {
        nodes.get(i).calculate_protection(r, recursive);
    }
    for (i, &e) in eff.iter().enumerate() {
        if i == root || e.is_none() {
            continue;
        }
        let path = model.path(i);
        if path.iter().take_while(|&&x| x != root).all(|&x| nodes.get(x).usage() > 0) {
            let c = nodes.get(i);
            assert_eq!(
                Some((c.effective_min(), c.effective_low())),
                e,
                "stateful walk at {i} under {root} ({recursive})"
            );
        }
    }
}
