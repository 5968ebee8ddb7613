//! A DataFusion [`MemoryPool`](datafusion_execution::memory_pool::MemoryPool) on a
//! chargetree tree: global, tenant, query (or session, task) and operator budgets.
//!
//! Each [`ChargeTreePool`] is one level of one tree, and is itself a `MemoryPool`. The
//! embedder builds the levels ([`ChargeTreePool::builder`] for the global one,
//! [`ChargeTreePool::child`] below it) and gives each query a `RuntimeEnv` whose pool is
//! that query's level; every `MemoryConsumer` registered there becomes a chargetree group
//! below it, and every reservation operation is a charge or uncharge of that group through
//! chargetree's per-CPU stock (`Group::charge_with` / `Group::uncharge`).
//!
//! ```text
//! global (max)
//! ├── tenant-a (max, guarantee)
//! │   └── q1 (max, high, unspillable reserve)
//! │       ├── spillable
//! │       │   └── ExternalSorter[0]#12, GroupedHashAggregateStream[1]#15, ...
//! │       └── unspillable (guaranteed the reserve)
//! │           └── HashJoinInput#17, ...
//! └── tenant-b (max)
//!     └── q2 ...
//! ```
//!
//! ```
//! use chargetree_datafusion::{Budget, ChargeTreePool};
//! use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool};
//! use datafusion_execution::runtime_env::RuntimeEnvBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const MIB: usize = 1 << 20;
//! let global = ChargeTreePool::new(Budget::new().max(1024 * MIB))?;
//! let tenant = global.child("acme", Budget::new().max(256 * MIB).guarantee(64 * MIB))?;
//! let query = tenant.child("q1", Budget::new().max(64 * MIB).high(48 * MIB).unspillable_reserve(8 * MIB))?;
//!
//! // The query's own RuntimeEnv (its other parts may be shared: see
//! // `RuntimeEnvBuilder::from_runtime_env`).
//! let runtime = RuntimeEnvBuilder::new().with_memory_pool(query.memory_pool()).build_arc()?;
//!
//! // What an operator does with it:
//! let sorter = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&runtime.memory_pool);
//! sorter.try_grow(40 * MIB)?;
//! assert_eq!((query.reserved(), tenant.reserved(), global.reserved()), (40 * MIB, 40 * MIB, 40 * MIB));
//! // Above 48 MiB (high), a spillable operator is told to spill; unspillable ones go on to 64 MiB.
//! let err = sorter.try_grow(16 * MIB).unwrap_err();
//! assert!(err.to_string().contains("refused by 'global/acme/q1'"));
//! # Ok(())
//! # }
//! ```
//!
//! # What each operation does
//!
//! | `MemoryPool` call | chargetree | then |
//! |---|---|---|
//! | `try_grow(n)` | `charge_with(n, no_retry)`: stock, else the counters up to the root, one drain of the refusing level's stocks | the admission checks below; refused: `DataFusionError::ResourcesExhausted` naming the level |
//! | `grow(n)` (infallible) | `charge_with(n, no_retry + no_fail)`: forced past the limit if it must be | counted ([`ConsumerStats::forced`], chargetree's `TreeStats::forced`); the engine raises `max` and `oom` on the level it went past |
//! | `shrink(n)` | `uncharge(n)`, into the stock | |
//! | `register` / `unregister` | a child group of the level / that group taken offline (its cached bytes drained) | |
//! | `reserved()` | Σ the consumers' reservations below the level | |
//! | `memory_limit()` | the smallest `max` from the level up | |
//!
//! A refused `try_grow` changes nothing: the reservation, the consumer's record and every
//! counter are as before (the charge is undone).
//!
//! # Limits, early spill and headroom
//!
//! * **`max`** ([`Budget::max`]): chargetree's hard limit. The refusing level is the lowest
//!   one whose limit would be exceeded, so a query ceiling below a tenant ceiling below the
//!   global one refuses at the query first.
//! * **`high`** ([`Budget::high`]): while a level is above its `high`, `try_grow` of
//!   *spillable* consumers below it is refused, so sorts and aggregations spill early, and
//!   unspillable consumers (hash join build sides, ...) still get memory up to `max`.
//! * **Guarantees** ([`Budget::guarantee`], the group's `min`): DataFusion cannot reclaim
//!   memory from an operator, so a guarantee is enforced at admission: a charge is refused at
//!   a level if the level's usage plus the *unused* guarantees of the other children there
//!   (Σ `min` − Σ `min(usage, min)`, which chargetree maintains) would exceed its `max`. A
//!   tenant below its guarantee therefore always finds its unused guarantee free, whatever
//!   its siblings run.
//! * **Unspillable headroom** ([`Budget::unspillable_reserve`]): the level's consumers are
//!   split into a `spillable` and an `unspillable` group, the latter guaranteed the reserve,
//!   so spillable consumers are refused (and spill) before they take the last reserved bytes.
//!
//! The `high` and guarantee checks run after chargetree accepted the charge; before refusing,
//! the refusing level's per-CPU stocks are drained and the check repeated, so cached bytes
//! never cause a refusal on their own.
//!
//! # Units
//!
//! One chargetree unit is one byte, as DataFusion counts, so a reservation's size and its
//! charge are the same number and nothing is rounded. Amounts are at most chargetree's
//! [`COUNTER_MAX`](chargetree::counter::COUNTER_MAX) (2⁵¹ − 1 bytes, about 2 PiB, on 64-bit
//! targets): a larger `try_grow` is refused; a larger infallible `grow` is recorded but
//! charged to no counter (DataFusion's `grow` cannot fail), and given back first by `shrink`.
//!
//! # `reserved()`, usage and the per-CPU stock
//!
//! chargetree charges the counters in batches ([`PoolBuilder::batch_bytes`], default
//! [`DEFAULT_BATCH_BYTES`]) and caches the rest of a batch per CPU and group, so a group's
//! counter usage is its consumers' reservations **plus** bytes cached in stocks (at most a
//! batch per CPU per cached consumer group). The pool therefore keeps each consumer's
//! reserved bytes itself, and:
//!
//! * `reserved()` and [`ConsumerStats`] (`reserved`, `peak`) count reservations only, and are
//!   exact at quiescence (each consumer's record is one atomic that its reservations update);
//! * [`LevelStats::usage`] is the counter's usage, cached bytes included; after
//!   [`ChargeTreePool::drain`] (at quiescence) it equals `reserved()`;
//! * limits see the cached bytes, but a charge that hits a limit drains the stocks below the
//!   refusing level before it is refused.
//!
//! # Finding a consumer without a lock
//!
//! A reservation names its consumer only by id. The pool keeps one map from id to state
//! (locked at register/unregister and for statistics); each thread caches the last few
//! states it used, so the steady-state operations take no lock and write no shared cache
//! line. See the `consumer` module's source.

mod budget;
mod consumer;
mod pool;

pub use budget::{Budget, PoolError};
pub use pool::{
    ChargeTreePool, ConsumerStats, DEFAULT_BATCH_BYTES, DEFAULT_TOP_CONSUMERS, LevelStats, PoolBuilder,
};

pub use chargetree;
