//! The chargetree demonstration: a machine shared by tenants, each running a few workloads
//! that charge and free memory on their own threads, shown live.
//!
//! ```text
//! cargo run --release --example demo                                  # built-in setup, 3 s
//! cargo run --release --example demo -- --seconds 10
//! cargo run --release --example demo -- --config examples/demo.conf
//! cargo run --release --example demo -- --help
//! ```
//!
//! # What it does
//!
//! The tree's root is the machine; below it are tenants, and below them workloads (jobs),
//! each a group with limits and protection. Every workload has a thread that allocates and
//! frees *objects*, charging them to its group: whole pages through `Group::try_charge` /
//! `Group::uncharge`, small objects in bytes through the group's `ObjGroup`. Each workload has
//! an allocation pattern:
//!
//! * `steady`: fills a working set of `size`, then frees its oldest object for each new one;
//! * `bursty`: bursts towards `size` four times as fast, drops back to a tenth, and again;
//! * `leaky`: allocates and never frees until a charge is refused, then "restarts" (frees
//!   everything) and starts leaking again.
//!
//! A quarter of the steady and bursty objects, and every leaked one, are *pinned* (anonymous
//! memory without swap); the others are *cache* that reclaim may drop. One allocation in 64
//! is *critical* and charged with `ChargeOptions::no_fail` (forced past the limit rather than
//! refused, and counted).
//!
//! The tree has a `Reclaimer`: when a charge hits a `max`, it drops cache objects of the
//! over-limit group's subtree in the order `Group::walk_reclaim` chooses (effective `min` and
//! `low`, recursive protection). A charge that leaves a group above its `high` makes the
//! workload reclaim that group's excess the same way (Linux does it on the way back to user
//! space). Groups within their `low` lose memory only when nothing else is left, and that is
//! what their `low` event counts.
//!
//! Halfway through (by default) one job goes offline: it frees its pages, but its byte objects
//! outlive it. They hold the job's `ObjGroup`, which offlining reparents to the tenant, so
//! their later frees uncharge the tenant, and the job's group itself is freed while they live
//! (seen through an `Observer`).
//!
//! On a terminal the tree is redrawn in place five times a second; otherwise (or with
//! `--plain`) it is printed as plain lines every second. At the end the threads stop, every
//! object is freed, the per-CPU stocks are drained, every usage is checked to be exactly 0,
//! and a summary table is printed.
//!
//! # Configuration file (`--config FILE`)
//!
//! One declaration per line; `#` starts a comment; amounts are written as cgroup files
//! take them (`4096`, `512K`, `64M`, `1G`, `max`) and parsed with
//! `chargetree::counter::parse_amount` into 4 KiB pages. `examples/demo.conf` is an example;
//! the built-in setup (`DEFAULT_CONFIG` below) is written in the same format, and `--help`
//! prints it too (`config_help` below; the tests check that its example parses and that it
//! names every key the parser takes: `cargo test --example demo`).
//!
//! ```text
//! root  [name=<name>] [max=<amount>] [high=<amount>]
//! group <name> parent=<name> [max=<amount>] [high=<amount>] [min=<amount>] [low=<amount>]
//!       [workload=steady|bursty|leaky] [rate=<1..1000>] [size=<amount>] [offline=<1..99>%]
//! ```
//!
//! * `root` (at most once, before any `group`) names and limits the machine (default name
//!   `machine`, no limit).
//! * `group` declares a group under `parent` (the root's name or a group declared above).
//!   Names are letters, digits, `-`, `_` and `.`, unique. Each key at most once.
//! * `workload=` gives the group a thread (only leaf groups may have one); `rate` is
//!   allocations per millisecond (default 4); `size` is the working set a steady workload
//!   keeps or a bursty one bursts to (default: three quarters of the group's `high` or `max`,
//!   else 16M). `leaky` ignores `size`.
//! * `offline=P%` takes the (leaf) group offline after P% of the run.
//!
//! A group's `min` and `low` protect it only as far as its parent's protection reaches
//! (protection is handed down, as in cgroup2), so a protected job's tenant declares some too.
//!
//! Errors name the file and the line, e.g. ``demo.conf:7: unknown key `maxx` (parent, max, ...)``.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use chargetree::COUNTER_MAX;
use chargetree::counter::parse_amount;
use chargetree::cpu::DefaultCpus;
use chargetree::group::{
    ChargeFailure, ChargeOptions, Charged, EventCounts, Group, GroupId, GroupSpec, Observer, OverHigh,
    Reclaimer, Tree, TreeConfig,
};
use chargetree::objgroup::ObjGroup;
use chargetree::stock::STOCK_SLOTS;

/// Units are 4 KiB pages.
const PAGE: usize = 4096;
/// One workload step.
const TICK: Duration = Duration::from_millis(1);
/// Redraw period on a terminal (five times a second).
const FRAME_TTY: Duration = Duration::from_millis(200);
/// Print period when stdout is not a terminal.
const FRAME_PLAIN: Duration = Duration::from_secs(1);
/// At most this many groups (so the live tree fits a screen).
const MAX_GROUPS: usize = 32;
/// Log lines kept below the live tree.
const LOG_LINES: usize = 6;

/// The built-in setup (the same format as `--config` files).
const DEFAULT_CONFIG: &str = "\
# The built-in setup: a 160M machine, two tenants whose limits add up to more than that.
root name=machine max=160M
group tenant-a parent=machine max=128M high=112M min=16M low=48M
group web      parent=tenant-a max=48M high=40M min=16M workload=steady rate=6 size=36M
group batch    parent=tenant-a high=32M workload=bursty rate=8 size=56M
group cache    parent=tenant-a low=24M workload=steady rate=4 size=64M
group tenant-b parent=machine max=64M min=16M low=64M
group db       parent=tenant-b max=48M min=16M low=48M workload=steady rate=4 size=40M
group etl      parent=tenant-b workload=bursty rate=8 size=48M offline=50%
group leak     parent=tenant-b max=16M workload=leaky rate=2
";

const USAGE: &str = "\
usage: demo [--seconds N] [--config FILE] [--plain]

A machine shared by tenants whose workloads charge and free memory on their own threads,
shown live; at the end every usage is checked to be back at 0.

  --seconds N    run for N seconds (default 3; decimals allowed; at most 3600)
  --config FILE  read the tree from FILE instead of the built-in setup (format below)
  --plain        print plain periodic lines even on a terminal
  -h, --help     this text";

/// The keys `parse_config` takes on a `root` line and on a `group` line (its error messages
/// list them; the help names each).
const ROOT_KEYS: [&str; 3] = ["name", "max", "high"];
const GROUP_KEYS: [&str; 9] = ["parent", "max", "high", "min", "low", "workload", "rate", "size", "offline"];

/// The example `--help` ends with: every key of both lines and every workload.
const HELP_EXAMPLE: &str = "  root  name=host max=96M high=88M
  group shop     parent=host max=64M high=56M min=16M low=32M
  group shop-db  parent=shop min=16M workload=steady rate=4 size=24M
  group shop-web parent=shop workload=bursty rate=8 size=32M offline=50%
  group leak     parent=host max=8M workload=leaky rate=2
";

/// The configuration format, as `--help` prints it after `USAGE` (what `parse_config`
/// accepts; the tests hold the two together).
fn config_help() -> String {
    format!(
        "\
Configuration file (--config FILE): one declaration per line; `#` starts a comment.

  root  [name=NAME] [max=AMOUNT] [high=AMOUNT]
  group NAME parent=NAME [max=AMOUNT] [high=AMOUNT] [min=AMOUNT] [low=AMOUNT]
        [workload=steady|bursty|leaky] [rate=1..1000] [size=AMOUNT] [offline=1..99%]

  root       the machine: at most once, before any group (default name `machine`, no limit)
  group      a group under `parent`, which is the root or a group declared above
  NAME       1 to 16 letters, digits, `-`, `_` or `.`; names are unique
  AMOUNT     bytes with an optional K, M or G suffix (4096, 512K, 64M, 1G), or `max`;
             counted in {kib} KiB pages
  max, high  the hard limit; the level above which the group reclaims its own excess
  min, low   hard and soft protection from reclaim, effective only as far as the
             parent's own protection reaches (so a protected group's parent declares some)
  workload   gives a leaf group a thread: `steady` keeps a working set of `size`, `bursty`
             bursts to `size` and drops back, `leaky` never frees until a charge is refused
  rate       allocations per millisecond (default 4)
  size       the working set (default: 3/4 of the group's high or max, else 16M; `leaky`
             ignores it)
  offline    takes the leaf group offline after that share of the run

Each key at most once per line; `rate` and `size` need a `workload`; groups with a workload
or an `offline` have no children; at least one group has a workload; at most {MAX_GROUPS} groups,
the root included.

Example (examples/demo.conf is a longer one):

{HELP_EXAMPLE}",
        kib = PAGE / 1024,
    )
}

type G = Group<DefaultCpus, STOCK_SLOTS>;
type O = ObjGroup<DefaultCpus, STOCK_SLOTS>;

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    Steady,
    Bursty,
    Leaky,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Steady => "steady",
            Pattern::Bursty => "bursty",
            Pattern::Leaky => "leaky",
        }
    }
}

/// One declared group; index 0 is the root.
#[derive(Clone, Debug)]
struct GroupConf {
    name: String,
    parent: Option<usize>,
    max: usize,
    high: usize,
    min: usize,
    low: usize,
    workload: Option<Pattern>,
    /// Allocations per tick.
    rate: usize,
    /// Working-set target, in pages (0 = derive from the limits).
    size: usize,
    /// Percentage of the run after which the group goes offline.
    offline: Option<u32>,
    line: usize,
}

impl GroupConf {
    fn new(name: &str, parent: Option<usize>, line: usize) -> Self {
        Self {
            name: name.to_owned(),
            parent,
            max: COUNTER_MAX,
            high: COUNTER_MAX,
            min: 0,
            low: 0,
            workload: None,
            rate: 4,
            size: 0,
            offline: None,
            line,
        }
    }
}

/// A configuration error, with its line number (1-based).
#[derive(Debug)]
struct ConfigError {
    line: usize,
    message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { line, message: message.into() })
}

/// Parses the configuration format documented in the header.
fn parse_config(text: &str) -> Result<Vec<GroupConf>, ConfigError> {
    let mut groups = vec![GroupConf::new("machine", None, 0)];
    let mut root_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        let mut words = content.split_whitespace();
        let Some(kind) = words.next() else { continue };
        let mut g = match kind {
            "root" => {
                if root_seen {
                    return err(line, "`root` is declared twice");
                }
                if groups.len() > 1 {
                    return err(line, "`root` must come before every `group`");
                }
                root_seen = true;
                GroupConf { line, ..groups[0].clone() }
            }
            "group" => {
                let Some(name) = words.next() else {
                    return err(line, "`group` needs a name: `group <name> parent=<name> ...`");
                };
                if name.contains('=') {
                    return err(line, format!("`group` needs a name before its keys, found `{name}`"));
                }
                check_name(name, line)?;
                if groups.iter().any(|g| g.name == name) {
                    return err(line, format!("group `{name}` is declared twice"));
                }
                if groups.len() == MAX_GROUPS {
                    return err(line, format!("at most {MAX_GROUPS} groups (the root included)"));
                }
                GroupConf::new(name, None, line)
            }
            other => return err(line, format!("expected `root` or `group`, found `{other}`")),
        };
        let mut seen: Vec<&str> = Vec::new();
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return err(line, format!("expected key=value, found `{word}`"));
            };
            if seen.contains(&key) {
                return err(line, format!("key `{key}` is given twice"));
            }
            seen.push(key);
            let amount = |v: &str| {
                parse_amount(v, PAGE).or_else(|e| {
                    err(line, format!("`{key}={v}`: {e} (amounts look like 4096, 512K, 64M, 1G or max)"))
                })
            };
            match (kind, key) {
                ("root", "name") => {
                    check_name(value, line)?;
                    g.name = value.to_owned();
                }
                (_, "max") => g.max = amount(value)?,
                (_, "high") => g.high = amount(value)?,
                ("group", "min") => g.min = amount(value)?,
                ("group", "low") => g.low = amount(value)?,
                ("group", "parent") => match groups.iter().position(|p| p.name == value) {
                    Some(p) => g.parent = Some(p),
                    None => {
                        let root = &groups[0].name;
                        return err(
                            line,
                            format!("unknown parent `{value}` (the root is `{root}`; declare parents first)"),
                        );
                    }
                },
                ("group", "workload") => {
                    g.workload = Some(match value {
                        "steady" => Pattern::Steady,
                        "bursty" => Pattern::Bursty,
                        "leaky" => Pattern::Leaky,
                        _ => {
                            return err(
                                line,
                                format!("unknown workload `{value}` (steady, bursty or leaky)"),
                            );
                        }
                    });
                }
                ("group", "rate") => match value.parse::<usize>() {
                    Ok(r @ 1..=1000) => g.rate = r,
                    _ => return err(line, format!("`rate={value}`: expected an integer from 1 to 1000")),
                },
                ("group", "size") => match amount(value)? {
                    0 => return err(line, "`size` must be at least one page"),
                    COUNTER_MAX => return err(line, "`size=max` is not a working set"),
                    s => g.size = s,
                },
                ("group", "offline") => match value.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                    Some(p @ 1..=99) => g.offline = Some(p),
                    _ => {
                        return err(line, format!("`offline={value}`: expected a percentage from 1% to 99%"));
                    }
                },
                ("root", _) => {
                    return err(line, format!("unknown key `{key}` for `root` ({})", ROOT_KEYS.join(", ")));
                }
                _ => {
                    return err(line, format!("unknown key `{key}` ({})", GROUP_KEYS.join(", ")));
                }
            }
        }
        if kind == "root" {
            groups[0] = g;
            continue;
        }
        if g.parent.is_none() {
            return err(line, format!("group `{}` needs `parent=<name>`", g.name));
        }
        if g.workload.is_none() && (seen.contains(&"rate") || seen.contains(&"size")) {
            return err(line, "`rate` and `size` need a `workload`");
        }
        groups.push(g);
    }
    // Whole-file checks: workloads and offlining are for leaves.
    for (i, g) in groups.iter().enumerate() {
        if let Some(child) = groups.iter().find(|c| c.parent == Some(i)) {
            if g.workload.is_some() {
                return err(
                    child.line,
                    format!("`{}` has a workload, so it cannot have children (`{}`)", g.name, child.name),
                );
            }
            if g.offline.is_some() {
                return err(
                    child.line,
                    format!("`{}` goes offline, so it cannot have children (`{}`)", g.name, child.name),
                );
            }
        }
    }
    if !groups.iter().any(|g| g.workload.is_some()) {
        return err(text.lines().count().max(1), "no group has a `workload`: nothing would run");
    }
    Ok(groups)
}

fn check_name(name: &str, line: usize) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 16
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        err(line, format!("invalid name `{name}` (1 to 16 letters, digits, `-`, `_` or `.`)"))
    }
}

// ---------------------------------------------------------------------------------------------
// Objects, pools and reclaim

/// One allocated object: `bytes` charged to a group, as whole pages or through an `ObjGroup`.
struct Obj {
    bytes: usize,
    /// `None`: pages charged to the pool's group. `Some`: bytes charged through this
    /// `ObjGroup` (each byte object holds a reference to it, as the library asks).
    objg: Option<O>,
}

#[derive(Default)]
struct PoolState {
    /// Reclaimable objects, oldest first.
    cache: VecDeque<Obj>,
    /// Pinned objects, oldest first (never reclaimed).
    pinned: VecDeque<Obj>,
    /// Bytes held by both.
    held: usize,
}

#[derive(Default)]
struct PoolStats {
    ok: AtomicUsize,
    refused: AtomicUsize,
    forced: AtomicUsize,
    reclaimed_bytes: AtomicUsize,
    restarts: AtomicUsize,
}

/// The objects charged to one group. Every group has one; only leaves with a workload fill
/// theirs, and a tenant's receives the byte objects of its jobs that went offline.
struct Pool {
    group: G,
    state: Mutex<PoolState>,
    stats: PoolStats,
}

impl Pool {
    fn push(&self, obj: Obj, pinned: bool) {
        let mut st = self.state.lock().unwrap();
        st.held += obj.bytes;
        if pinned { st.pinned.push_back(obj) } else { st.cache.push_back(obj) }
    }

    /// Uncharges one object (never under a pool lock the charging path could want).
    fn release(&self, obj: Obj) {
        match obj.objg {
            Some(o) => o.uncharge_bytes(obj.bytes),
            None => self.group.uncharge(obj.bytes / PAGE),
        }
    }

    /// Frees the oldest object (cache or pinned, whichever list is longer).
    fn free_oldest(&self) -> bool {
        let obj = {
            let mut st = self.state.lock().unwrap();
            let from_cache = st.cache.len() >= st.pinned.len();
            let obj = if from_cache { st.cache.pop_front() } else { st.pinned.pop_front() };
            let Some(obj) = obj else { return false };
            st.held -= obj.bytes;
            obj
        };
        self.release(obj);
        true
    }

    fn held(&self) -> usize {
        self.state.lock().unwrap().held
    }

    /// Everything the pool holds, taken out (to free or to hand over).
    fn take_all(&self) -> Vec<Obj> {
        let mut st = self.state.lock().unwrap();
        st.held = 0;
        let mut all: Vec<Obj> = st.cache.drain(..).collect();
        all.extend(st.pinned.drain(..));
        all
    }

    /// Drops cache objects worth at least `pages` pages; returns the pages freed.
    fn reclaim(&self, pages: usize) -> usize {
        let want = pages.saturating_mul(PAGE);
        let mut freed = 0;
        let mut st = self.state.lock().unwrap();
        while freed < want {
            let Some(obj) = st.cache.pop_front() else { break };
            st.held -= obj.bytes;
            freed += obj.bytes;
            // Uncharging never reclaims, so doing it under the pool lock cannot deadlock.
            self.release(obj);
        }
        drop(st);
        self.stats.reclaimed_bytes.fetch_add(freed, Ordering::Relaxed);
        freed.div_ceil(PAGE)
    }
}

/// The pools by group, shared by the workloads, the reclaimer and the main thread.
#[derive(Default)]
struct Registry {
    pools: RwLock<Vec<Arc<Pool>>>,
}

impl Registry {
    fn find(&self, id: GroupId) -> Option<Arc<Pool>> {
        self.pools.read().unwrap().iter().find(|p| p.group.id() == id).cloned()
    }

    /// Frees `pages` from `target`'s subtree in `walk_reclaim`'s order: unprotected groups
    /// first, groups within their effective `low` only if that was not enough (raising their
    /// `low` event), groups within their effective `min` never. Recursive protection.
    fn reclaim(&self, target: &G, pages: usize) -> usize {
        let walk =
            target.walk_reclaim(pages, true, |g, still| self.find(g.id()).map_or(0, |p| p.reclaim(still)));
        walk.reclaimed
    }
}

/// The tree's reclaim hook: called by the charge engine on the group whose `max` refused.
struct DemoReclaimer(Arc<Registry>);

impl Reclaimer<DefaultCpus, STOCK_SLOTS> for DemoReclaimer {
    fn reclaim(&self, group: &G, amount: usize) -> usize {
        self.0.reclaim(group, amount)
    }
}

/// Records which groups were freed (`freed` runs outside allocator paths: it may lock).
#[derive(Default)]
struct FreedLog(Mutex<Vec<GroupId>>);

struct FreedObserver(Arc<FreedLog>);

impl Observer for FreedObserver {
    fn freed(&self, id: GroupId) {
        self.0.0.lock().unwrap().push(id);
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// xorshift64*: deterministic per workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Workload {
    pool: Arc<Pool>,
    objg: O,
    registry: Arc<Registry>,
    pattern: Pattern,
    rate: usize,
    /// Working-set target in bytes.
    size: usize,
    rng: Rng,
}

impl Workload {
    /// Allocates one object, critical (never refused) if `critical` or by chance; `false` if
    /// the charge was refused.
    fn alloc(&mut self, critical: bool) -> bool {
        let pinned = self.pattern == Pattern::Leaky || self.rng.below(4) == 0;
        let critical = critical || self.rng.below(64) == 0;
        let options = if critical { ChargeOptions::DEFAULT.no_fail() } else { ChargeOptions::DEFAULT };
        let (result, obj): (Result<Charged, ChargeFailure>, Obj) = if self.rng.below(2) == 0 {
            // A page object: 1 to 16 pages.
            let pages = 1 + self.rng.below(16);
            let result = if options.no_fail {
                self.pool.group.charge_with(pages, options)
            } else {
                self.pool.group.try_charge(pages)
            };
            (result, Obj { bytes: pages * PAGE, objg: None })
        } else {
            // A byte object: 32 B to 16 KiB, mostly small.
            let bytes = 32 << self.rng.below(10);
            let bytes = bytes + self.rng.below(bytes);
            let result = if options.no_fail {
                self.objg.charge_bytes_with(bytes, options)
            } else {
                self.objg.charge_bytes(bytes)
            };
            (result, Obj { bytes, objg: Some(self.objg.clone()) })
        };
        let stats = &self.pool.stats;
        match result {
            Ok(charged) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                if charged.forced {
                    stats.forced.fetch_add(1, Ordering::Relaxed);
                }
                self.pool.push(obj, pinned);
                if let Some(over) = charged.over_high {
                    self.reclaim_over_high(over);
                }
                true
            }
            Err(ChargeFailure::Limit { .. }) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(e) => panic!("unexpected charge failure: {e}"),
        }
    }

    /// A charge left `over.group` (this group or an ancestor) above its `high`: reclaim the
    /// excess from that group's subtree, as Linux does on the way back to user space.
    fn reclaim_over_high(&self, over: OverHigh) {
        let mut g = Some(self.pool.group.clone());
        while let Some(x) = g {
            if x.id() == over.group {
                self.registry.reclaim(&x, over.excess());
                return;
            }
            g = x.parent();
        }
    }

    fn free_all(&self) {
        for obj in self.pool.take_all() {
            self.pool.release(obj);
        }
    }

    /// One millisecond of work.
    fn step(&mut self, tick: u64) {
        match self.pattern {
            Pattern::Steady => {
                for _ in 0..self.rate {
                    if self.pool.held() >= self.size {
                        self.pool.free_oldest();
                    }
                    if !self.alloc(false) {
                        break; // refused: back off until the next tick
                    }
                }
            }
            Pattern::Bursty => {
                // 400 ms cycles: a 150 ms burst, a drop to a tenth, then a slow churn.
                match tick % 400 {
                    0..150 => {
                        for _ in 0..self.rate * 4 {
                            if self.pool.held() >= self.size || !self.alloc(false) {
                                break;
                            }
                        }
                    }
                    150 => while self.pool.held() > self.size / 10 && self.pool.free_oldest() {},
                    _ => {
                        for _ in 0..self.rate.div_ceil(4) {
                            self.pool.free_oldest();
                            if !self.alloc(false) {
                                break;
                            }
                        }
                    }
                }
            }
            Pattern::Leaky => {
                for _ in 0..self.rate {
                    if !self.alloc(false) {
                        // Leaked until the limit refused: the "process" writes a crash report
                        // (a critical allocation, forced past the limit) and restarts.
                        self.alloc(true);
                        self.pool.stats.restarts.fetch_add(1, Ordering::Relaxed);
                        self.free_all();
                        break;
                    }
                }
            }
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let start = Instant::now();
        let mut tick = 0u64;
        while !stop.load(Ordering::Relaxed) {
            self.step(tick);
            tick += 1;
            let next = start + TICK * tick as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Display

fn human_pages(pages: usize) -> String {
    if pages == COUNTER_MAX {
        return "max".into();
    }
    human_bytes(pages as u128 * PAGE as u128)
}

fn human_bytes(bytes: u128) -> String {
    match bytes {
        0 => "0".into(),
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// What the summary shows of a group (kept when a group goes offline and is freed).
#[derive(Clone, Copy, Default)]
struct Snapshot {
    peak: usize,
    failcnt: usize,
    events: EventCounts,
    ok: usize,
    refused: usize,
    forced: usize,
    reclaimed_bytes: usize,
    restarts: usize,
}

fn snapshot(group: &G, pool: &Pool) -> Snapshot {
    let s = &pool.stats;
    Snapshot {
        peak: group.counter().peak(),
        failcnt: group.counter().failcnt(),
        events: group.events_local(),
        ok: s.ok.load(Ordering::Relaxed),
        refused: s.refused.load(Ordering::Relaxed),
        forced: s.forced.load(Ordering::Relaxed),
        reclaimed_bytes: s.reclaimed_bytes.load(Ordering::Relaxed),
        restarts: s.restarts.load(Ordering::Relaxed),
    }
}

/// A row of the live tree: a group of the configuration and its state.
struct Row {
    conf: GroupConf,
    id: GroupId,
    parent_id: Option<GroupId>,
    /// Box-drawing prefix for the tree column.
    prefix: String,
    /// The path, for plain output (`tenant-a/web`).
    path: String,
    /// `None` once the group went offline.
    group: Option<G>,
    pool: Option<Arc<Pool>>,
    state: &'static str,
    /// Kept when the group goes offline.
    last: Snapshot,
    /// The tightest `max` on the path (for the usage bar).
    bar_limit: usize,
    logged_low: bool,
    logged_oom: bool,
}

impl Row {
    fn snapshot(&self) -> Snapshot {
        match (&self.group, &self.pool) {
            (Some(g), Some(p)) => snapshot(g, p),
            _ => self.last,
        }
    }
}

fn tree_prefixes(groups: &[GroupConf]) -> Vec<String> {
    let is_last = |i: usize| !groups[i + 1..].iter().any(|g| g.parent == groups[i].parent);
    (0..groups.len())
        .map(|i| {
            let mut chain = Vec::new();
            let mut a = groups[i].parent;
            while let Some(p) = a {
                chain.push(p);
                a = groups[p].parent;
            }
            chain.pop(); // the root draws no column
            let mut s = String::new();
            for &anc in chain.iter().rev() {
                s.push_str(if is_last(anc) { "   " } else { "│  " });
            }
            if i > 0 {
                s.push_str(if is_last(i) { "└─ " } else { "├─ " });
            }
            s
        })
        .collect()
}

fn bar(usage: usize, limit: usize) -> String {
    const W: usize = 10;
    if limit == COUNTER_MAX || limit == 0 {
        return " ".repeat(W);
    }
    let filled = (usage as u128 * W as u128).div_ceil(limit as u128).min(W as u128) as usize;
    format!("{}{}", "█".repeat(filled), "·".repeat(W - filled))
}

/// The live view's column titles after the group column.
const HEADER: &str =
    "  usage  of limit      max    high     min/low     peak  failcnt    max  high  low  oom";

/// `s` padded with spaces to `width` characters.
fn pad(s: &str, width: usize) -> String {
    format!("{s}{}", " ".repeat(width.saturating_sub(s.chars().count())))
}

fn events_cell(e: EventCounts) -> String {
    format!("{:>5} {:>5} {:>4} {:>4}", e.max, e.high, e.low, e.oom)
}

fn render_row(row: &Row, width: usize) -> String {
    let name = pad(&format!("{}{}", row.prefix, row.conf.name), width);
    let Some(g) = &row.group else {
        let s = row.last;
        return format!(
            "\x1b[2m{name} {:>7}  {:10}  {:>7} {:>7} {:>11} {:>8} {:>8} {}\x1b[0m",
            "-",
            "",
            "",
            "",
            row.state,
            human_pages(s.peak),
            s.failcnt,
            events_cell(s.events),
        );
    };
    let c = g.counter();
    let prot = match (c.min(), c.low()) {
        (0, 0) => "-".to_owned(),
        (min, low) => format!("{}/{}", human_pages(min), human_pages(low)),
    };
    format!(
        "{name} {:>7}  {}  {:>7} {:>7} {:>11} {:>8} {:>8} {}",
        human_pages(c.usage()),
        bar(c.usage(), row.bar_limit),
        human_pages(c.max()),
        human_pages(c.high()),
        prot,
        human_pages(c.peak()),
        c.failcnt(),
        events_cell(g.events_local()),
    )
}

/// Where the live view goes: redrawn in place on a terminal, plain lines otherwise.
struct Screen {
    tty: bool,
    /// Lines of the previous frame (to move back over them).
    drawn: usize,
    log: VecDeque<String>,
}

impl Screen {
    fn log(&mut self, t: Duration, msg: String) {
        let line = format!("[{:5.2}s] {msg}", t.as_secs_f64());
        if self.tty {
            if self.log.len() == LOG_LINES {
                self.log.pop_front();
            }
            self.log.push_back(line);
        } else {
            println!("{line}");
        }
    }

    fn draw(&mut self, rows: &[Row], t: Duration, total: Duration, threads: usize) {
        let mut out = String::new();
        let width =
            rows.iter().map(|r| r.prefix.chars().count() + r.conf.name.len()).max().unwrap_or(0).max(16);
        if self.tty {
            if self.drawn > 0 {
                // Back to the first line of the previous frame.
                let _ = write!(out, "\x1b[{}F", self.drawn);
            }
            let mut lines = vec![
                format!(
                    "\x1b[1mchargetree demo\x1b[0m  {:4.1} s of {:.1} s, {threads} workload threads; \
                     events are local (raised on the group itself)",
                    t.as_secs_f64(),
                    total.as_secs_f64()
                ),
                String::new(),
                format!("\x1b[1m{}{HEADER}\x1b[0m", pad("group", width)),
            ];
            lines.extend(rows.iter().map(|r| render_row(r, width)));
            lines.push(String::new());
            lines.extend(self.log.iter().cloned());
            lines.resize(rows.len() + 4 + LOG_LINES, String::new());
            for l in &lines {
                let _ = writeln!(out, "{l}\x1b[K");
            }
            self.drawn = lines.len();
        } else {
            let _ = writeln!(out, "[{:5.2}s] {threads} workload threads", t.as_secs_f64());
            for row in rows {
                match &row.group {
                    Some(g) => {
                        let c = g.counter();
                        let e = g.events_local();
                        let _ = writeln!(
                            out,
                            "  {:<22} usage {:>7}  peak {:>7}  failcnt {:>5}  events max {} high {} low {} oom {}",
                            row.path,
                            human_pages(c.usage()),
                            human_pages(c.peak()),
                            c.failcnt(),
                            e.max,
                            e.high,
                            e.low,
                            e.oom
                        );
                    }
                    None => {
                        let _ = writeln!(out, "  {:<22} {}", row.path, row.state);
                    }
                }
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

/// During the live view: hides the cursor and turns line wrapping off (a terminal narrower
/// than a frame clips its lines instead of breaking the redraw); undone however the program
/// ends.
struct Cursor(bool);

impl Cursor {
    fn hide(tty: bool) -> Self {
        if tty {
            print!("\x1b[?25l\x1b[?7l");
        }
        Self(tty)
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if self.0 {
            print!("\x1b[?7h\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Logs the first `low` and `oom` event of each group.
fn note_events(rows: &mut [Row], screen: &mut Screen, t: Duration) {
    for row in rows.iter_mut() {
        let Some(g) = &row.group else { continue };
        let e = g.events_local();
        if e.low > 0 && !row.logged_low {
            row.logged_low = true;
            screen.log(
                t,
                format!(
                    "{}: first `low` event: reclaim had to take from it although it was within its \
                     protection (nothing unprotected was left)",
                    row.conf.name
                ),
            );
        }
        if e.oom > 0 && !row.logged_oom {
            row.logged_oom = true;
            let c = g.counter();
            screen.log(
                t,
                format!(
                    "{}: first `oom` event: its max ({}) refused a charge even after reclaim, drain and retries",
                    row.conf.name,
                    human_pages(c.max())
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Main

struct Args {
    seconds: f64,
    config: Option<String>,
    plain: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args { seconds: 3.0, config: None, plain: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--plain" => args.plain = true,
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s <= 3600.0 => args.seconds = s,
                    _ => return Err(format!("--seconds {v}: expected a number of seconds from 0 to 3600")),
                }
            }
            "--config" => args.config = Some(it.next().ok_or("--config needs a file name")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}\n\n{}", config_help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (source, text) = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.clone(), text),
            Err(e) => {
                eprintln!("demo: cannot read {path}: {e}");
                return ExitCode::from(2);
            }
        },
        None => ("built-in configuration".to_owned(), DEFAULT_CONFIG.to_owned()),
    };
    let confs = match parse_config(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {source}:{}: {}\n(`--help` describes the format)", e.line, e.message);
            return ExitCode::from(2);
        }
    };
    run(&confs, &args, &source);
    ExitCode::SUCCESS
}

/// A workload thread and its stop flag.
struct Worker {
    row: usize,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Worker {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("a workload thread panicked");
        }
    }
}

fn run(confs: &[GroupConf], args: &Args, source: &str) {
    let total = Duration::from_secs_f64(args.seconds);
    let tty = !args.plain && std::io::stdout().is_terminal();

    // The tree: the root's limits from the configuration, the reclaimer, an observer of frees.
    let registry = Arc::new(Registry::default());
    let freed = Arc::new(FreedLog::default());
    let root_name: &'static str = Box::leak(confs[0].name.clone().into_boxed_str());
    let tree: Tree = Tree::with_config(
        TreeConfig::new()
            .root(GroupSpec::new().name(root_name).max(confs[0].max).high(confs[0].high))
            .reclaimer(DemoReclaimer(registry.clone()))
            .observer(FreedObserver(freed.clone())),
    );

    // The groups, each with its pool of objects.
    let prefixes = tree_prefixes(confs);
    let mut rows: Vec<Row> = Vec::with_capacity(confs.len());
    for (i, c) in confs.iter().enumerate() {
        let (group, path) = match c.parent {
            None => (tree.root(), c.name.clone()),
            Some(p) => {
                let spec = GroupSpec::new().name(&c.name).max(c.max).high(c.high).min(c.min).low(c.low);
                let parent = rows[p].group.as_ref().expect("parents are declared first");
                let path = if p == 0 { c.name.clone() } else { format!("{}/{}", rows[p].path, c.name) };
                (parent.create_child(spec).expect("representable limits"), path)
            }
        };
        let bar_limit = group.counter().ancestors_and_self().map(|x| x.max()).min().unwrap_or(COUNTER_MAX);
        let pool =
            Arc::new(Pool { group: group.clone(), state: Mutex::default(), stats: PoolStats::default() });
        registry.pools.write().unwrap().push(pool.clone());
        rows.push(Row {
            conf: c.clone(),
            id: group.id(),
            parent_id: group.parent().map(|p| p.id()),
            prefix: prefixes[i].clone(),
            path,
            group: Some(group),
            pool: Some(pool),
            state: "online",
            last: Snapshot::default(),
            bar_limit,
            logged_low: false,
            logged_oom: false,
        });
    }

    // One thread per workload.
    let mut workers = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(pattern) = row.conf.workload else { continue };
        let g = row.group.as_ref().expect("online");
        let size = match row.conf.size {
            0 => match g.counter().high().min(g.counter().max()) {
                COUNTER_MAX => 16 << 20,
                limit => limit / 4 * 3 * PAGE,
            },
            pages => pages * PAGE,
        };
        let workload = Workload {
            pool: row.pool.clone().expect("online"),
            objg: g.obj_group().expect("the tree is alive"),
            registry: registry.clone(),
            pattern,
            rate: row.conf.rate,
            size,
            rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name(row.conf.name.clone())
            .spawn(move || workload.run(&flag))
            .expect("spawn a workload thread");
        workers.push(Worker { row: i, stop, handle: Some(handle) });
    }
    let mut offlines: Vec<(Duration, usize)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.conf.offline.map(|p| (total.mul_f64(f64::from(p) / 100.0), i)))
        .collect();
    offlines.sort();

    let mut screen = Screen { tty, drawn: 0, log: VecDeque::new() };
    let cursor = Cursor::hide(tty);
    if !tty {
        println!(
            "chargetree demo: {} groups, {} workload threads, {:.1} s ({source})",
            rows.len(),
            workers.len(),
            args.seconds
        );
    }
    screen.log(Duration::ZERO, format!("{} workloads started ({source})", workers.len()));

    // The live loop: offline what is due, watch for the dying group's free, redraw.
    let frame = if tty { FRAME_TTY } else { FRAME_PLAIN };
    let start = Instant::now();
    let mut next_frame = if tty { Duration::ZERO } else { frame };
    let mut dying: Vec<usize> = Vec::new();
    loop {
        let t = start.elapsed().min(total);
        while offlines.first().is_some_and(|&(at, _)| at <= t) {
            let (_, i) = offlines.remove(0);
            take_offline(i, &mut rows, &mut workers, &registry, &mut screen, t);
            dying.push(i);
        }
        if !dying.is_empty() {
            tree.reclaim();
            dying.retain(|&i| {
                let row = &mut rows[i];
                if !freed.0.lock().unwrap().contains(&row.id) {
                    return true;
                }
                row.state = "freed";
                let parent = row.parent_id.and_then(|p| registry.find(p));
                let msg = format!(
                    "{}: group freed (seen by the observer) while its byte objects live on, charged to {}",
                    row.conf.name,
                    parent.map_or_else(String::new, |p| p.group.name().unwrap_or("?").to_owned())
                );
                screen.log(t, msg);
                false
            });
        }
        note_events(&mut rows, &mut screen, t);
        let running = workers.iter().filter(|w| w.handle.is_some()).count();
        if t >= next_frame || t >= total {
            screen.draw(&rows, t, total, running);
            next_frame += frame;
        }
        if t >= total {
            break;
        }
        let wake = next_frame.min(total).min(offlines.first().map_or(total, |&(at, _)| at));
        thread::sleep(wake.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
    }
    drop(cursor);

    // Stop the threads, free every object, return the per-CPU stocks, and check.
    for w in &mut workers {
        w.stop();
    }
    for pool in registry.pools.read().unwrap().iter() {
        for obj in pool.take_all() {
            pool.release(obj);
        }
    }
    while tree.drain_all(&tree.root()).is_none() {
        thread::yield_now();
    }
    tree.reclaim();
    for &i in &dying {
        if freed.0.lock().unwrap().contains(&rows[i].id) {
            rows[i].state = "freed";
        }
    }

    println!();
    println!("After stopping the threads, freeing every object and draining the per-CPU stocks:");
    let usages: Vec<String> = rows
        .iter()
        .filter_map(|r| r.group.as_ref().map(|g| format!("{} {}", r.conf.name, g.counter().usage())))
        .collect();
    println!("  usage in pages: {}", usages.join(", "));
    for row in &rows {
        if let Some(g) = &row.group {
            assert_eq!(g.counter().usage(), 0, "{}: every charge was returned", row.conf.name);
        }
    }
    println!("  every usage is back to 0");

    print_summary(&rows);
    let stats = tree.stats();
    println!(
        "\nTreeStats: created {}, offlined {}, released {}, freed {}, dying {}, forced {}, \
         ObjGroups created {} / freed {}, stray bytes {}",
        stats.created,
        stats.offlined,
        stats.released,
        stats.freed,
        stats.dying(),
        stats.forced,
        stats.objgroups_created,
        stats.objgroups_freed,
        stats.stray_bytes
    );
    let offlined = rows.iter().filter(|r| r.group.is_none()).count();
    assert_eq!(stats.offlined, offlined, "the groups taken offline");
    assert_eq!((stats.released, stats.freed), (offlined, offlined), "each was released and freed");
    assert_eq!(stats.stray_bytes, 0, "every byte object was uncharged with its own size");
    let forced: usize = rows.iter().map(|r| r.snapshot().forced).sum();
    assert_eq!(stats.forced, forced, "every forced charge was a critical allocation");

    // The reclaimer (inside the tree) holds the pools, which hold group handles: let them go
    // before the tree, so that dropping the tree frees every group.
    registry.pools.write().unwrap().clear();
    drop(rows);
    drop(tree);
}

/// Takes row `i`'s group offline mid-run: its thread stops, its pages are freed, its byte
/// objects are handed to the parent's pool (they outlive the job), and the group goes
/// offline, which reparents its `ObjGroup` to the parent.
fn take_offline(
    i: usize,
    rows: &mut [Row],
    workers: &mut [Worker],
    registry: &Registry,
    screen: &mut Screen,
    t: Duration,
) {
    if let Some(w) = workers.iter_mut().find(|w| w.row == i) {
        w.stop();
    }
    let row = &mut rows[i];
    let (Some(group), Some(pool)) = (row.group.take(), row.pool.take()) else { return };
    let parent = group.parent().expect("not the root");
    let parent_pool = registry.find(parent.id()).expect("every group has a pool");
    let (mut pages, mut kept, mut kept_bytes) = (0, 0, 0);
    for obj in pool.take_all() {
        if obj.objg.is_some() {
            kept += 1;
            kept_bytes += obj.bytes;
            parent_pool.push(obj, false);
        } else {
            pages += obj.bytes / PAGE;
            pool.release(obj);
        }
    }
    row.last = snapshot(&group, &pool);
    group.offline().expect("a leaf goes offline");
    let objg = group.obj_group().expect("the tree is alive");
    assert!(objg.group().ptr_eq(&parent), "an offline group's objects charge its parent");
    drop(objg);
    let residue = group.counter().usage();
    registry.pools.write().unwrap().retain(|p| !Arc::ptr_eq(p, &pool));
    drop((pool, group));
    row.state = "dying";
    screen.log(
        t,
        format!(
            "{}: job done, goes offline; freed its pages ({}); {kept} byte objects ({}) outlive it",
            row.conf.name,
            human_pages(pages),
            human_bytes(kept_bytes as u128)
        ),
    );
    screen.log(
        t,
        format!(
            "{}: its ObjGroup now charges {}; the dying group keeps a residue of {} (freed with it)",
            row.conf.name,
            parent.name().unwrap_or("?"),
            human_pages(residue)
        ),
    );
}

fn print_summary(rows: &[Row]) {
    let label = |row: &Row| match row.conf.workload {
        Some(w) => format!("{}{} ({})", row.prefix, row.conf.name, w.name()),
        None => format!("{}{}", row.prefix, row.conf.name),
    };
    let width = rows.iter().map(|r| label(r).chars().count()).max().unwrap_or(0).max(16);
    println!();
    println!(
        "{} {:>7} {:>8} {:>8} {:>5} {:>5} {:>4} {:>4} {:>9} {:>8} {:>6} {:>9} {:>8}",
        pad("group (workload)", width),
        "state",
        "peak",
        "failcnt",
        "max",
        "high",
        "low",
        "oom",
        "charges",
        "refused",
        "forced",
        "reclaimed",
        "restarts"
    );
    for row in rows {
        let s = row.snapshot();
        let name = pad(&label(row), width);
        let (ok, refused, forced, reclaimed, restarts) = if row.conf.workload.is_some() {
            (
                s.ok.to_string(),
                s.refused.to_string(),
                s.forced.to_string(),
                human_bytes(s.reclaimed_bytes as u128),
                if row.conf.workload == Some(Pattern::Leaky) { s.restarts.to_string() } else { "-".into() },
            )
        } else {
            let reclaimed =
                if s.reclaimed_bytes > 0 { human_bytes(s.reclaimed_bytes as u128) } else { "-".into() };
            ("-".into(), "-".into(), "-".into(), reclaimed, "-".into())
        };
        println!(
            "{name} {:>7} {:>8} {:>8} {}  {:>8} {:>8} {:>6} {:>9} {:>8}",
            row.state,
            human_pages(s.peak),
            s.failcnt,
            events_cell(s.events),
            ok,
            refused,
            forced,
            reclaimed,
            restarts
        );
    }
    println!(
        "(events are local: max = the group's own limit refused a charge, high = a charge left it above \
         its high,\n low = reclaimed within its low protection, oom = still refused after reclaim; \
         reclaimed = cache dropped\n by the reclaimer from the group's objects; restarts = a leaky workload \
         was refused and freed everything)"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests (`cargo test --example demo`): the help stays true to the parser.

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys a grammar line of the help names, as `key=`.
    fn grammar_keys(help: &str, kind: &str) -> Vec<String> {
        let mut lines = help.lines().skip_while(|l| !l.trim_start().starts_with(kind));
        let mut text = lines.next().expect("grammar line").to_owned();
        // A `group` grammar line continues on the indented line below it.
        if kind == "group " {
            text.push_str(lines.next().expect("continuation"));
        }
        text.split(['[', ']', ' ']).filter_map(|w| w.split_once('=').map(|(k, _)| k.to_owned())).collect()
    }

    #[test]
    fn the_help_example_parses_and_uses_every_key() {
        let groups = parse_config(HELP_EXAMPLE).unwrap_or_else(|e| panic!("line {}: {}", e.line, e.message));
        assert_eq!(groups.len(), 5);
        assert_eq!(groups[0].name, "host");
        let words: Vec<(&str, &str)> = HELP_EXAMPLE
            .lines()
            .flat_map(|l| {
                let kind = l.split_whitespace().next().unwrap_or("");
                l.split_whitespace().filter_map(move |w| w.split_once('=').map(|(k, _)| (kind, k)))
            })
            .collect();
        for key in ROOT_KEYS {
            assert!(words.contains(&("root", key)), "the example's root line lacks `{key}=`");
        }
        for key in GROUP_KEYS {
            assert!(words.contains(&("group", key)), "no group line of the example has `{key}=`");
        }
        for w in ["workload=steady", "workload=bursty", "workload=leaky"] {
            assert!(HELP_EXAMPLE.contains(w), "the example has no `{w}`");
        }
        assert!(config_help().ends_with(HELP_EXAMPLE));
    }

    #[test]
    fn the_help_grammar_names_exactly_the_parser_keys() {
        let help = config_help();
        assert_eq!(grammar_keys(&help, "root "), ROOT_KEYS);
        assert_eq!(grammar_keys(&help, "group "), GROUP_KEYS);
        // The described terms: the first column of the indented lines (`max, high  ...`).
        let terms: Vec<&str> = help
            .lines()
            .filter(|l| l.starts_with("  "))
            .flat_map(|l| l.trim_start().split("  ").next().unwrap_or("").split(", "))
            .collect();
        for key in ROOT_KEYS.iter().chain(&GROUP_KEYS).filter(|&&k| k != "name" && k != "parent") {
            assert!(terms.contains(key), "the help does not describe `{key}`");
        }
        assert!(help.contains(&format!("at most {MAX_GROUPS} groups")));
    }

    #[test]
    fn keys_outside_the_lists_are_refused() {
        let e = parse_config("root maxx=1M\n").unwrap_err();
        assert_eq!(e.message, "unknown key `maxx` for `root` (name, max, high)");
        let e = parse_config("group a parent=machine maxx=1M workload=steady\n").unwrap_err();
        assert!(e.message.starts_with("unknown key `maxx` (parent, max,"), "{}", e.message);
    }

    #[test]
    fn the_built_in_setup_and_the_example_file_parse() {
        for (name, text) in [("built-in", DEFAULT_CONFIG), ("examples/demo.conf", include_str!("demo.conf"))]
        {
            if let Err(e) = parse_config(text) {
                panic!("{name}:{}: {}", e.line, e.message);
            }
        }
    }
}
