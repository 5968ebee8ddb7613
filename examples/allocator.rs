//! A global allocator with per-tenant memory limits.
//!
//! Every allocation of this process goes through chargetree's [`TenantAlloc`]: allocations
//! made while a thread has entered a tenant are charged, in bytes, to that tenant's group
//! (through its `ObjGroup` and the per-CPU object stock), and refused (null) when the group
//! is at its limit, so `Vec::try_reserve` reports an error and the process carries on. Four
//! tenants, in a tree that lives in a `static`, run a workload that builds, grows and drops
//! large collections; one of them is greedy and keeps hitting its limit. One collection is
//! charged to a group of its own through the `allocator_api2` allocator [`GroupAlloc`].
//!
//! At the end the example checks that the library never allocated inside `alloc` or
//! `dealloc` (the allocator's count of nested calls is 0) and that every group is back to
//! zero.
//!
//! Run it with `cargo run --release --example allocator`.

use std::alloc::System;
use std::collections::HashMap;
use std::thread;

use chargetree::alloc::{self, GroupAlloc, TenantAlloc};
use chargetree::counter::parse_amount;
use chargetree::group::{Group, GroupSpec, LazyTree, TreeConfig};

#[global_allocator]
static ALLOC: TenantAlloc<System> = TenantAlloc::new(System);

/// The tenants live for the process: their tree is a `static`, built on first use.
static TREE: LazyTree = LazyTree::new(TreeConfig::new);

/// Units are 4 KiB pages; `ObjGroup`s charge bytes and round to pages.
fn pages(s: &str) -> usize {
    parse_amount(s, 4096).expect("valid amount")
}

/// Builds, grows and drops collections; returns how many reservations were refused.
fn workload(seed: u64, rounds: usize, greedy: bool) -> usize {
    let mut refused = 0;
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..rounds {
        // A vector grown element by element (many reallocations).
        let n = 1_000 + (next() % 50_000) as usize;
        let mut v: Vec<u64> = Vec::new();
        for i in 0..n {
            if v.len() == v.capacity() && v.try_reserve(v.len().max(16)).is_err() {
                refused += 1;
                break;
            }
            v.push(i as u64);
        }
        // A map of strings.
        let mut m: HashMap<u64, String> = HashMap::new();
        for _ in 0..(next() % 2_000) {
            let k = next();
            m.insert(k, format!("value-{k:x}"));
        }
        // The greedy tenant tries to hold far more than its limit.
        if greedy {
            let mut hog: Vec<u8> = Vec::new();
            if hog.try_reserve_exact(64 << 20).is_err() {
                refused += 1;
            }
        }
        drop((v, m));
    }
    refused
}

fn print_group(name: &str, g: &Group) {
    let c = g.counter();
    println!(
        "{name:<10} usage {:>6} pages  peak {:>6}  max {:>8}  failcnt {:>4}  events {}",
        c.usage(),
        c.peak(),
        if c.max() == chargetree::COUNTER_MAX { "max".to_string() } else { c.max().to_string() },
        c.failcnt(),
        g.events()
    );
}

fn main() {
    let tree = &*TREE;
    let root = tree.root();
    // (name, max, high, greedy): gamma's `high` is low enough to be crossed, so its
    // allocations report it; greedy asks for far more than its limit.
    let tenants: Vec<(String, Group, bool)> = [
        ("alpha", "256M", "192M", false),
        ("beta", "256M", "192M", false),
        ("gamma", "64M", "512K", false),
        ("greedy", "32M", "24M", true),
    ]
    .into_iter()
    .map(|(name, max, high, greedy)| {
        let spec = GroupSpec::new().name(name).max(pages(max)).high(pages(high));
        (name.to_string(), root.create_child(spec).unwrap(), greedy)
    })
    .collect();

    let rounds = if cfg!(debug_assertions) { 20 } else { 60 };
    let refused: Vec<usize> = thread::scope(|s| {
        let handles: Vec<_> = tenants
            .iter()
            .enumerate()
            .map(|(i, (_, group, greedy))| {
                s.spawn(move || {
                    let _tenant = alloc::enter_group(group).expect("the tree is alive");
                    workload(0x9e37_79b9 + i as u64, rounds, *greedy)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // One collection charged to a group of its own, whichever thread grows it.
    let cache = root.create_child(GroupSpec::new().name("cache").max(pages("8M"))).unwrap();
    let mut charged_vec: allocator_api2::vec::Vec<u64, GroupAlloc> =
        allocator_api2::vec::Vec::new_in(GroupAlloc::new(cache.obj_group().unwrap()));
    let mut cache_refused = false;
    for i in 0..2_000_000u64 {
        if charged_vec.len() == charged_vec.capacity()
            && charged_vec.try_reserve(charged_vec.len().max(1024)).is_err()
        {
            cache_refused = true;
            break;
        }
        charged_vec.push(i);
    }
    let cache_usage = cache.counter().usage();

    println!("tenant workloads done ({rounds} rounds each)\n");
    for ((name, g, _), r) in tenants.iter().zip(&refused) {
        print_group(name, g);
        println!("{:<10} {r} reservations refused", "");
    }
    print_group("cache", &cache);
    println!(
        "{:<10} one Vec<u64> of {} elements charged to it; refused at the limit: {cache_refused}",
        "",
        charged_vec.len()
    );
    let stats = alloc::stats();
    println!(
        "\nallocations refused {}, over high {}, nested allocator calls {}",
        stats.refused, stats.over_high, stats.nested
    );

    // The checks that make this example a test.
    assert_eq!(stats.nested, 0, "the library allocated inside the allocator");
    let greedy = &tenants[3];
    assert!(refused[3] > 0, "the greedy tenant must have been refused");
    assert!(greedy.1.counter().failcnt() > 0);
    assert!(greedy.1.counter().peak() <= greedy.1.counter().max(), "a limit was exceeded");
    assert!(cache_refused && cache_usage <= cache.counter().max());
    assert!(stats.over_high > 0, "gamma's high was crossed and reported");
    assert!(tenants[2].1.events().high > 0);
    drop(charged_vec);
    for (_, g, _) in &tenants {
        assert!(g.counter().peak() <= g.counter().max());
    }
    // Everything was freed: after draining the per-CPU stocks, every group is at zero (a
    // few bytes may sit in the ObjGroups' parked remainders, always less than a page each).
    let _ = tree.drain_all(&root);
    for (name, g, _) in &tenants {
        assert!(g.counter().usage() <= 1, "{name} still holds {} pages", g.counter().usage());
    }
    assert!(cache.counter().usage() <= 1);
    println!("every tenant is back to (at most a parked partial page of) zero");
}
