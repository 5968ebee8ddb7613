//! Soak test: random multi-threaded operations on one tree for a bounded time, then every
//! invariant checked: each counter back to its expected value, each group released and
//! freed exactly once, nothing leaked (run it under valgrind or a sanitizer to check the
//! last part; `ci/sanitizers.sh` does).
//!
//! Usage: `soak [--seconds S] [--threads T] [--seed N]` (defaults: 3 s, 4 threads).
//!
//! Each thread keeps a ledger of what it charged (unit charges on groups, byte charges on
//! `ObjGroup`s, objects with an `OwnerCell`), so at the end it can give everything back and
//! the counters must return to exactly zero. Meanwhile threads create groups, take leaves
//! offline, clone and drop handles, move charges between groups, drain stocks and change
//! limits, so every protocol of the crate is exercised concurrently.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chargetree::group::{ChargeOptions, Group, GroupId, GroupSpec, Observer, OwnerCell, Tree, TreeConfig};
use chargetree::objgroup::ObjGroup;

const MAX_GROUPS: usize = 1 << 20;

/// Per-group release and free counts (atomics: `released` may run in any context).
struct Counts {
    released: Vec<AtomicU8>,
    freed: Vec<AtomicU8>,
    over: AtomicUsize,
}

struct Watch(Arc<Counts>);

impl Observer for Watch {
    fn released(&self, id: GroupId) {
        match self.0.released.get(id.index()) {
            Some(c) => {
                c.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.0.over.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn freed(&self, id: GroupId) {
        if let Some(c) = self.0.freed.get(id.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What one thread holds and must give back.
#[derive(Default)]
struct Ledger {
    units: Vec<(Group, usize)>,
    bytes: Vec<(ObjGroup, usize)>,
    objects: Vec<(OwnerCell, usize)>,
    handles: Vec<Group>,
}

fn pick(groups: &Mutex<Vec<Group>>, rng: &mut Rng) -> Group {
    let g = groups.lock().unwrap();
    g[rng.below(g.len())].clone()
}

fn worker(tree: &Tree, groups: &Mutex<Vec<Group>>, seed: u64, deadline: Instant) -> usize {
    let mut rng = Rng(seed | 1);
    let mut ledger = Ledger::default();
    let mut ops = 0;
    while Instant::now() < deadline {
        ops += 1;
        match rng.below(100) {
            0..=29 => {
                let g = pick(groups, &mut rng);
                let n = 1 + rng.below(100);
                let opts = if rng.below(10) == 0 {
                    ChargeOptions::DEFAULT.no_fail()
                } else {
                    ChargeOptions::DEFAULT
                };
                if g.charge_with(n, opts).is_ok() {
                    ledger.units.push((g, n));
                }
            }
            30..=49 => {
                if !ledger.units.is_empty() {
                    let (g, n) = ledger.units.swap_remove(rng.below(ledger.units.len()));
                    g.uncharge(n);
                }
            }
            50..=59 => {
                let g = pick(groups, &mut rng);
                if let Some(o) = g.obj_group() {
                    let size = 1 + rng.below(10_000);
                    if o.charge_bytes(size).is_ok() {
                        ledger.bytes.push((o, size));
                    }
                }
            }
            60..=66 => {
                if !ledger.bytes.is_empty() {
                    let (o, size) = ledger.bytes.swap_remove(rng.below(ledger.bytes.len()));
                    o.uncharge_bytes(size);
                }
            }
            67..=71 => {
                let g = pick(groups, &mut rng);
                let n = 1 + rng.below(10);
                if g.counter().try_charge(n).is_ok() {
                    ledger.objects.push((OwnerCell::new(g), n));
                }
            }
            72..=75 => {
                if !ledger.objects.is_empty() {
                    let i = rng.below(ledger.objects.len());
                    let to = pick(groups, &mut rng);
                    // Moves may fail (limits, offline target); the object keeps its owner then.
                    let _ = ledger.objects[i].0.move_charge(&to, ledger.objects[i].1);
                }
            }
            76..=78 => {
                if !ledger.objects.is_empty() {
                    let (cell, n) = ledger.objects.swap_remove(rng.below(ledger.objects.len()));
                    if let Some(owner) = cell.take() {
                        owner.counter().uncharge(n);
                    }
                }
            }
            79..=84 => {
                let g = pick(groups, &mut rng);
                ledger.handles.push(g.clone());
                if ledger.handles.len() > 16 {
                    ledger.handles.swap_remove(rng.below(ledger.handles.len()));
                }
            }
            85..=88 => {
                let parent = pick(groups, &mut rng);
                let mut gs = groups.lock().unwrap();
                if gs.len() < 48 {
                    let max =
                        if rng.below(3) == 0 { 500 + rng.below(5_000) } else { chargetree::COUNTER_MAX };
                    if let Ok(c) = parent.create_child(GroupSpec::new().max(max).low(rng.below(200))) {
                        gs.push(c);
                    }
                }
            }
            89..=92 => {
                // Take a random leaf offline and forget it (objects charged to it live on).
                let mut gs = groups.lock().unwrap();
                let i = rng.below(gs.len());
                if !gs[i].is_root() && gs[i].first_child().is_none() && gs[i].offline().is_ok() {
                    gs.swap_remove(i);
                }
            }
            93..=95 => {
                let g = pick(groups, &mut rng);
                let _ = tree.drain_all(&g);
            }
            96..=97 => {
                let g = pick(groups, &mut rng);
                let _ = g.set_max(if rng.below(2) == 0 {
                    chargetree::COUNTER_MAX
                } else {
                    1_000 + rng.below(20_000)
                });
            }
            _ => {
                let _ = tree.drain_local();
                tree.reclaim();
            }
        }
    }
    // Give everything back.
    for (g, n) in ledger.units.drain(..) {
        g.uncharge(n);
    }
    for (o, size) in ledger.bytes.drain(..) {
        o.uncharge_bytes(size);
    }
    for (cell, n) in ledger.objects.drain(..) {
        if let Some(owner) = cell.take() {
            owner.counter().uncharge(n);
        }
    }
    ops
}

fn main() {
    let mut seconds = 3.0f64;
    let mut threads = 4usize;
    let mut seed = 0x5eed_u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--seconds" => seconds = v.parse().expect("--seconds S"),
            "--threads" => threads = v.parse().expect("--threads T"),
            "--seed" => seed = v.parse().expect("--seed N"),
            _ => panic!("usage: soak [--seconds S] [--threads T] [--seed N]"),
        }
    }

    let counts = Arc::new(Counts {
        released: (0..MAX_GROUPS).map(|_| AtomicU8::new(0)).collect(),
        freed: (0..MAX_GROUPS).map(|_| AtomicU8::new(0)).collect(),
        over: AtomicUsize::new(0),
    });
    let tree = Tree::with_config(TreeConfig::new().batch(16).observer(Watch(counts.clone())));
    let root = tree.root();
    let groups = Mutex::new(vec![root.clone()]);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);

    let ops: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (tree, groups) = (&tree, &groups);
                s.spawn(move || {
                    worker(tree, groups, seed.wrapping_mul(t as u64 + 1).wrapping_add(t as u64), deadline)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });

    // Every thread gave back all it charged: every online group is back to exactly zero.
    let _ = tree.drain_all(&root);
    let online = groups.into_inner().unwrap();
    for g in &online {
        assert_eq!(g.counter().usage(), 0, "group {} keeps {} units", g.id(), g.counter().usage());
        assert_eq!(g.counter().underflows(), 0, "an uncharge clamped at group {}", g.id());
    }
    let stats = tree.stats();
    println!(
        "{ops} operations on {threads} threads in {seconds} s; {} groups created; {stats:?}",
        stats.created
    );
    drop(online);
    drop(root);
    let created = stats.created;
    drop(tree);

    // Dropping the tree frees everything: each group released and freed exactly once.
    assert_eq!(counts.over.load(Ordering::Relaxed), 0, "more than {MAX_GROUPS} groups");
    for id in 0..created.min(MAX_GROUPS) {
        let (r, f) = (counts.released[id].load(Ordering::Relaxed), counts.freed[id].load(Ordering::Relaxed));
        assert_eq!((r, f), (1, 1), "group {id}: released {r} times, freed {f} times");
    }
    // Ids are dense (a refused creation takes none), so nothing was seen above them.
    for id in created..MAX_GROUPS {
        let (r, f) = (counts.released[id].load(Ordering::Relaxed), counts.freed[id].load(Ordering::Relaxed));
        assert_eq!((r, f), (0, 0), "id {id} is above the {created} groups created");
    }
    println!("all {created} groups released and freed exactly once; every counter balanced");
}
