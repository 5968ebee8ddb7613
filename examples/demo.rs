//! The crate's demonstration: a small hierarchy of counters for two tenants, charged until a
//! limit refuses, printed as a tree with usage, limits, peaks and fail counts.
//!
//! Run it with `cargo run --release --example demo`.

use chargetree::counter::{COUNTER_MAX, ChargeError, Counter, parse_amount};

/// Units are 4 KiB pages.
const PAGE: usize = 4096;

struct Node<'a> {
    name: &'static str,
    counter: &'a Counter<'a>,
    depth: usize,
}

fn pages(s: &str) -> usize {
    parse_amount(s, PAGE).expect("valid amount")
}

fn human(units: usize) -> String {
    if units == COUNTER_MAX {
        return "max".into();
    }
    if units == 0 {
        return "0".into();
    }
    let bytes = units as u128 * PAGE as u128;
    let (value, suffix) = match bytes {
        b if b >= 1 << 30 => (b as f64 / (1u64 << 30) as f64, "G"),
        b if b >= 1 << 20 => (b as f64 / (1u64 << 20) as f64, "M"),
        b => (b as f64 / 1024.0, "K"),
    };
    format!("{value:.1}{suffix}")
}

fn print_tree(nodes: &[Node<'_>]) {
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "group", "usage", "max", "high", "low", "peak", "failcnt"
    );
    for n in nodes {
        let c = n.counter;
        let name = format!("{}{}", "  ".repeat(n.depth), n.name);
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            name,
            human(c.usage()),
            human(c.max()),
            human(c.high()),
            human(c.low()),
            human(c.peak()),
            c.failcnt()
        );
    }
}

fn main() {
    // machine (256M) ─┬─ tenant-a (128M, low 32M) ─┬─ web   (64M)
    //                 │                             └─ batch (no own limit)
    //                 └─ tenant-b (96M)            ─── db    (high 48M)
    let machine = Counter::new_root();
    machine.set_max(pages("256M")).unwrap();
    let tenant_a = Counter::new(Some(&machine));
    tenant_a.set_max(pages("128M")).unwrap();
    tenant_a.set_low(pages("32M")).unwrap();
    let web = Counter::new(Some(&tenant_a));
    web.set_max(pages("64M")).unwrap();
    let batch = Counter::new(Some(&tenant_a));
    let tenant_b = Counter::new(Some(&machine));
    tenant_b.set_max(pages("96M")).unwrap();
    let db = Counter::new(Some(&tenant_b));
    db.set_high(pages("48M")).unwrap();

    let nodes = [
        Node { name: "machine", counter: &machine, depth: 0 },
        Node { name: "tenant-a", counter: &tenant_a, depth: 1 },
        Node { name: "web", counter: &web, depth: 2 },
        Node { name: "batch", counter: &batch, depth: 2 },
        Node { name: "tenant-b", counter: &tenant_b, depth: 1 },
        Node { name: "db", counter: &db, depth: 2 },
    ];
    let name_of =
        |c: &Counter<'_>| nodes.iter().find(|n| core::ptr::eq(n.counter, c)).map_or("?", |n| n.name);

    // Each workload charges 1 MiB at a time until its own limit or an ancestor's refuses.
    let chunk = pages("1M");
    for (who, counter) in [("web", &web), ("batch", &batch), ("db", &db)] {
        let mut charged = 0;
        let refused_by = loop {
            match counter.try_charge(chunk) {
                Ok(()) => charged += chunk,
                Err(ChargeError::Limit { at, level }) => {
                    break format!("{} ({level} up)", name_of(at));
                }
                Err(e) => panic!("unexpected: {e}"),
            }
            if charged >= pages("512M") {
                break "nobody".into();
            }
        };
        println!("{who:>5}: charged {:>7} before the limit of {refused_by} refused", human(charged));
    }
    if db.usage() > db.high() {
        println!("   db: over its high threshold by {}", human(db.usage() - db.high()));
    }
    println!();
    print_tree(&nodes);

    // Everything is given back; the peaks remain.
    for c in [&web, &batch, &db] {
        c.uncharge(c.usage());
    }
    assert_eq!(machine.usage(), 0, "every charge was returned");
    println!(
        "\nafter freeing everything: machine usage {}, peak {}",
        human(machine.usage()),
        human(machine.peak())
    );
}
