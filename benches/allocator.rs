//! The accounting allocator of `examples/allocator.rs` on a collection workload, against the
//! same allocator without accounting, measured in the same run.
//!
//! * `global, accounting` / `global, pass-through`: this bench binary's global allocator is
//!   the example's `TenantAlloc`. The workload (grow a `Vec<u64>` to 20,000 elements by
//!   pushing, fill a `HashMap<u64, String>` with 500 entries, drop both) runs once with the
//!   thread inside a tenant (every allocation charged in bytes through the tenant's
//!   `ObjGroup`) and once outside any tenant (the same allocator passing straight to the
//!   system allocator: header and thread-local checks only).
//! * `allocator_api2, System` / `allocator_api2, GroupAlloc`: the same vector growth with an
//!   `allocator_api2` vector on the plain system allocator and on the example's
//!   `GroupAlloc`, for a comparison with no wrapper at all on the baseline side.
//!
//! Target (issue "Examples"): accounting overhead at most 5%.

#[path = "../examples/support/tenant_alloc.rs"]
mod tenant_alloc;

use std::collections::HashMap;
use std::hint::black_box;

use chargetree::group::{GroupSpec, Tree};
use criterion::{Criterion, criterion_group, criterion_main};
use tenant_alloc::{GroupAlloc, TenantAlloc};

#[global_allocator]
static ALLOC: TenantAlloc = TenantAlloc;

fn collections() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..20_000u64 {
        v.push(black_box(i));
    }
    let mut m: HashMap<u64, String> = HashMap::new();
    for i in 0..500u64 {
        m.insert(i, format!("value-{i}"));
    }
    black_box((&v, &m));
}

fn bench(c: &mut Criterion) {
    let tree = Tree::new();
    let tenant = tree.root().create_child(GroupSpec::new().name("tenant")).unwrap();
    let objgroup = tenant.obj_group().unwrap();

    let mut g = c.benchmark_group("allocator workload");
    g.bench_function("global, pass-through", |b| b.iter(collections));
    g.bench_function("global, accounting", |b| {
        let _inside = tenant_alloc::enter(&objgroup);
        b.iter(collections)
    });
    g.bench_function("allocator_api2, System", |b| {
        b.iter(|| {
            let mut v = allocator_api2::vec::Vec::new_in(allocator_api2::alloc::System);
            for i in 0..20_000u64 {
                v.push(black_box(i));
            }
            black_box(&v);
        })
    });
    let alloc = GroupAlloc::new(objgroup.clone());
    g.bench_function("allocator_api2, GroupAlloc", |b| {
        b.iter(|| {
            let mut v = allocator_api2::vec::Vec::new_in(alloc.clone());
            for i in 0..20_000u64 {
                v.push(black_box(i));
            }
            black_box(&v);
        })
    });
    g.finish();
    assert_eq!(tenant_alloc::REENTRIES.load(std::sync::atomic::Ordering::Relaxed), 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
