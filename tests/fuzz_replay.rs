//! Replays the fuzz corpus on stable, without libFuzzer (smallvec's `duplicate_crash` idea,
//! for whole directories).
//!
//! The interpreters of `fuzz/src/` are included here by path, so the fuzz targets and this
//! test run the very same code. Every file of `fuzz/corpus/<target>/` (the committed seed
//! corpus) and of `fuzz/regressions/<target>/` (one file per crash the fuzzer ever found,
//! named after what it found; see `fuzz/regressions/README.md`) goes through the target's
//! `run`, which panics on any invariant violation.
//!
//! The interpreters compare with the sequential reference models, which the library exports
//! behind its `model` feature (on for every test target through the dev-dependency on the
//! package itself, in `Cargo.toml`). The interpreters name them `crate::model`: here the
//! library's module imported under that name, in the fuzz package `chargetree::model`
//! re-exported.
//!
//! A repository test: `fuzz/` is a package of its own and not in the published crate, so
//! `Cargo.toml` leaves this file out of the package too (`cargo package` says it ignores the
//! test), and the packaged crate's `cargo test` runs everything else (`ci/package.sh`).

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// The reference models, as `crate::model` (see the file docs).
use chargetree::model;

// The interpreters refer to their shared decoder as `crate::input`, here as in the fuzz
// package's `src/lib.rs`.
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/input.rs"]
mod input;

#[allow(unreachable_pub)]
#[path = "../fuzz/src/counter_ops.rs"]
mod counter_ops;

#[allow(unreachable_pub)]
#[path = "../fuzz/src/api_ops.rs"]
mod api_ops;

#[allow(unreachable_pub)]
#[path = "../fuzz/src/protection.rs"]
mod protection;

/// The inputs of `target`: the seed corpus and the regressions, sorted, hidden files (the
/// fuzzer's own bookkeeping) skipped. Under miri (which needs `-Zmiri-disable-isolation` to
/// read them) only the regressions and the two smallest corpus inputs: the interpreters
/// check every invariant after every step, which miri runs very slowly.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        let mut found: Vec<PathBuf> = entries
            .map(|e| e.expect("readable directory entry").path())
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        found.sort();
        if cfg!(miri) && dir == "corpus" {
            found.sort_by_key(|p| fs::metadata(p).map_or(0, |m| m.len()));
            found.truncate(2);
        }
        files.extend(found);
    }
    files
}

/// Runs one input, naming the file if it fails.
fn replay_file(path: &Path, run: fn(&[u8])) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| run(&data))) {
        eprintln!("fuzz input {} failed ({} bytes: {:02x?})", path.display(), data.len(), data);
        panic::resume_unwind(payload);
    }
}

/// Runs every input of `target`; there must be some.
fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for fuzz target {target}");
    for f in &files {
        replay_file(f, run);
    }
}

#[test]
fn counter_corpus() {
    replay("counter", counter_ops::run);
}

#[test]
fn api_corpus() {
    replay("api", api_ops::run);
}

#[test]
fn protection_corpus() {
    replay("protection", protection::run);
}

/// Found by the `api` target (`fuzz/regressions/api/objgroup-rounding-overflow`), fixed in
/// `src/objgroup.rs` meanwhile: a byte charge whose rounding up to whole units passes
/// `usize::MAX`, although the units are representable, overflowed computing the sub-unit
/// remainder as `units * unit - bytes` (a panic with overflow checks).
#[test]
fn byte_charge_rounding_up_past_usize_max() {
    use chargetree::cpu::TestCpus;
    use chargetree::group::{GroupSpec, Tree, TreeConfig};

    let unit = 1 << 16;
    let tree = Tree::with_config(TreeConfig::with_cpus(TestCpus::new(1)).unit_bytes(unit));
    let g = tree.root().create_child(GroupSpec::new()).unwrap();
    let o = g.obj_group().unwrap();
    // SAFETY: one thread, one CPU.
    unsafe {
        TestCpus::run_on(0, || {
            // usize::MAX bytes are 2^48 units of 2^16 bytes (far below COUNTER_MAX), one byte
            // of the last unit unused.
            let _ = o.charge_bytes(usize::MAX).unwrap();
            let units = usize::MAX / unit + 1;
            assert_eq!(g.counter().usage() - g.cached_units(), units);
            assert_eq!(o.cached_bytes() + o.parked_bytes(), 1);
            o.uncharge_bytes(usize::MAX);
        })
    };
    let _ = tree.drain_all(&tree.root());
    assert_eq!(g.counter().usage(), 0);
    assert_eq!(tree.stats().stray_bytes, 0);
}

/// Found by the `api` target (`fuzz/regressions/api/engine-gives-up-after-reclaim-made-room`):
/// the engine retried after a reclaim that made room at most `max_retries + 1` times per
/// charge, a budget shared by every level of the hierarchy; once it was spent, room made at a
/// higher level got no further attempt, and the charge failed reporting
/// `usage + requested <= max`. Here, with `max_retries(0)`, the child needs two reclaims and
/// then its parent one. Fixed: each higher failing level gets its own room budget.
#[test]
fn charge_fails_although_reclaim_made_room_at_the_parent() {
    use std::sync::{Arc, Mutex};

    use chargetree::cpu::TestCpus;
    use chargetree::group::{Group, GroupSpec, Reclaimer, Tree, TreeConfig};

    type Objects = Arc<Mutex<Vec<(Group<TestCpus>, usize)>>>;
    /// Frees one object of the over-limit group's subtree per call.
    struct OneAtATime(Objects);
    impl Reclaimer<TestCpus, { chargetree::stock::STOCK_SLOTS }> for OneAtATime {
        fn reclaim(&self, over: &Group<TestCpus>, _amount: usize) -> usize {
            let mut objects = self.0.lock().unwrap();
            let Some(k) = objects.iter().position(|(g, _)| g.is_descendant_of(over)) else { return 0 };
            let (g, n) = objects.remove(k);
            g.counter().uncharge(n);
            n
        }
    }

    let objects: Objects = Arc::default();
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(1))
            .batch(0)
            .max_retries(0)
            .root(GroupSpec::new().max(20))
            .reclaimer(OneAtATime(objects.clone())),
    );
    let a = tree.root().create_child(GroupSpec::new().max(16)).unwrap();
    let b = tree.root().create_child(GroupSpec::new()).unwrap();
    for (g, n) in [(&a, 6), (&a, 6), (&b, 8)] {
        let _ = g.try_charge(n).unwrap();
        objects.lock().unwrap().push((g.clone(), n));
    }
    // a: 12 of 16; root: 20 of 20. Charging 16 to `a` needs both of a's objects freed (two
    // reclaims of `a`, the second making room there), then b's (a reclaim of the root,
    // which makes room too).
    let r = a.try_charge(16);
    assert!(r.is_ok(), "{r:?}");
    assert!(objects.lock().unwrap().is_empty());
    a.uncharge(16);
    assert_eq!(tree.root().counter().usage(), 0);
}

/// The empty input and a few degenerate ones are valid programs for every target.
#[test]
fn degenerate_inputs_are_valid_programs() {
    let inputs: [&[u8]; 5] = [&[], &[0], &[0xff], &[0xff; 64], &[0; 64]];
    for data in inputs {
        counter_ops::run(data);
        api_ops::run(data);
        protection::run(data);
    }
}
