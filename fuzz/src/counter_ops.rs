//! Fuzz target `counter`: counter operations on a random forest of [`Counter`]s, compared with
//! the sequential reference model ([`chargetree::model::Model`]) after every step.
//!
//! Input layout: one byte for the number of nodes (1–8), one byte per node (its parent
//! among the earlier nodes or none, and whether it counts failures), then operations until
//! the input ends: one byte picks the operation, the bytes after it are its arguments.
//!
//! After every operation every observable of every node must equal the model's: usage,
//! limits, peaks (global, local and each [`PeakWatcher`]'s), failcnt, underflows, forgiven,
//! protected usage and the children's sums, margin, depth, and the stateless effective
//! protection of every node under every ancestor (recursive or not). The stateful top-down
//! walk ([`Counter::calculate_protection`]) is compared with the model where its stored
//! values are defined (non-zero usage along the path).

use std::pin::Pin;

use crate::model::{Model, ModelChargeError};
use chargetree::COUNTER_MAX;
use chargetree::counter::{ChargeError, Counter, LimitError, ParseError, PeakWatcher, parse_amount};

use crate::input::Input;

/// Upper bound on operations per input, so that a long input cannot time out.
const MAX_STEPS: usize = 2048;

/// Heap counters with `'static` parent references, freed children first (in reverse order
/// of creation) when dropped, so nothing leaks per input.
struct Forest {
    nodes: Vec<*mut Counter<'static>>,
}

impl Forest {
    fn add(&mut self, parent: Option<usize>, failcnt: bool) -> usize {
        let parent: Option<&'static Counter<'static>> = parent.map(|i| {
            // SAFETY: node `i` is a live box owned by the forest and freed only in `Drop`,
            // after every node added later (reverse order), so the child's `'static` parent
            // reference never outlives it.
            unsafe { &*self.nodes[i] }
        });
        let mut c = Counter::new(parent);
        if !failcnt {
            c = c.without_failcnt();
        }
        self.nodes.push(Box::into_raw(Box::new(c)));
        self.nodes.len() - 1
    }

    fn get(&self, i: usize) -> &Counter<'static> {
        // SAFETY: a live box owned by the forest; the borrow ends before `Drop`.
        unsafe { &*self.nodes[i] }
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }
}

impl Drop for Forest {
    fn drop(&mut self) {
        for &p in self.nodes.iter().rev() {
            // SAFETY: from `Box::into_raw`, freed once; children (later) before parents.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// The model of one [`PeakWatcher`] (peak.rs): unregistered it reads the global peak;
/// registered it reads `max(value, local peak)`, and every reset of its counter (global or by
/// any watcher) first folds the local peak being discarded into `value`.
#[derive(Debug)]
struct WatchModel {
    node: usize,
    registered: bool,
    value: usize,
}

type Watchers<'f> = Vec<(Pin<Box<PeakWatcher<'f, 'static>>>, WatchModel)>;

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut forest = Forest { nodes: Vec::new() };
    let mut model = Model::new();
    let mut failcnt = Vec::new();
    let len = 1 + input.index(8);
    for i in 0..len {
        let b = input.u8();
        let parent = match usize::from(b & 0x7f) % (i + 1) {
            p if p == i => None,
            p => Some(p),
        };
        let counts = b & 0x80 == 0;
        forest.add(parent, counts);
        model.add(parent);
        failcnt.push(counts);
    }
    let forest = forest;
    // Declared after the forest: dropped (and unlinked) before it.
    let mut watchers: Watchers<'_> = Vec::new();
    check(&forest, &model, &failcnt, &watchers);
    let mut steps = 0;
    while !input.is_empty() && steps < MAX_STEPS {
        steps += 1;
        step(&mut input, &forest, &mut model, &mut watchers);
        check(&forest, &model, &failcnt, &watchers);
    }
    // Unlink the watchers in input-chosen order to exercise the intrusive list's unlinking.
    while !watchers.is_empty() {
        let w = input.index(watchers.len());
        drop(watchers.swap_remove(w));
    }
}

fn step<'f>(input: &mut Input<'_>, forest: &'f Forest, model: &mut Model, watchers: &mut Watchers<'f>) {
    let n = forest.len();
    match input.u8() % 16 {
        0 | 1 => {
            let (i, amount) = (input.index(n), input.amount());
            let real = forest.get(i).try_charge(amount);
            let want = model.try_charge(i, amount);
            match (real, want) {
                (Ok(()), Ok(())) => {}
                (Err(ChargeError::TooLarge { requested }), Err(ModelChargeError::TooLarge)) => {
                    assert_eq!(requested, amount);
                }
                (Err(ChargeError::Limit { at, level }), Err(ModelChargeError::Limit { level: l })) => {
                    assert_eq!(level, l, "try_charge({i}, {amount}): failing level");
                    let expected = forest.get(i).ancestors_and_self().nth(l).expect("level on the path");
                    assert!(std::ptr::eq(at, expected), "try_charge({i}, {amount}): failing node");
                }
                (r, w) => panic!("try_charge({i}, {amount}): real {r:?}, model {w:?}"),
            }
        }
        2 => {
            let (i, amount) = (input.index(n), input.amount());
            let real = forest.get(i).charge(amount);
            let want = model.charge(i, amount);
            assert_eq!(real.is_ok(), want, "charge({i}, {amount}): {real:?}");
            if let Err(e) = real {
                assert_eq!(e.requested, amount);
            }
        }
        3 => {
            let (i, amount) = (input.index(n), input.amount());
            let real = forest.get(i).try_uncharge(amount);
            let forgiven = model.uncharge(i, amount);
            match real {
                Ok(()) => assert_eq!(forgiven, 0, "try_uncharge({i}, {amount})"),
                Err(u) => {
                    assert_eq!((u.requested, u.forgiven), (amount, forgiven), "try_uncharge({i}, {amount})");
                    assert!(forgiven > 0);
                }
            }
        }
        4 => {
            // The asserting uncharge, only where it must not assert (debug builds panic on a
            // clamp by design); otherwise the reporting one.
            let (i, amount) = (input.index(n), input.amount());
            let mut probe = model.clone();
            if probe.uncharge(i, amount) == 0 {
                forest.get(i).uncharge(amount);
                model.uncharge(i, amount);
            } else {
                let forgiven = model.uncharge(i, amount);
                let real = forest.get(i).try_uncharge(amount).map_err(|u| u.forgiven);
                assert_eq!(real, Err(forgiven), "try_uncharge({i}, {amount})");
            }
        }
        5 => {
            let (i, v) = (input.index(n), input.limit());
            assert_eq!(forest.get(i).set_max(v), model.set_max(i, v), "set_max({i}, {v})");
        }
        6 => {
            // `swap_max` installs even below usage.
            let (i, v) = (input.index(n), input.limit());
            let real = forest.get(i).swap_max(v);
            // `usize::MAX` is "no limit", stored as COUNTER_MAX.
            let v = if v == usize::MAX { COUNTER_MAX } else { v };
            if v > COUNTER_MAX {
                assert_eq!(real, Err(LimitError::TooLarge { value: v }));
            } else {
                assert_eq!(real, Ok(model.nodes[i].max), "swap_max({i}, {v}) returns the old limit");
                model.nodes[i].max = v;
            }
        }
        7 => {
            let (i, v) = (input.index(n), input.limit());
            assert_eq!(forest.get(i).set_high(v), model.set_other(i, 0, v));
        }
        8 => {
            let (i, v) = (input.index(n), input.limit());
            assert_eq!(forest.get(i).set_min(v), model.set_other(i, 1, v));
        }
        9 => {
            let (i, v) = (input.index(n), input.limit());
            assert_eq!(forest.get(i).set_low(v), model.set_other(i, 2, v));
        }
        10 => {
            let i = input.index(n);
            fold_local_peak(model, watchers, i);
            forest.get(i).reset_peak();
            model.reset_peak(i);
        }
        11 => {
            if watchers.len() < 8 {
                let i = input.index(n);
                let w = Box::pin(PeakWatcher::new(forest.get(i)));
                watchers.push((w, WatchModel { node: i, registered: false, value: 0 }));
            }
        }
        12 => {
            if !watchers.is_empty() {
                let w = input.index(watchers.len());
                let i = watchers[w].1.node;
                fold_local_peak(model, watchers, i);
                watchers[w].0.as_ref().reset();
                let usage = model.nodes[i].usage;
                model.nodes[i].local_peak = usage;
                let m = &mut watchers[w].1;
                m.registered = true;
                m.value = usage;
            }
        }
        13 => {
            if !watchers.is_empty() {
                let w = input.index(watchers.len());
                drop(watchers.swap_remove(w));
            }
        }
        14 => {
            let (root, recursive) = (input.index(n), input.bool());
            stateful_walk(forest, model, root, recursive);
        }
        _ => parse(input),
    }
}

/// Every registered watcher of node `i` keeps the local peak that a reset is about to end.
fn fold_local_peak(model: &Model, watchers: &mut Watchers<'_>, i: usize) {
    let ended = model.nodes[i].local_peak;
    for (_, m) in watchers.iter_mut() {
        if m.node == i && m.registered {
            m.value = m.value.max(ended);
        }
    }
}

/// Linux's reclaim-time walk: `calculate_protection` top-down (parents have lower indices)
/// for every node under `root`, then the stored values must equal the model's wherever the
/// whole path below `root` has non-zero usage (a zero-usage node keeps stale values by
/// design).
fn stateful_walk(forest: &Forest, model: &Model, root: usize, recursive: bool) {
    let r = forest.get(root);
    for i in 0..forest.len() {
        forest.get(i).calculate_protection(r, recursive);
    }
    for i in 0..forest.len() {
        if i == root {
            continue;
        }
        let Some(want) = model.effective(i, root, recursive) else { continue };
        let path = model.path(i);
        let below_root = path.iter().take_while(|&&x| x != root);
        if below_root.clone().all(|&x| model.nodes[x].usage > 0) {
            let c = forest.get(i);
            assert_eq!(
                (c.effective_min(), c.effective_low()),
                want,
                "stateful walk at {i} under {root} (recursive {recursive})"
            );
        }
    }
}

/// `parse_amount` on a formatted amount (checked against 128-bit arithmetic) and on raw
/// bytes (must not panic; a result is representable).
fn parse(input: &mut Input<'_>) {
    const UNITS: [usize; 6] = [1, 3, 512, 4096, 1 << 20, usize::MAX];
    const SUFFIXES: [&str; 8] = ["", "K", "m", "G", "t", "P", "E", "k"];
    let unit = UNITS[input.index(UNITS.len())];
    let value = (input.usize() as u64) >> (input.u8() % 65).min(63);
    let suffix = input.index(SUFFIXES.len());
    let flags = input.u8();
    let hex = flags & 1 != 0 && suffix != 6; // `E` is a hex digit
    let mut s = String::new();
    if flags & 2 != 0 {
        s.push_str(" \t");
    }
    if hex {
        s.push_str(&format!("0x{value:x}"));
    } else {
        s.push_str(&format!("{value}"));
    }
    s.push_str(SUFFIXES[suffix]);
    if flags & 4 != 0 {
        s.push('\n');
    }
    let shift = [0u32, 10, 20, 30, 40, 50, 60, 10][suffix];
    let bytes = u128::from(value) << shift;
    let want = if bytes > u128::from(u64::MAX) {
        Err(ParseError::TooLarge)
    } else {
        let units = bytes / unit as u128;
        if units > COUNTER_MAX as u128 { Err(ParseError::TooLarge) } else { Ok(units as usize) }
    };
    assert_eq!(parse_amount(&s, unit), want, "parse_amount({s:?}, {unit})");

    // Raw bytes: anything goes, but never a panic nor an unrepresentable amount.
    let len = input.index(12);
    let raw: Vec<u8> = (0..len).map(|_| input.u8()).collect();
    if let Ok(Ok(v)) = std::str::from_utf8(&raw).map(|s| parse_amount(s, unit)) {
        assert!(v <= COUNTER_MAX, "parse_amount({raw:?}) = {v}");
    }
}

fn check(forest: &Forest, model: &Model, failcnt: &[bool], watchers: &Watchers<'_>) {
    for (i, &counts_failures) in failcnt.iter().enumerate() {
        let c = forest.get(i);
        let m = &model.nodes[i];
        assert_eq!(c.usage(), m.usage, "usage of {i}");
        assert_eq!(c.max(), m.max, "max of {i}");
        assert_eq!(c.high(), m.high, "high of {i}");
        assert_eq!(c.min(), m.min, "min of {i}");
        assert_eq!(c.low(), m.low, "low of {i}");
        assert_eq!(c.peak(), m.peak, "peak of {i}");
        assert_eq!(c.local_peak(), m.local_peak, "local peak of {i}");
        assert!(c.local_peak() <= c.peak(), "local peak above the global one at {i}");
        let fails = if counts_failures { m.failcnt } else { 0 };
        assert_eq!(c.failcnt(), fails, "failcnt of {i}");
        assert_eq!(c.underflows(), m.underflows, "underflows of {i}");
        assert_eq!(c.forgiven(), m.forgiven, "forgiven of {i}");
        assert_eq!(c.min_usage(), model.min_usage(i), "min_usage of {i}");
        assert_eq!(c.low_usage(), model.low_usage(i), "low_usage of {i}");
        assert_eq!(c.children_min_usage(), model.children_min_usage(i), "children_min_usage of {i}");
        assert_eq!(c.children_low_usage(), model.children_low_usage(i), "children_low_usage of {i}");
        assert_eq!(c.margin(), m.max.saturating_sub(m.usage), "margin of {i}");
        assert_eq!(c.depth(), model.path(i).len() - 1, "depth of {i}");
        match (c.parent(), m.parent) {
            (None, None) => {}
            (Some(p), Some(q)) => assert!(std::ptr::eq(p, forest.get(q)), "parent of {i}"),
            (p, q) => panic!("parent of {i}: {p:?} vs {q:?}"),
        }
        for root in 0..forest.len() {
            for recursive in [false, true] {
                let real = c.effective_protection_under(forest.get(root), recursive);
                assert_eq!(
                    real,
                    model.effective(i, root, recursive),
                    "effective protection of {i} under {root} (recursive {recursive})"
                );
                if let Some((emin, elow)) = real.filter(|_| !recursive && i != root) {
                    // Never more than declared without recursion.
                    assert!(emin <= m.min && elow <= m.low, "effective above declared at {i}");
                }
            }
        }
    }
    for (w, m) in watchers {
        let node = &model.nodes[m.node];
        let want = if m.registered { m.value.max(node.local_peak) } else { node.peak };
        assert_eq!(w.read(), want, "watcher of {} ({m:?})", m.node);
    }
}
