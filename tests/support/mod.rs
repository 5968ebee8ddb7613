//! Helpers shared by the chapter files of the black-box tests (`tests/counter_*.rs`,
//! `tests/group_*.rs`, `tests/engine_*.rs`, `tests/objgroup_*.rs`), each of which includes
//! this module with `mod support;`: here what all of them use (miri scaling, CPU
//! impersonation, the logging [`Observer`], the final "freed exactly once" check, a
//! deterministic PRNG), and in `counter.rs`, `group.rs`, `engine.rs` and `objgroup.rs` what
//! the chapters of one topic share.
//!
//! Every chapter compiles all of it and uses a part, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub(crate) mod counter;
pub(crate) mod engine;
pub(crate) mod group;
pub(crate) mod objgroup;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chargetree::cpu::{CpuProvider, TestCpus};
use chargetree::group::{GroupId, Observer, Tree};

/// Iterations of the loops and threaded tests (small under miri).
pub(crate) const fn scaled(n: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { n }
}

/// A CPU index `TestCpus` maps to "no CPU" (the stocks are bypassed).
pub(crate) const NO_CPU: usize = usize::MAX;

/// Runs `f` on impersonated CPU `cpu`.
pub(crate) fn on<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    // SAFETY: the tests here never run two threads on one impersonated CPU at once (each
    // thread of a threaded test is given a CPU of its own).
    unsafe { TestCpus::run_on(cpu, f) }
}

/// What an [`Observer`] saw happen to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Released,
    Freed,
}

/// Everything the observer saw, in order.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) events: Mutex<Vec<(Ev, GroupId)>>,
}

impl Log {
    pub(crate) fn push(&self, ev: Ev, id: GroupId) {
        self.events.lock().unwrap().push((ev, id));
    }

    pub(crate) fn count(&self, ev: Ev, id: GroupId) -> usize {
        self.events.lock().unwrap().iter().filter(|&&e| e == (ev, id)).count()
    }

    pub(crate) fn released(&self, id: GroupId) -> usize {
        self.count(Ev::Released, id)
    }

    pub(crate) fn freed(&self, id: GroupId) -> usize {
        self.count(Ev::Freed, id)
    }

    pub(crate) fn total(&self, ev: Ev) -> usize {
        self.events.lock().unwrap().iter().filter(|e| e.0 == ev).count()
    }

    pub(crate) fn is_freed(&self, id: GroupId) -> bool {
        self.freed(id) > 0
    }

    /// Position of an event in the log.
    pub(crate) fn position(&self, ev: Ev, id: GroupId) -> Option<usize> {
        self.events.lock().unwrap().iter().position(|&e| e == (ev, id))
    }

    /// Ids freed, in order.
    pub(crate) fn freed_ids(&self) -> Vec<GroupId> {
        self.events.lock().unwrap().iter().filter(|e| e.0 == Ev::Freed).map(|e| e.1).collect()
    }

    /// No group released or freed twice; every free comes after its release.
    #[track_caller]
    pub(crate) fn check(&self) {
        let events = self.events.lock().unwrap();
        let mut released = HashSet::new();
        let mut freed = HashSet::new();
        for &(ev, id) in events.iter() {
            match ev {
                Ev::Released => assert!(released.insert(id), "{id} released twice: {events:?}"),
                Ev::Freed => {
                    assert!(released.contains(&id), "{id} freed before its release: {events:?}");
                    assert!(freed.insert(id), "{id} freed twice: {events:?}");
                }
            }
        }
    }
}

/// The observer that fills a [`Log`].
pub(crate) struct Obs(pub(crate) Arc<Log>);

impl Observer for Obs {
    fn released(&self, id: GroupId) {
        self.0.push(Ev::Released, id);
    }
    fn freed(&self, id: GroupId) {
        self.0.push(Ev::Freed, id);
    }
}

/// Drops the tree (the caller has dropped its handles) and checks that every group it ever
/// created was released and freed exactly once, and that the tree's bookkeeping is gone.
#[track_caller]
pub(crate) fn finish<P: CpuProvider, const K: usize>(tree: Tree<P, K>, log: Arc<Log>) {
    let created = tree.stats().created;
    drop(tree);
    assert_eq!(log.total(Ev::Released), created, "every group released");
    assert_eq!(log.total(Ev::Freed), created, "every group freed");
    log.check();
    assert_eq!(Arc::strong_count(&log), 1, "the tree's bookkeeping (and observer) was freed");
}

/// xorshift64*: deterministic, no dependencies, so failures reproduce from the seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `p` percent.
    pub(crate) fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}
