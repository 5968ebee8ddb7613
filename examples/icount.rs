//! Runs one hot path a fixed number of times, for instruction counting under
//! `valgrind --tool=callgrind` (`ci/icount.sh` runs every case twice, with N and 2N
//! iterations, and prints `(Ir(2N) − Ir(N)) / N`: instructions per operation, independent of
//! setup and of how busy the machine is).
//!
//! Usage: `icount <case> <iterations>`, or `icount --list`.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use chargetree::counter::Counter;
use chargetree::group::{Group, GroupSpec, OwnerCell, Tree, TreeConfig};
use chargetree::objgroup::ObjGroup;

std::thread_local! {
    static LOCAL: Cell<usize> = const { Cell::new(0) };
}

const CASES: &[&str] = &[
    "tls-pair",
    "atomic-pair",
    "counter-d1",
    "counter-d4",
    "counter-d8",
    "stocked-d4",
    "stocked-rr4",
    "stocked-rr64",
    "object-64b",
    "object-64b-ref",
    "object-64b-cloned-ref",
    "handle-clone-drop",
    "owner-cell-read",
    "drain-all-1",
    "drain-all-16",
    "drain-all-256",
    "engine-at-limit",
    "alloc16-inner",
    "alloc16-passthrough",
    "alloc16-tenant",
];

/// The shipped accounting allocator, as the global allocator: the `alloc16-*` cases
/// measure it (the other cases allocate only during setup).
#[global_allocator]
static ALLOC: chargetree::alloc::TenantAlloc<std::alloc::System> =
    chargetree::alloc::TenantAlloc::new(std::alloc::System);

fn box16() {
    drop(black_box(Box::new([0u8; 16])));
}

/// A chain of counters `depth` deep (the last is the leaf), leaked for the process's life.
fn counter_chain(depth: usize) -> &'static Counter<'static> {
    let mut c: &'static Counter<'static> = Box::leak(Box::new(Counter::new_root()));
    for _ in 1..depth {
        c = Box::leak(Box::new(Counter::new(Some(c))));
    }
    c
}

fn group_chain(tree: &Tree, depth: usize) -> Group {
    let mut g = tree.root();
    for _ in 1..depth {
        g = g.create_child(GroupSpec::new()).unwrap();
    }
    g
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "--list".into());
    if case == "--list" {
        for c in CASES {
            println!("{c}");
        }
        return;
    }
    let n: usize = args.next().and_then(|s| s.parse().ok()).expect("usage: icount <case> <iterations>");
    let tree = Tree::new();
    match case.as_str() {
        "tls-pair" => {
            for _ in 0..n {
                LOCAL.with(|l| l.set(black_box(l.get() + 1)));
                LOCAL.with(|l| l.set(black_box(l.get() - 1)));
            }
        }
        "atomic-pair" => {
            let a = AtomicUsize::new(0);
            for _ in 0..n {
                black_box(&a).fetch_add(1, Ordering::SeqCst);
                black_box(&a).fetch_sub(1, Ordering::SeqCst);
            }
        }
        "counter-d1" | "counter-d4" | "counter-d8" => {
            let depth = case[9..].parse().unwrap();
            let leaf = counter_chain(depth);
            for _ in 0..n {
                leaf.try_charge(black_box(1)).unwrap();
                leaf.uncharge(black_box(1));
            }
        }
        "stocked-d4" => {
            let g = group_chain(&tree, 4);
            for _ in 0..n {
                let _ = g.try_charge(black_box(1)).unwrap();
                g.uncharge(black_box(1));
            }
        }
        "stocked-rr4" | "stocked-rr64" => {
            // Stocked pairs round-robin over N sibling groups at depth 4 (`benches/stock.rs`'s
            // thrash shape), one pair per iteration: 4 fit in one CPU's stock, 64 do not
            // unless the stock holds them. N (the iteration count) should be a multiple of 64.
            let groups: usize = case[10..].parse().unwrap();
            let parent = group_chain(&tree, 3);
            let gs: Vec<Group> =
                (0..groups).map(|_| parent.create_child(GroupSpec::new()).unwrap()).collect();
            for i in 0..n {
                let g = &gs[i % groups];
                let _ = g.try_charge(black_box(1)).unwrap();
                g.uncharge(black_box(1));
            }
        }
        "object-64b" => {
            let o = group_chain(&tree, 4).obj_group().unwrap();
            for _ in 0..n {
                let _ = o.charge_bytes(black_box(64)).unwrap();
                o.uncharge_bytes(black_box(64));
            }
        }
        "object-64b-ref" => {
            let o = group_chain(&tree, 4).obj_group().unwrap();
            for _ in 0..n {
                let c = o.charge_object(black_box(64)).unwrap();
                // SAFETY: from `charge_object` just above, given back once.
                unsafe { <ObjGroup>::uncharge_object(black_box(c.object), black_box(64)) };
            }
        }
        "object-64b-cloned-ref" => {
            let o = group_chain(&tree, 4).obj_group().unwrap();
            for _ in 0..n {
                let _ = o.charge_bytes(black_box(64)).unwrap();
                let raw = black_box(o.clone().into_raw());
                // SAFETY: from `into_raw` just above, given back once.
                let back = unsafe { <ObjGroup>::from_raw(raw) };
                back.uncharge_bytes(black_box(64));
                drop(back);
            }
        }
        "handle-clone-drop" => {
            let g = group_chain(&tree, 2);
            for _ in 0..n {
                drop(black_box(black_box(&g).clone()));
            }
        }
        "owner-cell-read" => {
            let g = group_chain(&tree, 2);
            let cell = OwnerCell::new(g);
            let guard = tree.pin();
            for _ in 0..n {
                drop(black_box(cell.get(&guard)));
            }
        }
        "drain-all-1" | "drain-all-16" | "drain-all-256" => {
            let groups: usize = case[10..].parse().unwrap();
            // Up to 256 groups cached on 32 impersonated CPUs (64 entries each).
            let tree = Tree::with_config(TreeConfig::with_cpus(chargetree::cpu::TestCpus::new(32)));
            let gs: Vec<Group<chargetree::cpu::TestCpus>> =
                (0..groups).map(|_| tree.root().create_child(GroupSpec::new()).unwrap()).collect();
            for _ in 0..n {
                // Fill: each group caches units on one CPU, then one drain takes them all.
                for (i, g) in gs.iter().enumerate() {
                    // SAFETY: one thread impersonates the CPUs, one at a time.
                    unsafe {
                        chargetree::cpu::TestCpus::run_on(i / 8, || {
                            let _ = g.try_charge(1).unwrap();
                            g.uncharge(1);
                        })
                    };
                }
                black_box(tree.drain_all(&tree.root()));
            }
        }
        "alloc16-inner" => {
            // The inner allocator alone: the baseline of the two below.
            let layout = std::alloc::Layout::new::<[u8; 16]>();
            for _ in 0..n {
                use std::alloc::GlobalAlloc;
                // SAFETY: a non-zero layout, given back at once with the same layout.
                unsafe { std::alloc::System.dealloc(black_box(std::alloc::System.alloc(layout)), layout) };
            }
        }
        "alloc16-passthrough" => {
            // Through the accounting allocator, outside any tenant (not charged).
            for _ in 0..n {
                box16();
            }
        }
        "alloc16-tenant" => {
            let g = group_chain(&tree, 2);
            let _inside = chargetree::alloc::enter_group(&g).unwrap();
            for _ in 0..n {
                box16();
            }
        }
        "engine-at-limit" => {
            let g = group_chain(&tree, 4);
            g.set_max(10).unwrap();
            let _ = g.try_charge(10).unwrap();
            for _ in 0..n {
                black_box(g.try_charge(black_box(1)).is_err());
            }
        }
        other => panic!("unknown case {other}; try --list"),
    }
}
