//! Real DataFusion queries on the pool: spilling under a tight query limit, a refusal that
//! names its level, tenant isolation by a guarantee, and nested ceilings refusing in turn.
//!
//! Limits are set relative to what the same query needs with no limit (measured first, from
//! the query level's peak), so the tests do not depend on DataFusion's exact estimates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chargetree_datafusion::{Budget, ChargeTreePool};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, collect};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use futures::channel::oneshot;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const BATCH_ROWS: usize = 8192;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// `rows` rows of (k, v): k pseudo-random in `0..keys`, v the row number; batches of 8192.
fn data(rows: usize, keys: u64, seed: u64) -> Vec<RecordBatch> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..rows)
        .step_by(BATCH_ROWS)
        .map(|start| {
            let n = BATCH_ROWS.min(rows - start);
            let k: Int64Array = (0..n).map(|_| (next() % keys) as i64).collect();
            let v: Int64Array = (start..start + n).map(|i| i as i64).collect();
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v)]).unwrap()
        })
        .collect()
}

fn column(batches: &[RecordBatch], i: usize) -> Vec<i64> {
    batches.iter().flat_map(|b| b.column(i).as_primitive::<Int64Type>().values().to_vec()).collect()
}

/// A session whose memory pool is `level`.
fn session(level: &ChargeTreePool, partitions: usize) -> SessionContext {
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(level.memory_pool()).build_arc().unwrap();
    let config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_batch_size(BATCH_ROWS)
        // The bytes a sort keeps back for its merge (default 10 MiB): small, so that the
        // limits below can be tight.
        .with_sort_spill_reservation_bytes(256 * KIB);
    SessionContext::new_with_config_rt(config, runtime)
}

fn register(ctx: &SessionContext, name: &str, batches: Vec<RecordBatch>) {
    ctx.register_table(name, Arc::new(MemTable::try_new(schema(), vec![batches]).unwrap())).unwrap();
}

async fn run(ctx: &SessionContext, sql: &str) -> Result<(Vec<RecordBatch>, Arc<dyn ExecutionPlan>)> {
    let plan = ctx.sql(sql).await?.create_physical_plan().await?;
    let batches = collect(plan.clone(), ctx.task_ctx()).await?;
    Ok((batches, plan))
}

/// Spills recorded anywhere in `plan`.
fn spills(plan: &Arc<dyn ExecutionPlan>) -> usize {
    plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
        + plan.children().into_iter().map(spills).sum::<usize>()
}

/// The message of a resources-exhausted error, however DataFusion wrapped it.
fn exhausted<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(e) => match e.find_root() {
            DataFusionError::ResourcesExhausted(msg) => msg.clone(),
            other => panic!("expected ResourcesExhausted, got {other:?}"),
        },
        Ok(v) => panic!("expected ResourcesExhausted, got {v:?}"),
    }
}

/// The bytes the query level needed: its peak, with the stocks' cached bytes returned.
fn need(level: &ChargeTreePool) -> usize {
    level.stats().peak
}

/// Everything a level handed out came back. A failed query's tasks are cancelled
/// asynchronously: their reservations may take a moment to be dropped.
async fn assert_balanced(level: &ChargeTreePool) {
    for _ in 0..500 {
        if level.reserved() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(level.reserved(), 0, "{}", level.path());
    level.drain();
    assert_eq!(level.stats().usage, 0, "{}", level.path());
}

const SORT: &str = "SELECT k, v FROM t ORDER BY k, v";
const GROUP_BY: &str = "SELECT k, count(*) AS c, sum(v) AS s FROM t GROUP BY k";
const JOIN: &str = "SELECT count(*) AS c FROM a1 JOIN a2 ON a1.k = a2.k";

fn check_sorted(batches: &[RecordBatch], input: &[RecordBatch]) {
    let (k, v) = (column(batches, 0), column(batches, 1));
    let mut want: Vec<(i64, i64)> = column(input, 0).into_iter().zip(column(input, 1)).collect();
    want.sort_unstable();
    let got: Vec<(i64, i64)> = k.into_iter().zip(v).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the sorted output differs from the input sorted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_spills_under_a_tight_query_limit_and_is_right() {
    let input = data(300_000, u64::MAX, 7);
    let global = ChargeTreePool::new(Budget::new()).unwrap();
    let tenant = global.child("tenant", Budget::new()).unwrap();

    // One partition: two sorters under one first-come-first-served limit can starve each
    // other (one holds the whole limit while the other has nothing it could spill), which
    // is not what this test is about.
    let free = tenant.child("free", Budget::new()).unwrap();
    let ctx = session(&free, 1);
    register(&ctx, "t", input.clone());
    let (out, plan) = run(&ctx, SORT).await.unwrap();
    check_sorted(&out, &input);
    assert_eq!(spills(&plan), 0, "no limit, no spill");
    let needed = need(&free);

    let limit = needed / 4;
    // A plain limit is not enough: the sort's buffer (spillable) takes it all, and its merge
    // (unspillable) then finds nothing left, as with any first-come-first-served pool.
    let plain = tenant.child("plain", Budget::new().max(limit)).unwrap();
    let ctx = session(&plain, 1);
    register(&ctx, "t", input.clone());
    let msg = exhausted(run(&ctx, SORT).await);
    assert!(msg.contains("refused by 'global/tenant/plain'") && msg.contains("ExternalSorterMerge"), "{msg}");
    drop(ctx);
    assert_balanced(&plain).await;

    // Half the limit kept for unspillable consumers: the buffer spills earlier, the merge
    // has room.
    let tight = tenant.child("tight", Budget::new().max(limit).unspillable_reserve(limit / 2)).unwrap();
    let ctx = session(&tight, 1);
    register(&ctx, "t", input.clone());
    let (out, plan) = run(&ctx, SORT).await.unwrap();
    check_sorted(&out, &input);
    let stats = tight.stats();
    eprintln!(
        "sort: {} rows, needs {} KiB unlimited; limit {} KiB, {} KiB of it reserved for unspillable: {} spills, \
         {} refusals for max, {} for the reserve, peak {} KiB, {} forced",
        300_000,
        needed / KIB,
        limit / KIB,
        limit / 2 / KIB,
        spills(&plan),
        stats.refused_max,
        stats.refused_guarantee,
        stats.peak / KIB,
        stats.forced
    );
    assert!(spills(&plan) > 0, "the sort spilled");
    assert!(stats.refused_max + stats.refused_guarantee > 0, "the query level refused");
    assert!(stats.peak <= limit, "never above the limit: {stats:?}");
    drop(ctx);
    assert_balanced(&tight).await;
    assert_balanced(&global).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_spills_under_a_tight_query_limit_and_is_right() {
    let input = data(300_000, 100_000, 11);
    let mut want: HashMap<i64, (i64, i64)> = HashMap::new();
    for (k, v) in column(&input, 0).into_iter().zip(column(&input, 1)) {
        let e = want.entry(k).or_default();
        e.0 += 1;
        e.1 += v;
    }
    let check = |batches: &[RecordBatch]| {
        let (k, c, s) = (column(batches, 0), column(batches, 1), column(batches, 2));
        assert_eq!(k.len(), want.len());
        for i in 0..k.len() {
            assert_eq!(want.get(&k[i]), Some(&(c[i], s[i])), "group {}", k[i]);
        }
    };
    let global = ChargeTreePool::new(Budget::new()).unwrap();
    // One partition, as for the sort: concurrent spillers under one limit are first come,
    // first served.
    let free = global.child("free", Budget::new()).unwrap();
    let ctx = session(&free, 1);
    register(&ctx, "t", input.clone());
    let (out, plan) = run(&ctx, GROUP_BY).await.unwrap();
    check(&out);
    assert_eq!(spills(&plan), 0);
    let needed = need(&free);

    let limit = needed / 2;
    let tight = global.child("tight", Budget::new().max(limit)).unwrap();
    let ctx = session(&tight, 1);
    register(&ctx, "t", input.clone());
    let (out, plan) = run(&ctx, GROUP_BY).await.unwrap();
    check(&out);
    let stats = tight.stats();
    eprintln!(
        "group by: {} groups, needs {} KiB unlimited; limit {} KiB: {} spills, {} refusals, peak {} KiB",
        want.len(),
        needed / KIB,
        limit / KIB,
        spills(&plan),
        stats.refused_max,
        stats.peak / KIB
    );
    assert!(spills(&plan) > 0, "the aggregation spilled");
    assert!(stats.refused_max > 0);
    drop(ctx);
    assert_balanced(&global).await;
}

/// The join's inputs: `rows` rows each, keys in 0..1M.
fn join_inputs(rows: usize) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    (data(rows, 1_000_000, 3), data(rows, 1_000_000, 5))
}

fn join_count(rows: usize) -> i64 {
    let (a1, a2) = join_inputs(rows);
    let mut left: HashMap<i64, i64> = HashMap::new();
    for k in column(&a1, 0) {
        *left.entry(k).or_default() += 1;
    }
    column(&a2, 0).iter().map(|k| left.get(k).copied().unwrap_or(0)).sum()
}

/// Runs the join of two `rows`-row tables on `level` and returns its count. One partition:
/// one build side (unspillable), collected once.
async fn join(level: &ChargeTreePool, rows: usize) -> Result<i64> {
    let ctx = session(level, 1);
    let (a1, a2) = join_inputs(rows);
    register(&ctx, "a1", a1);
    register(&ctx, "a2", a2);
    let (out, _) = run(&ctx, JOIN).await?;
    Ok(column(&out, 0)[0])
}

/// What the join needs with no limit.
async fn join_need(parent: &ChargeTreePool, rows: usize) -> usize {
    let free = parent.child("measure", Budget::new()).unwrap();
    assert_eq!(join(&free, rows).await.unwrap(), join_count(rows));
    need(&free)
}

/// The join of the failure and ceiling tests.
const JOIN_ROWS: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unspillable_query_fails_naming_the_level() {
    let global = ChargeTreePool::new(Budget::new()).unwrap();
    let tenant = global.child("acme", Budget::new()).unwrap();
    let needed = join_need(&tenant, JOIN_ROWS).await;
    let query = tenant.child("q7", Budget::new().max(needed / 2)).unwrap();
    let msg = exhausted(join(&query, JOIN_ROWS).await);
    eprintln!("join needs {} KiB; limit {} KiB:\nResources exhausted: {msg}", needed / KIB, needed / 2 / KIB);
    assert!(msg.contains("refused by 'global/acme/q7'"), "{msg}");
    assert!(msg.contains("its max"), "{msg}");
    // The hash join's build side cannot spill, and is named with its size.
    assert!(msg.contains("HashJoinInput"), "{msg}");
    assert!(msg.contains("(can spill: false) consumed"), "{msg}");
    assert!(query.stats().refused_max > 0);
    assert_balanced(&global).await;
}

/// A source that yields its batches, signals, then waits for a gate before it ends: a sort
/// over it holds what it buffered until the gate opens.
#[derive(Debug)]
struct Gated {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    reached: Mutex<Option<oneshot::Sender<()>>>,
    gate: Mutex<Option<oneshot::Receiver<()>>>,
}

impl PartitionStream for Gated {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reached = self.reached.lock().unwrap().take().expect("executed once");
        let gate = self.gate.lock().unwrap().take().expect("executed once");
        let tail = futures::stream::once(async move {
            let _ = reached.send(());
            let _ = gate.await;
        })
        .filter_map(|()| async { None::<Result<RecordBatch>> });
        let head = futures::stream::iter(self.batches.clone().into_iter().map(Ok));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), head.chain(tail)))
    }
}

/// Tenant B's heavy query: a sort over a gated source, started on its own task. Returns
/// once the sort has buffered all its input (it holds that memory, or has spilled), with
/// the gate's key and the query's handle.
async fn start_heavy(
    level: &ChargeTreePool,
    input: Vec<RecordBatch>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Result<(Vec<RecordBatch>, Arc<dyn ExecutionPlan>)>>) {
    let (reached_tx, reached_rx) = oneshot::channel();
    let (gate_tx, gate_rx) = oneshot::channel();
    let source = Gated {
        schema: schema(),
        batches: input,
        reached: Mutex::new(Some(reached_tx)),
        gate: Mutex::new(Some(gate_rx)),
    };
    let ctx = session(level, 1);
    ctx.register_table("b", Arc::new(StreamingTable::try_new(schema(), vec![Arc::new(source)]).unwrap()))
        .unwrap();
    let handle = tokio::spawn(async move { run(&ctx, "SELECT k, v FROM b ORDER BY k, v").await });
    reached_rx.await.expect("the heavy query read all its input");
    (gate_tx, handle)
}

/// Tenant A's query in the isolation test: a join whose build side (unspillable) needs more
/// than B's sort adds in its final in-memory phase, so that B's whole run fits the global
/// limit while what B holds at the gate and A's join together do not.
const A_ROWS: usize = 500_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarantee_lets_a_tenant_finish_beside_a_heavy_one() {
    let heavy_input = data(600_000, u64::MAX, 13);

    // What each query takes with no limit: A's join, and B's sort once it has read its
    // whole input (it has not spilled: it holds it all).
    let probe = ChargeTreePool::new(Budget::new()).unwrap();
    let need_a = join_need(&probe, A_ROWS).await;
    let b = probe.child("b", Budget::new()).unwrap();
    let (gate, heavy) = start_heavy(&b, heavy_input.clone()).await;
    let held_b = b.reserved();
    gate.send(()).unwrap();
    check_sorted(&heavy.await.unwrap().unwrap().0, &heavy_input);
    // Its final in-memory sort needs a little more than it buffered.
    let peak_b = b.stats().peak;

    // The global limit fits B's whole run but not what B holds at the gate and A together.
    let global_max = peak_b.max(held_b + need_a / 2) + 256 * KIB;
    assert!(held_b + need_a > global_max, "{held_b} + {need_a} vs {global_max}");
    let guarantee = need_a + MIB;
    for protected in [false, true] {
        let global = ChargeTreePool::new(Budget::new().max(global_max)).unwrap();
        let a = global.child("a", Budget::new().guarantee(if protected { guarantee } else { 0 })).unwrap();
        let b = global.child("b", Budget::new()).unwrap();
        let qa = a.child("qa", Budget::new()).unwrap();
        // B's query keeps room for its sort's merge (unspillable), wherever its limit is.
        let qb = b.child("qb", Budget::new().unspillable_reserve(4 * MIB)).unwrap();

        let (gate, heavy) = start_heavy(&qb, heavy_input.clone()).await;
        let b_at_gate = b.reserved();
        // A's query runs while B's holds what it took.
        let result_a = join(&qa, A_ROWS).await;
        gate.send(()).unwrap();
        let (out_b, plan_b) = heavy.await.unwrap().unwrap();
        check_sorted(&out_b, &heavy_input);
        eprintln!(
            "isolation, A guaranteed {} KiB: global max {} KiB, B holds {} KiB at the gate ({} spills), A needs {} KiB: {}",
            if protected { guarantee / KIB } else { 0 },
            global_max / KIB,
            b_at_gate / KIB,
            spills(&plan_b),
            need_a / KIB,
            match &result_a {
                Ok(c) => format!("A finished ({c} rows)"),
                Err(e) => format!("A failed: {e}"),
            }
        );
        if protected {
            assert_eq!(result_a.unwrap(), join_count(A_ROWS), "A finished, with the right answer");
            assert!(b_at_gate <= global_max - guarantee, "B never held A's guarantee");
            assert!(spills(&plan_b) > 0, "B spilled instead");
            assert!(global.stats().refused_guarantee > 0, "B was refused at the global level");
        } else {
            // Without the guarantee B holds nearly everything and A cannot run.
            let msg = exhausted(result_a);
            assert!(msg.contains("refused by 'global'"), "{msg}");
            assert!(msg.contains("ExternalSorter"), "B's sort is among the top consumers: {msg}");
            assert_eq!(spills(&plan_b), 0);
        }
        assert_balanced(&global).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_tenant_and_global_ceilings_refuse_in_turn() {
    let probe = ChargeTreePool::new(Budget::new()).unwrap();
    let n = join_need(&probe, JOIN_ROWS).await;

    // query ceiling 2n < tenant ceiling 4n < global ceiling 8n.
    let global = ChargeTreePool::new(Budget::new().max(8 * n)).unwrap();
    let tenant = global.child("t", Budget::new().max(4 * n)).unwrap();
    let other = global.child("other", Budget::new()).unwrap();
    let hold = |level: &ChargeTreePool, bytes: usize| {
        let r =
            datafusion::execution::memory_pool::MemoryConsumer::new("held").register(&level.memory_pool());
        r.try_grow(bytes).unwrap();
        r
    };

    // 1. A query whose ceiling is below what it needs: refused by the query.
    let small = tenant.child("small", Budget::new().max(n / 2)).unwrap();
    let msg = exhausted(join(&small, JOIN_ROWS).await);
    assert!(msg.contains("refused by 'global/t/small'"), "{msg}");

    // 2. A query within its own ceiling, but the tenant's other query holds 3.5n of 4n:
    // refused by the tenant.
    let q = tenant.child("q", Budget::new().max(2 * n)).unwrap();
    let sibling = tenant.child("sibling", Budget::new()).unwrap();
    let held = hold(&sibling, 3 * n + n / 2);
    let msg = exhausted(join(&q, JOIN_ROWS).await);
    assert!(msg.contains("refused by 'global/t'"), "{msg}");
    assert!(msg.contains("held#"), "the sibling query's consumer is listed: {msg}");
    drop(held);

    // 3. Within the query's and the tenant's ceilings, but another tenant holds 7.5n of 8n:
    // refused by the global level.
    let held = hold(&other, 7 * n + n / 2);
    let msg = exhausted(join(&q, JOIN_ROWS).await);
    assert!(msg.contains("refused by 'global'"), "{msg}");
    drop(held);

    // 4. With nothing held, the same query finishes.
    assert_eq!(join(&q, JOIN_ROWS).await.unwrap(), join_count(JOIN_ROWS));
    let refused = [small.stats().refused_max, tenant.stats().refused_max, global.stats().refused_max];
    assert!(refused.iter().all(|&r| r > 0), "each level refused: {refused:?}");
    assert_balanced(&global).await;
}
