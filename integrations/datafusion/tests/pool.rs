//! The `MemoryPool` contract on its own: reservations made by hand, exact numbers.

use std::sync::Arc;
use std::thread;

use chargetree_datafusion::chargetree::counter::COUNTER_MAX;
use chargetree_datafusion::{Budget, ChargeTreePool};
use datafusion_common::DataFusionError;
use datafusion_execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn reservation(pool: &ChargeTreePool, name: &str, can_spill: bool) -> MemoryReservation {
    MemoryConsumer::new(name).with_can_spill(can_spill).register(&pool.memory_pool())
}

/// The message of a resources-exhausted error; panics on any other result.
fn exhausted(r: datafusion_common::Result<()>) -> String {
    match r {
        Err(DataFusionError::ResourcesExhausted(msg)) => msg,
        other => panic!("expected ResourcesExhausted, got {other:?}"),
    }
}

/// global 10 MiB → tenant 6 MiB → query 4 MiB.
fn three_levels() -> (ChargeTreePool, ChargeTreePool, ChargeTreePool) {
    let global = ChargeTreePool::new(Budget::new().max(10 * MIB)).unwrap();
    let tenant = global.child("tenant", Budget::new().max(6 * MIB)).unwrap();
    let query = tenant.child("query", Budget::new().max(4 * MIB)).unwrap();
    (global, tenant, query)
}

#[test]
fn reserved_and_consumer_stats_are_exact() {
    let (global, tenant, query) = three_levels();
    let a = reservation(&query, "a", false);
    let b = reservation(&query, "b", true);
    a.try_grow(100 * KIB).unwrap();
    a.try_grow(50 * KIB).unwrap();
    b.try_grow(7).unwrap();
    a.shrink(120 * KIB);
    assert_eq!((a.size(), b.size()), (30 * KIB, 7));
    for level in [&global, &tenant, &query] {
        assert_eq!(level.reserved(), 30 * KIB + 7, "{}", level.path());
    }
    let stats = query.consumers();
    assert_eq!(stats.len(), 2);
    // Largest first.
    assert_eq!((stats[0].name.as_str(), stats[0].reserved, stats[0].peak), ("a", 30 * KIB, 150 * KIB));
    assert_eq!(
        (stats[1].name.as_str(), stats[1].reserved, stats[1].peak, stats[1].can_spill),
        ("b", 7, 7, true)
    );
    assert!(stats[0].path.starts_with("global/tenant/query/a#"), "{}", stats[0].path);

    // The counters also hold bytes cached in this CPU's stock; a drain returns them.
    assert!(query.stats().usage >= query.reserved());
    query.drain();
    assert_eq!(query.stats().usage, 30 * KIB + 7);

    drop(a);
    drop(b);
    assert_eq!(global.reserved(), 0);
    assert!(query.consumers().is_empty(), "dropping the reservation unregisters its consumer");
    global.drain();
    assert_eq!((query.stats().usage, tenant.stats().usage, global.stats().usage), (0, 0, 0));
}

#[test]
fn try_grow_refuses_at_the_lowest_refusing_level_and_names_it() {
    let (global, tenant, query) = three_levels();

    // 1. The query's own ceiling.
    let r = reservation(&query, "sorter", true);
    r.try_grow(3 * MIB).unwrap();
    let msg = exhausted(r.try_grow(2 * MIB));
    assert!(msg.contains("refused by 'global/tenant/query'"), "{msg}");
    assert!(msg.contains("its max 4.0 MB is reached"), "{msg}");
    assert!(msg.contains("for sorter#"), "{msg}");
    assert!(msg.contains("with 3.0 MB already allocated"), "{msg}");
    assert!(msg.contains("consumed 3.0 MB, peak 3.0 MB"), "{msg}");
    // Nothing changed.
    assert_eq!((r.size(), query.reserved()), (3 * MIB, 3 * MIB));
    assert_eq!(query.consumers()[0].refused, 1);

    // 2. The tenant's: a second query of the tenant fits its own ceiling but not the
    // tenant's (3 MiB are in use by the first).
    let query2 = tenant.child("query2", Budget::new().max(4 * MIB)).unwrap();
    let r2 = reservation(&query2, "join", false);
    let msg = exhausted(r2.try_grow(3 * MIB + 512 * KIB));
    assert!(msg.contains("refused by 'global/tenant'"), "{msg}");
    assert!(msg.contains("its max 6.0 MB is reached"), "{msg}");
    // The tenant's top consumers include the first query's.
    assert!(msg.contains("sorter#"), "{msg}");
    assert_eq!(r2.size(), 0);

    // 3. The global one: another tenant holds 5 MiB, so 3 MiB fits the query (4) and the
    // tenant (6 − 3 in use) but not the global level (10 − 3 − 5).
    let other = global.child("other", Budget::new()).unwrap();
    let r3 = reservation(&other, "big", false);
    r3.try_grow(5 * MIB).unwrap();
    let msg = exhausted(r2.try_grow(2 * MIB + 512 * KIB));
    assert!(msg.contains("refused by 'global'"), "{msg}");
    assert!(msg.contains("its max 10.0 MB is reached"), "{msg}");
    assert!(msg.contains("big#"), "{msg}");
    r2.try_grow(2 * MIB).unwrap();
    assert_eq!(global.reserved(), 10 * MIB);

    // Each level counted its own refusals.
    assert!(query.stats().refused_max >= 1);
    assert!(tenant.stats().refused_max >= 1);
    assert!(global.stats().refused_max >= 1);
}

#[test]
fn infallible_grow_is_forced_counted_and_raises_max() {
    let (global, _tenant, query) = three_levels();
    let r = reservation(&query, "unspillable", false);
    r.try_grow(3 * MIB).unwrap();
    let max_events = query.group().events_local().max;
    r.grow(2 * MIB); // past the query's 4 MiB
    assert_eq!(r.size(), 5 * MIB);
    assert_eq!(query.reserved(), 5 * MIB, "the pool agrees with the reservation");
    assert_eq!(query.consumers()[0].forced, 1);
    assert_eq!(query.stats().forced, 1);
    assert_eq!(query.tree().stats().forced, 1);
    assert_eq!(query.group().events_local().max, max_events + 1, "max raised on the level it went past");
    assert!(query.group().events_local().oom >= 1);
    assert!(query.stats().usage > query.stats().max);

    // A grow that fits is not forced.
    r.shrink(4 * MIB);
    r.grow(KIB);
    assert_eq!(query.consumers()[0].forced, 1);

    drop(r);
    global.drain();
    assert_eq!((global.reserved(), global.stats().usage), (0, 0));
}

#[test]
fn high_makes_spillable_consumers_spill_early() {
    let global = ChargeTreePool::new(Budget::new()).unwrap();
    let query = global.child("q", Budget::new().max(4 * MIB).high(2 * MIB)).unwrap();
    let spill = reservation(&query, "sort", true);
    let keep = reservation(&query, "build", false);

    spill.try_grow(MIB).unwrap();
    spill.try_grow(MIB).unwrap(); // exactly at high: allowed
    let msg = exhausted(spill.try_grow(KIB));
    assert!(msg.contains("refused by 'global/q'"), "{msg}");
    assert!(msg.contains("above its high 2.0 MB"), "{msg}");
    assert_eq!(query.stats().refused_high, 1);

    // Unspillable consumers still get memory up to max.
    keep.try_grow(2 * MIB).unwrap();
    assert_eq!(query.reserved(), 4 * MIB);
    let msg = exhausted(keep.try_grow(KIB));
    assert!(msg.contains("its max 4.0 MB is reached"), "{msg}");
    // The spillable one is refused too (by max first, now).
    assert!(exhausted(spill.try_grow(1)).contains("refused by 'global/q'"));

    // Below high again, spillable consumers grow.
    keep.shrink(2 * MIB);
    spill.shrink(KIB);
    spill.try_grow(KIB).unwrap();
}

#[test]
fn unspillable_reserve_is_kept_from_spillable_consumers() {
    let global = ChargeTreePool::new(Budget::new()).unwrap();
    let query = global.child("q", Budget::new().max(4 * MIB).unspillable_reserve(MIB)).unwrap();
    let spill = reservation(&query, "sort", true);
    let keep = reservation(&query, "build", false);

    let msg = exhausted(spill.try_grow(3 * MIB + 1));
    assert!(msg.contains("refused by 'global/q'"), "{msg}");
    assert!(msg.contains("1024.0 KB of its max 4.0 MB is guaranteed to other groups"), "{msg}");
    spill.try_grow(3 * MIB).unwrap();
    assert_eq!(query.stats().refused_guarantee, 1);
    // The consumers sit below the level's two groups.
    let paths: Vec<_> = query.consumers().into_iter().map(|c| c.path).collect();
    assert!(paths.iter().any(|p| p.starts_with("global/q/spillable/sort#")), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("global/q/unspillable/build#")), "{paths:?}");

    // The reserve is the unspillable consumers'.
    keep.try_grow(MIB).unwrap();
    assert_eq!(query.reserved(), 4 * MIB);
    // And they may use more than the reserve when spillable ones leave room.
    spill.shrink(2 * MIB);
    keep.try_grow(2 * MIB).unwrap();
    assert_eq!(query.reserved(), 4 * MIB);
    // With the reserve in use, spillable ones get what is left (nothing is unused).
    keep.shrink(2 * MIB);
    spill.try_grow(2 * MIB).unwrap();
    assert_eq!((spill.size(), keep.size(), query.reserved()), (3 * MIB, MIB, 4 * MIB));
}

#[test]
fn a_reserve_is_kept_free_below_every_limit_above_it() {
    // The query has no max of its own: its unspillable reserve is kept below the global one.
    let global = ChargeTreePool::new(Budget::new().max(10 * MIB)).unwrap();
    let tenant = global.child("t", Budget::new()).unwrap();
    let query = tenant.child("q", Budget::new().unspillable_reserve(2 * MIB)).unwrap();
    let spill = reservation(&query, "sort", true);
    let keep = reservation(&query, "merge", false);
    let msg = exhausted(spill.try_grow(8 * MIB + 1));
    assert!(msg.contains("refused by 'global'"), "{msg}");
    assert!(msg.contains("2.0 MB of its max 10.0 MB is guaranteed"), "{msg}");
    spill.try_grow(8 * MIB).unwrap();
    keep.try_grow(2 * MIB).unwrap();
    assert_eq!(global.reserved(), 10 * MIB);
    // A sibling tenant is not bound by it: the reserve is this query's share, not a global
    // guarantee (the sibling is refused by the global max alone).
    let other = global.child("other", Budget::new()).unwrap();
    keep.shrink(2 * MIB);
    let r = reservation(&other, "x", true);
    r.try_grow(2 * MIB).unwrap();
    assert_eq!(global.reserved(), 10 * MIB);
}

#[test]
fn a_tenants_guarantee_is_kept_from_its_siblings() {
    let global = ChargeTreePool::new(Budget::new().max(10 * MIB)).unwrap();
    let a = global.child("a", Budget::new().guarantee(4 * MIB)).unwrap();
    let b = global.child("b", Budget::new()).unwrap();
    let qa = a.child("qa", Budget::new()).unwrap();
    let qb = b.child("qb", Budget::new()).unwrap();
    let ra = reservation(&qa, "a-op", false);
    let rb = reservation(&qb, "b-op", false);

    let msg = exhausted(rb.try_grow(6 * MIB + 1));
    assert!(msg.contains("refused by 'global'"), "{msg}");
    assert!(msg.contains("4.0 MB of its max 10.0 MB is guaranteed to other groups"), "{msg}");
    rb.try_grow(6 * MIB).unwrap();
    // a gets its guarantee whatever b does.
    ra.try_grow(4 * MIB).unwrap();
    assert_eq!(global.reserved(), 10 * MIB);
    // Once a uses its guarantee, the rest is first come, first served.
    ra.shrink(4 * MIB);
    ra.try_grow(MIB).unwrap();
    let msg = exhausted(rb.try_grow(MIB));
    assert!(msg.contains("3.0 MB of its max 10.0 MB is guaranteed"), "{msg}");
    assert_eq!(global.stats().refused_guarantee, 2);

    // Dropping a's levels gives its guarantee back.
    drop(ra);
    drop(qa);
    drop(a);
    rb.try_grow(4 * MIB).unwrap();
    assert_eq!(global.reserved(), 10 * MIB);
}

#[test]
fn split_take_and_drop_free() {
    let (global, _tenant, query) = three_levels();
    let mut r = reservation(&query, "r", false);
    r.try_grow(1000).unwrap();
    let s = r.split(400);
    assert_eq!((r.size(), s.size(), query.reserved()), (600, 400, 1000));
    // Both belong to one consumer.
    assert_eq!(query.consumers().len(), 1);
    assert_eq!(query.consumers()[0].reserved, 1000);
    drop(s);
    assert_eq!(query.reserved(), 600);
    let t = r.take();
    assert_eq!((r.size(), t.size(), query.reserved()), (0, 600, 600));
    let e = t.new_empty();
    e.try_grow(10).unwrap();
    drop(t);
    assert_eq!(query.reserved(), 10);
    drop(r);
    assert_eq!(query.consumers().len(), 1, "still registered: `e` shares the registration");
    drop(e);
    assert!(query.consumers().is_empty());
    global.drain();
    assert_eq!((global.reserved(), global.stats().usage), (0, 0));
    // The consumer's group is gone from the tree once reclaimed (it went offline).
    query.tree().reclaim();
    assert!(query.group().children().is_empty());
}

#[test]
fn concurrent_reservations_balance() {
    let global = ChargeTreePool::new(Budget::new().max(64 * MIB)).unwrap();
    let tenant = global.child("tenant", Budget::new().max(32 * MIB)).unwrap();
    let query = tenant.child("query", Budget::new().max(8 * MIB)).unwrap();
    let threads = 4;
    let ops = 20_000;
    // Each thread: three consumers, random try_grow/grow/shrink; ends holding (i + 1) KiB
    // on one reservation.
    let kept: Vec<MemoryReservation> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pool = query.memory_pool();
                s.spawn(move || {
                    let rs: Vec<_> = (0..3)
                        .map(|i| {
                            MemoryConsumer::new(format!("t{t}c{i}")).with_can_spill(i == 0).register(&pool)
                        })
                        .collect();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                    let mut refused = 0;
                    for _ in 0..ops {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let r = &rs[(x % 3) as usize];
                        let n = ((x >> 8) % (64 * KIB as u64)) as usize;
                        match (x >> 40) % 4 {
                            0 | 1 => refused += usize::from(r.try_grow(n).is_err()),
                            2 => r.shrink(n.min(r.size())),
                            _ => r.grow(n / 16),
                        }
                    }
                    for r in &rs {
                        r.free();
                    }
                    rs[0].try_grow((t + 1) * KIB).unwrap();
                    (rs.into_iter().next().unwrap(), refused)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (r, refused) = h.join().unwrap();
                assert!(refused > 0, "the limit was reached");
                r
            })
            .collect()
    });
    let expected: usize = (1..=threads).map(|t| t * KIB).sum();
    assert_eq!(query.reserved(), expected);
    assert_eq!(global.reserved(), expected);
    let stats = query.stats();
    // Only forced grows may take a level past its max.
    if stats.forced == 0 {
        assert!(stats.peak <= stats.max, "{stats:?}");
    }
    drop(kept);
    assert_eq!(global.reserved(), 0);
    global.drain();
    assert_eq!((query.stats().usage, tenant.stats().usage, global.stats().usage), (0, 0, 0));
    assert!(query.consumers().is_empty());
}

#[test]
fn amounts_above_the_counter_maximum() {
    let global = ChargeTreePool::new(Budget::new()).unwrap();
    let r = reservation(&global, "huge", false);
    let msg = exhausted(r.try_grow(COUNTER_MAX + 1));
    assert!(msg.contains("above the counter maximum"), "{msg}");
    // The infallible grow cannot fail: recorded, charged to no counter, given back first.
    r.grow(KIB);
    r.grow(COUNTER_MAX + 1);
    assert_eq!(global.reserved(), COUNTER_MAX + 1 + KIB);
    r.shrink(COUNTER_MAX + 1);
    assert_eq!(global.reserved(), KIB);
    drop(r);
    global.drain();
    assert_eq!(global.stats().usage, 0);
}

#[test]
fn memory_limit_is_the_smallest_ceiling_above() {
    let (global, tenant, query) = three_levels();
    assert!(matches!(query.memory_limit(), MemoryLimit::Finite(n) if n == 4 * MIB));
    assert!(matches!(tenant.memory_limit(), MemoryLimit::Finite(n) if n == 6 * MIB));
    let loose = tenant.child("loose", Budget::new()).unwrap();
    assert!(matches!(loose.memory_limit(), MemoryLimit::Finite(n) if n == 6 * MIB));
    global.set_max(3 * MIB).unwrap();
    assert!(matches!(query.memory_limit(), MemoryLimit::Finite(n) if n == 3 * MIB));
    let open = ChargeTreePool::new(Budget::new()).unwrap();
    assert!(matches!(open.memory_limit(), MemoryLimit::Infinite));
    assert_eq!(query.name(), "chargetree");
    assert_eq!(query.to_string(), "chargetree 'global/tenant/query'(reserved: 0.0 B, max: 4.0 MB)");
}

#[test]
fn set_max_below_usage_is_refused_and_changes_nothing() {
    let (_global, _tenant, query) = three_levels();
    let r = reservation(&query, "r", false);
    r.try_grow(3 * MIB).unwrap();
    assert!(query.set_max(2 * MIB).is_err());
    assert_eq!(query.stats().max, 4 * MIB);
    query.set_max(3 * MIB).unwrap();
    assert!(r.try_grow(1).is_err());
}

#[test]
fn works_inside_track_consumers_pool() {
    use datafusion_execution::memory_pool::TrackConsumersPool;
    use std::num::NonZeroUsize;
    let (_global, _tenant, query) = three_levels();
    let tracked: Arc<dyn MemoryPool> =
        Arc::new(TrackConsumersPool::new(query.clone(), NonZeroUsize::new(3).unwrap()));
    let r = MemoryConsumer::new("wrapped").register(&tracked);
    r.try_grow(3 * MIB).unwrap();
    let err = r.try_grow(2 * MIB).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("refused by 'global/tenant/query'"), "{msg}");
    assert_eq!(query.reserved(), 3 * MIB);
    drop(r);
    assert_eq!(query.reserved(), 0);
}
