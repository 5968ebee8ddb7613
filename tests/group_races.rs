//! Groups under racing writers, at the level the engine and the stocks add: random mixes of
//! charges (some refused by limits), legal uncharges, over-uncharges of one designated
//! group, protection setters, peak resets and groups created and taken offline, from
//! several threads on their own CPUs at once. At quiescence (after one drain) every
//! invariant holds exactly: each parent equals the sum of its children, no peak is above its
//! group's `max` nor below its usage, every protected-usage sum is exact, and no group but the
//! over-uncharged one ever counted an underflow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use chargetree::counter::Counter;
use chargetree::cpu::TestCpus;
use chargetree::group::{ChargeFailure, Group, GroupSpec, Tree, TreeConfig};

const fn scaled(n: usize) -> usize {
    if cfg!(miri) { n / 100 + 1 } else { n }
}

fn on<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    // SAFETY: each worker thread runs on a CPU of its own; the main thread on none.
    unsafe { TestCpus::run_on(cpu, f) }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn assert_protection_exact(c: &Counter<'_>, what: &str) {
    let top = c.parent().is_none();
    assert_eq!(c.min_usage(), if top { 0 } else { c.usage().min(c.min()) }, "{what}: min_usage");
    assert_eq!(c.low_usage(), if top { 0 } else { c.usage().min(c.low()) }, "{what}: low_usage");
}

#[test]
fn racing_group_mixes_keep_every_invariant_at_quiescence() {
    const WORKERS: usize = 3;
    for seed in 0..scaled(12) as u64 {
        let tree: Tree<TestCpus> = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(WORKERS)).batch(8));
        let root = tree.root();
        root.set_max(600).unwrap();
        let p = root.create_child(GroupSpec::new().name("p").max(400)).unwrap();
        let q = root.create_child(GroupSpec::new().name("q")).unwrap();
        let a = p.create_child(GroupSpec::new().name("a").max(120)).unwrap();
        let b = p.create_child(GroupSpec::new().name("b")).unwrap();
        // a, b, q, and each worker's transient children under q.
        let held: [AtomicUsize; 3] = Default::default();
        thread::scope(|s| {
            for w in 0..WORKERS {
                let (leaves, held, p, q) = ([&a, &b, &q], &held, &p, &q);
                s.spawn(move || {
                    on(w, || {
                        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64 + 1) | 1);
                        let mut mine = [0usize; 3];
                        let mut transient: Option<(Group<TestCpus>, usize)> = None;
                        for _ in 0..scaled(2_000) {
                            let i = rng.below(3);
                            let g = leaves[i];
                            match rng.below(10) {
                                0..=3 => {
                                    let n = 1 + rng.below(40);
                                    match g.try_charge(n) {
                                        Ok(_) => mine[i] += n,
                                        Err(ChargeFailure::Limit { .. }) => {}
                                        Err(e) => panic!("{e}"),
                                    }
                                }
                                4 => {
                                    if i == 1 {
                                        // Over-uncharges live on b only.
                                        let _ = g.counter().try_uncharge(rng.below(mine[i] + 20));
                                        mine[i] = 0;
                                    } else {
                                        let n = rng.below(mine[i] + 1);
                                        g.uncharge(n);
                                        mine[i] -= n;
                                    }
                                }
                                5 => {
                                    let v = rng.below(100);
                                    let c = if rng.below(4) == 0 { p.counter() } else { g.counter() };
                                    if rng.below(2) == 0 { c.set_min(v) } else { c.set_low(v) }.unwrap();
                                }
                                6 => g.counter().reset_peak(),
                                7 => {
                                    // A transient group: created, charged, emptied, offlined.
                                    match transient.take() {
                                        None => {
                                            let t = q.create_child(GroupSpec::new().min(10).max(50)).unwrap();
                                            let n = rng.below(60);
                                            let got = if t.try_charge(n).is_ok() { n } else { 0 };
                                            transient = Some((t, got));
                                        }
                                        Some((t, got)) => {
                                            t.uncharge(got);
                                            t.offline().unwrap();
                                        }
                                    }
                                }
                                _ => {
                                    if i != 1 && mine[i] > 0 {
                                        g.uncharge(mine[i]);
                                        mine[i] = 0;
                                    }
                                }
                            }
                        }
                        if let Some((t, got)) = transient {
                            t.uncharge(got);
                            t.offline().unwrap();
                        }
                        for (slot, m) in held.iter().zip(mine) {
                            slot.fetch_add(m, Ordering::Relaxed);
                        }
                    })
                });
            }
        });
        // Quiescence: give every cached unit back, so counters hold exactly what is charged.
        let _ = tree.drain_all(&root);
        let all = [("root", &root), ("p", &p), ("q", &q), ("a", &a), ("b", &b)];
        let ctx = |w: &str| format!("seed {seed}: {w}");
        assert_eq!(
            a.counter().usage(),
            held[0].load(Ordering::Relaxed),
            "{}",
            ctx("a holds what was charged")
        );
        assert_eq!(
            q.counter().usage(),
            held[2].load(Ordering::Relaxed),
            "{}",
            ctx("q holds what was charged")
        );
        assert_eq!(p.counter().usage(), a.counter().usage() + b.counter().usage(), "{}", ctx("p = a + b"));
        assert_eq!(
            root.counter().usage(),
            p.counter().usage() + q.counter().usage(),
            "{}",
            ctx("root = p + q")
        );
        for (name, g) in all {
            let c = g.counter();
            assert!(c.peak() >= c.usage(), "{}: peak {} < usage {}", ctx(name), c.peak(), c.usage());
            assert!(c.peak() <= c.max(), "{}: peak {} > max {}", ctx(name), c.peak(), c.max());
            assert_protection_exact(c, &ctx(name));
        }
        let min_sum = |gs: &[&Group<TestCpus>]| gs.iter().map(|g| g.counter().min_usage()).sum::<usize>();
        let low_sum = |gs: &[&Group<TestCpus>]| gs.iter().map(|g| g.counter().low_usage()).sum::<usize>();
        assert_eq!(p.counter().children_min_usage(), min_sum(&[&a, &b]), "{}", ctx("p's min sum"));
        assert_eq!(p.counter().children_low_usage(), low_sum(&[&a, &b]), "{}", ctx("p's low sum"));
        assert_eq!(root.counter().children_min_usage(), min_sum(&[&p, &q]), "{}", ctx("root's min sum"));
        assert_eq!(root.counter().children_low_usage(), low_sum(&[&p, &q]), "{}", ctx("root's low sum"));
        assert_eq!(q.counter().children_min_usage(), 0, "{}", ctx("offline children claim no protection"));
        for (name, g) in [("root", &root), ("p", &p), ("q", &q), ("a", &a)] {
            assert_eq!(g.counter().underflows(), 0, "{}", ctx(&format!("{name} counted an underflow")));
        }
        a.uncharge(a.counter().usage());
        q.uncharge(q.counter().usage());
        let rest = b.counter().usage();
        b.uncharge(rest);
        let _ = tree.drain_all(&root);
        assert_eq!(root.counter().usage(), 0, "{}", ctx("everything uncharged"));
    }
}
