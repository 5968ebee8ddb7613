//! Group handle clone+drop (a reference get+put) next to `Arc` clone+drop, from one thread
//! and from two threads on the same object. Baselines are measured in the same run.
//!
//! Targets (issue "Groups"): one thread at most `Arc`'s cost; two threads on one group at
//! least 5x faster than two threads on one shared `Arc`.
//!
//! Two-thread cases use a barrier and time only the loop (sharded-slab's
//! `MultithreadedBench` shape): each thread reports its own elapsed time and the slowest is
//! taken, so the figure is "time per pair on each thread while the other does the same".

use std::sync::Arc;

use chargetree::group::{Group, GroupSpec, OwnerCell, Tree};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/opaque.rs"]
mod opaque;
use opaque::opaque_ref;

#[path = "support/threads.rs"]
mod threads;
use threads::on_threads;

// The bodies hide the handle's address with an empty register-only `asm!` (`opaque_ref`)
// instead of `std::hint::black_box`, which stores to the stack before the locked RMW (see
// benches/support/opaque.rs). Nothing else needs hiding: the compiler never removes an
// atomic RMW, so clone+drop is done in full.

/// `Arc` clone + drop on one shared `Arc`: one `fetch_add` and one `fetch_sub` on its count.
#[inline(always)]
fn arc_pair(a: &Arc<u64>) {
    drop(Arc::clone(opaque_ref(a)));
}

/// `Group` clone + drop: a get and a put on this CPU's shard of the group's count.
#[inline(always)]
fn group_pair(g: &Group) {
    drop(opaque_ref(g).clone());
}

fn bench(c: &mut Criterion) {
    let tree = Tree::new();
    let group = tree.root().create_child(GroupSpec::new().name("bench")).unwrap();
    let arc = Arc::new(0u64);

    let mut g = c.benchmark_group("handle clone+drop");
    g.bench_function("Arc, 1 thread", |b| b.iter(|| arc_pair(&arc)));
    g.bench_function("Group, 1 thread", |b| b.iter(|| group_pair(&group)));
    g.bench_function("Arc, 2 threads, one Arc", |b| {
        b.iter_custom(|iters| on_threads(2, iters, &arc, arc_pair))
    });
    g.bench_function("Group, 2 threads, one group", |b| {
        b.iter_custom(|iters| on_threads(2, iters, &group, group_pair))
    });
    g.finish();

    // An object's owner cell: load under a guard and take a durable handle with tryget.
    let cell = OwnerCell::new(group.clone());
    let mut g = c.benchmark_group("owner cell");
    g.bench_function("read + tryget + drop, 1 thread", |b| {
        let guard = tree.pin();
        b.iter(|| drop(opaque_ref(&cell).get(&guard)))
    });
    g.bench_function("Arc clone + drop (baseline), 1 thread", |b| b.iter(|| arc_pair(&arc)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
