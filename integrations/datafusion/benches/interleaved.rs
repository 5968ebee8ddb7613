//! The same comparisons as `benches/pool.rs`, interleaved: each round runs every pool once,
//! in a rotating order, and the table gives each pool's median over the rounds. On a
//! machine shared with other jobs, whose load drifts over the minutes a criterion group
//! takes, this keeps the pools' numbers comparable with each other.
//!
//!     cargo bench --bench interleaved            # 15 rounds
//!     cargo bench --bench interleaved -- 31      # another number of rounds

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chargetree_datafusion::{Budget, ChargeTreePool};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

const LIMIT: usize = 1 << 40;
/// Pairs per thread per measurement.
const PAIRS: u64 = 200_000;

#[repr(align(128))]
struct Padded(MemoryReservation);

fn pair(r: &Padded) {
    r.0.try_grow(black_box(1)).unwrap();
    r.0.shrink(black_box(1));
}

/// ns per pair on `rs.len()` threads at once (the slowest thread's loop).
fn pairs(rs: &[Padded]) -> f64 {
    let start = Barrier::new(rs.len());
    let slowest: Duration = std::thread::scope(|s| {
        let hs: Vec<_> = rs
            .iter()
            .map(|r| {
                let start = &start;
                s.spawn(move || {
                    // One warm-up pass per thread: its stock and its consumer cache.
                    for _ in 0..1000 {
                        pair(r);
                    }
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..PAIRS {
                        pair(black_box(r));
                    }
                    t.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    });
    slowest.as_nanos() as f64 / PAIRS as f64
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

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

struct Case {
    name: &'static str,
    pool: Arc<dyn MemoryPool>,
    one: Vec<Padded>,
    two: Vec<Padded>,
    ctx: SessionContext,
    times: [Vec<f64>; 3],
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(15);
    let global = ChargeTreePool::new(Budget::new().max(LIMIT)).unwrap();
    let tenant = global.child("tenant", Budget::new().max(LIMIT)).unwrap();
    let query = tenant.child("query", Budget::new().max(LIMIT)).unwrap();
    let g_global = ChargeTreePool::new(Budget::new().max(LIMIT)).unwrap();
    let g_tenant = g_global.child("tenant", Budget::new().max(LIMIT).guarantee(LIMIT / 4)).unwrap();
    let _sibling = g_global.child("sibling", Budget::new().guarantee(LIMIT / 4)).unwrap();
    let g_query = g_tenant
        .child("query", Budget::new().max(LIMIT).high(LIMIT / 2).unspillable_reserve(1 << 30))
        .unwrap();
    let pools: Vec<(&'static str, Arc<dyn MemoryPool>, bool)> = vec![
        ("greedy", Arc::new(GreedyMemoryPool::new(LIMIT)), false),
        ("fair spill", Arc::new(FairSpillPool::new(LIMIT)), false),
        (
            "track(greedy, top 5)",
            Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(LIMIT), NonZeroUsize::new(5).unwrap())),
            false,
        ),
        ("chargetree", query.memory_pool(), false),
        ("chargetree, high + guarantees", g_query.memory_pool(), true),
    ];
    let batches = data();
    let groups = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect::<std::collections::HashSet<i64>>()
        .len();
    let mut cases: Vec<Case> = pools
        .into_iter()
        .map(|(name, pool, can_spill)| {
            let reg = |i: usize| {
                Padded(MemoryConsumer::new(format!("bench-{i}")).with_can_spill(can_spill).register(&pool))
            };
            let env = RuntimeEnvBuilder::new().with_memory_pool(pool.clone()).build_arc().unwrap();
            let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(2), env);
            ctx.register_table("t", Arc::new(MemTable::try_new(schema(), vec![batches.clone()]).unwrap()))
                .unwrap();
            Case { name, one: vec![reg(0)], two: vec![reg(1), reg(2)], pool, ctx, times: Default::default() }
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let sql = "SELECT k, count(*) AS c, sum(v) AS s FROM t GROUP BY k";
    for round in 0..rounds {
        let n = cases.len();
        for i in 0..n {
            let case = &mut cases[(i + round) % n];
            case.times[0].push(pairs(&case.one));
            case.times[1].push(pairs(&case.two));
            let t = Instant::now();
            let rows = runtime.block_on(async {
                let out = case.ctx.sql(sql).await.unwrap().collect().await.unwrap();
                out.iter().map(RecordBatch::num_rows).sum::<usize>()
            });
            case.times[2].push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(rows, groups);
        }
    }
    println!(
        "medians of {rounds} interleaved rounds ({PAIRS} try_grow(1)+shrink(1) pairs per thread per round):"
    );
    println!("| pool | pair, 1 thread (ns) | pair, 2 threads (ns) | group-by query (ms) |");
    println!("|---|---:|---:|---:|");
    for case in &mut cases {
        let [a, b, c] = &mut case.times;
        println!("| {} | {:.1} | {:.1} | {:.1} |", case.name, median(a), median(b), median(c));
        drop(std::mem::take(&mut case.one));
        drop(std::mem::take(&mut case.two));
        assert_eq!(case.pool.reserved(), 0, "{}", case.name);
    }
}
