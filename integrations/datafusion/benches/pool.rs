//! `ChargeTreePool` against DataFusion's own pools, all measured in the same run.
//!
//! Group `pool ops`: one operation is `reservation.try_grow(1)` + `reservation.shrink(1)`,
//! from 1 thread and from 2 threads at once on the same pool (each thread with its own
//! reservation, registered from its own consumer), in the shape of
//! `peers/datafusion/benches/pool.rs`:
//!
//! * `greedy`: `GreedyMemoryPool::new(2^40)`;
//! * `fair spill`: `FairSpillPool::new(2^40)` (consumers unspillable, as in the others);
//! * `track(greedy, top 5)`: `TrackConsumersPool` over a greedy pool, what
//!   `RuntimeEnvBuilder::with_memory_limit` builds;
//! * `chargetree`: a query level of `ChargeTreePool` (global → tenant → query, each with a
//!   `max` of 2^40; each consumer is a group below the query, depth 4);
//! * `chargetree, high + guarantees`: the same tree with a `high` on the query, a guarantee
//!   on the tenant (and a sibling tenant), an unspillable reserve on the query, and
//!   spillable consumers, so every `try_grow` runs the admission checks.
//!
//! * `chargetree group alone`: the floor, `Group::try_charge(1)` + `Group::uncharge(1)` on
//!   depth-4 groups, one per thread, without the pool.
//!
//! Group `query`: one real query (a group-by with about 100,000 groups over 1,000,000 rows, two
//! partitions, on a 2-thread tokio runtime) with each pool as the session's memory pool and
//! no limit reached.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chargetree_datafusion::{Budget, ChargeTreePool};
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

const LIMIT: usize = 1 << 40;
const TOP_K: usize = 5;

/// Runs `op(&per_thread[i])` `iters` times on thread `i`, all threads released by one
/// barrier; returns the slowest thread's loop time.
fn on_threads<T: Sync>(iters: u64, per_thread: &[T], op: impl Fn(&T) + Sync) -> Duration {
    let start = Barrier::new(per_thread.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|state| {
                let (start, op) = (&start, &op);
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        op(state);
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

/// A reservation on cache lines of its own, so that two threads' reservations do not share
/// one (operators hold theirs in their own state).
#[repr(align(128))]
struct Padded(MemoryReservation);

/// A group handle on a cache line of its own (the handle is only read, but keep the cases
/// alike).
#[repr(align(128))]
struct PaddedGroup(chargetree_datafusion::chargetree::group::Group);

fn reservations(pool: &Arc<dyn MemoryPool>, threads: usize, can_spill: bool) -> Vec<Padded> {
    (0..threads)
        .map(|i| Padded(MemoryConsumer::new(format!("bench-{i}")).with_can_spill(can_spill).register(pool)))
        .collect()
}

fn pair(r: &Padded) {
    r.0.try_grow(black_box(1)).unwrap();
    r.0.shrink(black_box(1));
}

/// A pool's name, the pool, and whether its bench consumers spill.
type Case = (&'static str, Arc<dyn MemoryPool>, bool);

/// The pools, by name, with whether their consumers spill; and levels to keep alive beside
/// them (the levels above a query are kept alive by the query).
fn pools() -> (Vec<Case>, ChargeTreePool) {
    let global = ChargeTreePool::new(Budget::new().max(LIMIT)).unwrap();
    let tenant = global.child("tenant", Budget::new().max(LIMIT)).unwrap();
    let query = tenant.child("query", Budget::new().max(LIMIT)).unwrap();

    let guarded_global = ChargeTreePool::new(Budget::new().max(LIMIT)).unwrap();
    let guarded_tenant =
        guarded_global.child("tenant", Budget::new().max(LIMIT).guarantee(LIMIT / 4)).unwrap();
    let sibling = guarded_global.child("sibling", Budget::new().guarantee(LIMIT / 4)).unwrap();
    let guarded = guarded_tenant
        .child("query", Budget::new().max(LIMIT).high(LIMIT / 2).unspillable_reserve(1 << 30))
        .unwrap();
    // The sibling tenant's guarantee stays unused: the check at the global level is live.
    let pools: Vec<Case> = vec![
        ("greedy", Arc::new(GreedyMemoryPool::new(LIMIT)), false),
        ("fair spill", Arc::new(FairSpillPool::new(LIMIT)), false),
        (
            "track(greedy, top 5)",
            Arc::new(TrackConsumersPool::new(
                GreedyMemoryPool::new(LIMIT),
                NonZeroUsize::new(TOP_K).unwrap(),
            )),
            false,
        ),
        ("chargetree", query.memory_pool(), false),
        ("chargetree, high + guarantees", guarded.memory_pool(), true),
    ];
    (pools, sibling)
}

fn pool_ops(c: &mut Criterion) {
    let (pools, _sibling) = pools();
    let mut g = c.benchmark_group("pool ops");
    for (name, pool, can_spill) in &pools {
        let rs = reservations(pool, 2, *can_spill);
        g.bench_function(format!("{name}, 1 thread"), |b| b.iter(|| pair(black_box(&rs[0]))));
        g.bench_function(format!("{name}, 2 threads"), |b| {
            b.iter_custom(|iters| on_threads(iters, &rs, |r| pair(black_box(r))))
        });
        drop(rs);
        assert_eq!(pool.reserved(), 0, "{name}: everything was given back");
    }
    // The floor: the same pair straight on chargetree groups (depth 4, one per thread, as
    // the consumers' groups above), without the pool around it.
    let tree = chargetree_datafusion::chargetree::group::Tree::new();
    let query = (0..3).fold(tree.root(), |g, _| {
        g.create_child(chargetree_datafusion::chargetree::group::GroupSpec::new().max(LIMIT)).unwrap()
    });
    let groups: Vec<_> = (0..2)
        .map(|_| {
            PaddedGroup(
                query.create_child(chargetree_datafusion::chargetree::group::GroupSpec::new()).unwrap(),
            )
        })
        .collect();
    let group_pair = |g: &PaddedGroup| {
        let c = g.0.try_charge(black_box(1)).unwrap();
        black_box(c.over_high.is_some());
        g.0.uncharge(black_box(1));
    };
    g.bench_function("chargetree group alone, 1 thread", |b| b.iter(|| group_pair(black_box(&groups[0]))));
    g.bench_function("chargetree group alone, 2 threads", |b| {
        b.iter_custom(|iters| on_threads(iters, &groups, |g| group_pair(black_box(g))))
    });
    g.finish();
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// 1,000,000 rows of (k in 0..100,000 pseudo-random, v = row number), batches of 8192.
fn data() -> Vec<RecordBatch> {
    let rows = 1_000_000;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..rows)
        .step_by(8192)
        .map(|start| {
            let n = 8192.min(rows - start);
            let k: Int64Array = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 100_000) as i64
                })
                .collect();
            let v: Int64Array = (start..start + n).map(|i| i as i64).collect();
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v)]).unwrap()
        })
        .collect()
}

fn query(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let batches = data();
    let groups = {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        let keys: std::collections::HashSet<i64> =
            batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
        keys.len()
    };
    let (pools, _sibling) = pools();
    let mut g = c.benchmark_group("query");
    g.sample_size(20);
    for (name, pool, _) in &pools {
        let env = RuntimeEnvBuilder::new().with_memory_pool(pool.clone()).build_arc().unwrap();
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(2), env);
        ctx.register_table("t", Arc::new(MemTable::try_new(schema(), vec![batches.clone()]).unwrap()))
            .unwrap();
        let sql = "SELECT k, count(*) AS c, sum(v) AS s FROM t GROUP BY k";
        g.bench_function(format!("group by, {name}"), |b| {
            b.iter(|| {
                let rows = runtime.block_on(async {
                    let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
                    out.iter().map(RecordBatch::num_rows).sum::<usize>()
                });
                assert_eq!(rows, groups);
            })
        });
        assert_eq!(pool.reserved(), 0, "{name}");
    }
    g.finish();
}

criterion_group!(benches, pool_ops, query);
criterion_main!(benches);
