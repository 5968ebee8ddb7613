//! Random operation sequences on random trees, compared with the sequential model after
//! every step (arc-swap's `tests/random.rs`, sharded-slab's `properties.rs`).

use alloc_crate::vec::Vec;

use proptest::prelude::*;

use super::Forest;
use crate::counter::{COUNTER_MAX, ChargeError, Counter};
use crate::model::{Model, ModelChargeError};

#[derive(Clone, Debug)]
enum Op {
    TryCharge(usize, usize),
    Charge(usize, usize),
    Uncharge(usize, usize),
    SetMax(usize, usize),
    SetHigh(usize, usize),
    SetMin(usize, usize),
    SetLow(usize, usize),
    ResetPeak(usize),
}

/// Mostly small amounts, sometimes the edges of the representable range.
fn amount() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..64,
        1 => Just(COUNTER_MAX),
        1 => Just(usize::MAX),
        1 => (COUNTER_MAX - 64)..=COUNTER_MAX,
    ]
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    let n = 0..nodes;
    prop_oneof![
        4 => (n.clone(), amount()).prop_map(|(i, a)| Op::TryCharge(i, a)),
        2 => (n.clone(), amount()).prop_map(|(i, a)| Op::Charge(i, a)),
        3 => (n.clone(), amount()).prop_map(|(i, a)| Op::Uncharge(i, a)),
        2 => (n.clone(), amount()).prop_map(|(i, a)| Op::SetMax(i, a)),
        1 => (n.clone(), amount()).prop_map(|(i, a)| Op::SetHigh(i, a)),
        1 => (n.clone(), 0usize..128).prop_map(|(i, a)| Op::SetMin(i, a)),
        1 => (n.clone(), 0usize..128).prop_map(|(i, a)| Op::SetLow(i, a)),
        1 => n.prop_map(Op::ResetPeak),
    ]
}

/// A tree: node 0 is the root, node i > 0 has a parent among 0..i.
fn tree_and_ops() -> impl Strategy<Value = (Vec<usize>, Vec<Op>)> {
    (1usize..7).prop_flat_map(|len| {
        let parents = (1..len).map(|i| 0..i).collect::<Vec<_>>();
        (parents, proptest::collection::vec(op(len), 1..if cfg!(miri) { 24 } else { 60 }))
    })
}

fn build(parents: &[usize]) -> (Forest, Model) {
    let mut forest = Forest::new();
    let mut model = Model::new();
    forest.add(None);
    model.add(None);
    for &p in parents {
        forest.add(Some(p));
        model.add(Some(p));
    }
    (forest, model)
}

fn check_equal(forest: &Forest, model: &Model) -> Result<(), TestCaseError> {
    for i in 0..forest.len() {
        let c = forest.get(i);
        let m = &model.nodes[i];
        prop_assert_eq!(c.usage(), m.usage, "usage of {}", i);
        prop_assert_eq!(c.max(), m.max, "max of {}", i);
        prop_assert_eq!(c.high(), m.high, "high of {}", i);
        prop_assert_eq!(c.min(), m.min, "min of {}", i);
        prop_assert_eq!(c.low(), m.low, "low of {}", i);
        prop_assert_eq!(c.peak(), m.peak, "peak of {}", i);
        prop_assert_eq!(c.local_peak(), m.local_peak, "local peak of {}", i);
        prop_assert_eq!(c.failcnt(), m.failcnt, "failcnt of {}", i);
        prop_assert_eq!(c.underflows(), m.underflows, "underflows of {}", i);
        prop_assert_eq!(c.forgiven(), m.forgiven, "forgiven of {}", i);
        prop_assert_eq!(c.min_usage(), model.min_usage(i), "min_usage of {}", i);
        prop_assert_eq!(c.low_usage(), model.low_usage(i), "low_usage of {}", i);
        prop_assert_eq!(c.children_min_usage(), model.children_min_usage(i), "children_min of {}", i);
        prop_assert_eq!(c.children_low_usage(), model.children_low_usage(i), "children_low of {}", i);
        for recursive in [false, true] {
            prop_assert_eq!(
                c.effective_protection_under(forest.get(0), recursive),
                model.effective(i, 0, recursive),
                "effective protection of {} (recursive {})",
                i,
                recursive
            );
        }
    }
    // The stateful top-down walk agrees with the stateless query wherever usage is non-zero
    // along the whole path (a zero-usage node keeps stale values by design, and uncharging
    // a parent for its child's charges can leave a parent at zero under a busy child).
    for recursive in [false, true] {
        for i in 0..forest.len() {
            forest.get(i).calculate_protection(forest.get(0), recursive);
        }
        for i in 1..forest.len() {
            let c = forest.get(i);
            if c.ancestors_and_self().all(|a| a.usage() > 0) {
                let want = model.effective(i, 0, recursive).unwrap();
                prop_assert_eq!((c.effective_min(), c.effective_low()), want, "stateful walk at {}", i);
            }
        }
    }
    Ok(())
}

fn apply(forest: &Forest, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::TryCharge(i, n) => {
            let real = forest.get(i).try_charge(n);
            let want = model.try_charge(i, n);
            match (real, want) {
                (Ok(()), Ok(())) => {}
                (Err(ChargeError::TooLarge { requested }), Err(ModelChargeError::TooLarge)) => {
                    prop_assert_eq!(requested, n)
                }
                (Err(ChargeError::Limit { at, level }), Err(ModelChargeError::Limit { level: l })) => {
                    prop_assert_eq!(level, l);
                    let expected: &Counter<'_> = forest.get(i).ancestors_and_self().nth(l).unwrap();
                    prop_assert!(core::ptr::eq(at, expected));
                }
                (r, w) => prop_assert!(false, "try_charge({}, {}): real {:?}, model {:?}", i, n, r, w),
            }
        }
        Op::Charge(i, n) => {
            prop_assert_eq!(forest.get(i).charge(n).is_ok(), model.charge(i, n), "charge({}, {})", i, n)
        }
        Op::Uncharge(i, n) => {
            let real = forest.get(i).try_uncharge(n).err().map_or(0, |u| u.forgiven);
            prop_assert_eq!(real, model.uncharge(i, n), "uncharge({}, {})", i, n);
        }
        Op::SetMax(i, v) => prop_assert_eq!(forest.get(i).set_max(v), model.set_max(i, v)),
        Op::SetHigh(i, v) => prop_assert_eq!(forest.get(i).set_high(v), model.set_other(i, 0, v)),
        Op::SetMin(i, v) => prop_assert_eq!(forest.get(i).set_min(v), model.set_other(i, 1, v)),
        Op::SetLow(i, v) => prop_assert_eq!(forest.get(i).set_low(v), model.set_other(i, 2, v)),
        Op::ResetPeak(i) => {
            forest.get(i).reset_peak();
            model.reset_peak(i);
        }
    }
    Ok(())
}

fn cases() -> u32 {
    if cfg!(miri) { 8 } else { 256 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Every observable of every node equals the model's after every operation.
    #[test]
    fn counter_matches_model((parents, ops) in tree_and_ops()) {
        let (forest, mut model) = build(&parents);
        for op in &ops {
            apply(&forest, &mut model, op)?;
            check_equal(&forest, &model)?;
        }
    }

    /// `effective_protection` never exceeds the parent's effective value, nor (without
    /// recursion) the declared value or the usage; no input panics.
    #[test]
    fn effective_protection_bounds(
        usage in any::<usize>(),
        parent_usage in any::<usize>(),
        setting in any::<usize>(),
        parent_effective in any::<usize>(),
        siblings in any::<usize>(),
        recursive in any::<bool>(),
    ) {
        let ep = crate::counter::effective_protection(usage, parent_usage, setting, parent_effective, siblings, recursive);
        prop_assert!(ep <= parent_effective);
        if !recursive {
            prop_assert!(ep <= setting.min(usage));
        }
    }
}
