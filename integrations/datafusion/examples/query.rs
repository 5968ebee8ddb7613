//! Two tenants' queries at once on one `ChargeTreePool`: a sort that spills under its
//! query's limit, a group-by that spills above its query's `high`, a join refused by its
//! query's ceiling, and each level's statistics.
//!
//!     cd integrations/datafusion && cargo run --release --example query

use std::sync::Arc;

use chargetree_datafusion::{Budget, ChargeTreePool, LevelStats};
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryPool, human_readable_size};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

const MIB: usize = 1024 * 1024;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// `rows` rows of (k pseudo-random in 0..keys, v = row number).
fn table(rows: usize, keys: u64) -> Arc<MemTable> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let batches = (0..rows)
        .step_by(8192)
        .map(|start| {
            let n = 8192.min(rows - start);
            let k: Int64Array = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % keys) as i64
                })
                .collect();
            let v: Int64Array = (start..start + n).map(|i| i as i64).collect();
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v)]).unwrap()
        })
        .collect();
    Arc::new(MemTable::try_new(schema(), vec![batches]).unwrap())
}

/// A session for one query: its own `RuntimeEnv` whose memory pool is the query's level.
fn session(query: &ChargeTreePool) -> SessionContext {
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(query.memory_pool()).build_arc().unwrap();
    let config = SessionConfig::new().with_target_partitions(1).with_sort_spill_reservation_bytes(MIB);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_table("t", table(2_000_000, 1 << 40)).unwrap();
    ctx
}

async fn run(query: &ChargeTreePool, sql: &str) -> Result<(usize, usize)> {
    let ctx = session(query);
    let plan = ctx.sql(sql).await?.create_physical_plan().await?;
    let rows = collect(plan.clone(), ctx.task_ctx()).await?.iter().map(RecordBatch::num_rows).sum();
    Ok((rows, spills(&plan)))
}

fn spills(plan: &Arc<dyn ExecutionPlan>) -> usize {
    plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
        + plan.children().into_iter().map(spills).sum::<usize>()
}

fn show(level: &ChargeTreePool) {
    let s: LevelStats = level.stats();
    let limit = |v: usize| {
        if v >= chargetree_datafusion::chargetree::counter::COUNTER_MAX {
            "-".into()
        } else {
            human_readable_size(v)
        }
    };
    println!(
        "  {:<26} reserved {:>9}  peak {:>9}  max {:>9}  high {:>9}  guarantee {:>9}  refused: max {}, high {}, guarantee {}",
        s.path,
        human_readable_size(s.reserved),
        human_readable_size(s.peak),
        limit(s.max),
        limit(s.high),
        human_readable_size(s.guarantee),
        s.refused_max,
        s.refused_high,
        s.refused_guarantee,
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    // global 256 MiB
    // ├── analytics (max 96 MiB, guaranteed 64 MiB)
    // │   └── nightly (max 24 MiB, 8 MiB kept for unspillable operators)
    // └── adhoc (max 48 MiB)
    //     └── explore (max 40 MiB, high 16 MiB)
    let global = ChargeTreePool::new(Budget::new().max(256 * MIB)).expect("valid budget");
    let analytics =
        global.child("analytics", Budget::new().max(96 * MIB).guarantee(64 * MIB)).expect("valid");
    let adhoc = global.child("adhoc", Budget::new().max(48 * MIB)).expect("valid");
    let nightly =
        analytics.child("nightly", Budget::new().max(24 * MIB).unspillable_reserve(8 * MIB)).expect("valid");
    let explore = adhoc.child("explore", Budget::new().max(40 * MIB).high(16 * MIB)).expect("valid");

    // The two tenants' queries at the same time.
    let (sort, group_by) = tokio::join!(
        run(&nightly, "SELECT k, v FROM t ORDER BY k"),
        run(&explore, "SELECT k, sum(v) FROM t GROUP BY k"),
    );
    let (rows, spilled) = sort?;
    println!(
        "'nightly' (max 24 MiB): a sort of 2,000,000 rows (about 64 MB in memory): {rows} rows, {spilled} spills"
    );
    let (rows, spilled) = group_by?;
    println!(
        "'explore' (high 16 MiB): a group-by with about 2,000,000 groups, at the same time: {rows} groups, {spilled} spills"
    );

    println!("'explore' (max 40 MiB): a hash join whose build side cannot spill:");
    match run(&explore, "SELECT count(*) FROM t AS a JOIN t AS b ON a.k = b.k").await {
        Ok((rows, _)) => println!("  finished ({rows} rows)"),
        Err(e) => println!("  {}", e.find_root()),
    }

    println!("levels:");
    for level in [&global, &analytics, &nightly, &adhoc, &explore] {
        show(level);
    }
    assert_eq!(global.reserved(), 0, "every reservation was returned");
    Ok(())
}
