//! Group tests, chapter 6: randomised multi-threaded stress. Threads create, offline, charge,
//! move and drop groups at random, on impersonated CPUs and on `ThreadCpus`; at the end
//! every counter balances and every group is freed exactly once.
//!
//! Black-box tests of [`chargetree::group`], through the public API only, in chapters:
//! `group_lifecycle.rs` (creation, offline), `group_release.rs` (release and free, tree
//! statistics, the detached mode), `group_references.rs` (reference counts across threads,
//! owner cells and lockless readers), `group_move_charge.rs` (Linux's
//! `mem_cgroup_move_account`), `group_events_and_walks.rs` (events, topology walks) and
//! `group_stress.rs` (random operations from several threads); helpers in `support/`.
//!
//! Every test that asserts "freed exactly once" installs an [`Observer`] that logs each
//! release and free (`Log`) and checks the log for double releases, double frees and frees
//! without a release (`Log::check`). Trees use `TestCpus::new(4)` (deterministic CPU
//! impersonation with `TestCpus::run_on`) or the default `ThreadCpus`. Under miri the loops
//! shrink (`scaled`); see `support/group.rs` for the flags miri needs.
//!
//! [`Observer`]: chargetree::group::Observer

mod support;

use support::group::*;
use support::*;

use core::sync::atomic::{AtomicUsize, Ordering};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;

use chargetree::cpu::CpuProvider;
use chargetree::group::{Group, GroupError, GroupId, GroupSpec, MoveError, OwnerCell, Tree};

// ---------------------------------------------------------------------------------------------
// 9. Randomised multi-threaded stress
// ---------------------------------------------------------------------------------------------

struct Shared<P: CpuProvider> {
    pool: Mutex<Vec<Group<P>>>,
    created: Mutex<Vec<GroupId>>,
    offlined: AtomicUsize,
    /// Successful charges, moves, refused moves (offline target or limit).
    charged: AtomicUsize,
    moved: AtomicUsize,
    refused: AtomicUsize,
}

fn stress<P: CpuProvider>(tree: Tree<P>, log: Arc<Log>, impersonate: bool) {
    const THREADS: usize = 4;
    let ops = scaled(3000, 16);
    let shared = Shared::<P> {
        pool: Mutex::new(Vec::new()),
        created: Mutex::new(vec![tree.root().id()]),
        offlined: AtomicUsize::new(0),
        charged: AtomicUsize::new(0),
        moved: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    };

    let results: Vec<(Vec<Group<P>>, Objs<P>)> = thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (tree, shared) = (&tree, &shared);
                s.spawn(move || {
                    let mut rng = Rng::new(0xC0FFEE + t as u64);
                    let mut handles = vec![tree.root()];
                    let mut objs: Objs<P> = Vec::new();
                    let mut body = || {
                        for _ in 0..ops {
                            stress_op(tree, shared, &mut rng, &mut handles, &mut objs);
                        }
                        flush_thread(tree);
                    };
                    if impersonate {
                        on(t, body)
                    } else {
                        body()
                    }
                    (handles, objs)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut handles, mut objs): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (h, o) in results {
        handles.extend(h);
        objs.extend(o);
    }
    handles.extend(shared.pool.lock().unwrap().drain(..));
    log.check();

    // Usage of every live group = what the objects charged in its subtree hold.
    {
        let guard = tree.pin();
        let owners: Vec<(Group<P>, usize)> = objs.iter().map(|(c, a)| (c.get(&guard).unwrap(), *a)).collect();
        drop(guard);
        let all = tree.groups();
        let walked: HashSet<GroupId> = all.iter().map(|g| g.id()).collect();
        // Offline groups still referenced by an object or a handle are walked too.
        for g in owners.iter().map(|(g, _)| g).chain(handles.iter()) {
            assert!(walked.contains(&g.id()), "{} is referenced, so it is walked", g.id());
        }
        for g in all.iter().chain(handles.iter()) {
            let expected: usize = owners.iter().filter(|(o, _)| o.is_descendant_of(g)).map(|(_, a)| a).sum();
            assert_eq!(g.counter().usage(), expected, "usage of {}", g.id());
            assert_eq!(g.counter().underflows(), 0);
            assert!(!log.is_freed(g.id()));
        }
    }

    // Uncharge everything: every usage is zero.
    for (cell, amount) in objs.drain(..) {
        cell.take().unwrap().counter().uncharge(amount);
    }
    for g in tree.groups() {
        assert_eq!(g.counter().usage(), 0, "{}", g.id());
    }

    let created = shared.created.lock().unwrap().clone();
    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    if !cfg!(miri) {
        // Not vacuous: every kind of operation happened, and succeeded, many times.
        let done = [
            created.len(),
            load(&shared.offlined),
            load(&shared.charged),
            load(&shared.moved),
            load(&shared.refused),
        ];
        assert!(done.iter().all(|&n| n >= 20), "created, offlined, charged, moved, refused: {done:?}");
    }
    let st = tree.stats();
    assert_eq!(st.created, created.len());
    assert_eq!(st.offlined, shared.offlined.load(Ordering::Relaxed));
    assert!(st.freed <= st.released && st.released <= st.offlined);
    assert_eq!(st.dying(), st.offlined - st.released);
    assert_eq!(log.total(Ev::Released), st.released);

    // Offline what is left (children first) and drop every handle: all released.
    for g in tree.groups().iter().rev() {
        if !g.is_root() && g.is_online() {
            g.offline().unwrap();
        }
    }
    drop(handles);
    settle(&tree);
    let st = tree.stats();
    assert_eq!(
        (st.offlined, st.released, st.freed),
        (created.len() - 1, created.len() - 1, created.len() - 1)
    );
    assert_eq!(st.dying(), 0);
    assert_eq!(names(&tree.groups()), ["root"]);

    drop(tree);
    for id in &created {
        assert_eq!((log.released(*id), log.freed(*id)), (1, 1), "{id}");
    }
    assert_eq!(log.total(Ev::Freed), created.len());
    assert_eq!(Arc::strong_count(&log), 1);
    log.check();
}

fn stress_op<P: CpuProvider>(
    tree: &Tree<P>,
    shared: &Shared<P>,
    rng: &mut Rng,
    handles: &mut Vec<Group<P>>,
    objs: &mut Objs<P>,
) {
    if handles.is_empty() {
        handles.push(tree.root());
    }
    let pick = rng.below(handles.len());
    match rng.below(14) {
        // Clone (bounded).
        0 | 1 if handles.len() < 24 => handles.push(handles[pick].clone()),
        0 | 1 => drop(handles.swap_remove(pick)),
        2 => drop(handles.swap_remove(pick)),
        // Create a child, sometimes with a limit.
        3 | 4 => {
            let parent = &handles[pick];
            let spec = match rng.below(3) {
                0 => GroupSpec::new().name("lim").max(200),
                1 => GroupSpec::new().min(50).low(30),
                _ => GroupSpec::new(),
            };
            match parent.create_child(spec) {
                Ok(c) => {
                    shared.created.lock().unwrap().push(c.id());
                    handles.push(c);
                }
                Err(GroupError::ParentOffline) => assert!(!parent.is_online()),
                Err(e) => panic!("create_child: {e:?}"),
            }
        }
        // Offline.
        5 => {
            let g = &handles[pick];
            match g.offline() {
                Ok(()) => {
                    shared.offlined.fetch_add(1, Ordering::Relaxed);
                    assert!(!g.is_online());
                    assert_eq!(g.counter().min(), 0);
                }
                Err(GroupError::Offline) => assert!(!g.is_online()),
                Err(GroupError::Root) => assert!(g.is_root()),
                Err(GroupError::HasOnlineChildren { online_children }) => {
                    assert!(online_children > 0)
                }
                Err(e) => panic!("offline: {e:?}"),
            }
        }
        // Charge a new object.
        6 | 7 => {
            let g = &handles[pick];
            let amount = 1 + rng.below(64);
            if g.counter().try_charge(amount).is_ok() {
                shared.charged.fetch_add(1, Ordering::Relaxed);
                objs.push((OwnerCell::new(g.clone()), amount));
            }
        }
        // Free an object.
        8 if !objs.is_empty() => {
            let (cell, amount) = objs.swap_remove(rng.below(objs.len()));
            cell.take().unwrap().counter().uncharge(amount);
        }
        // Move an object.
        9 | 10 if !objs.is_empty() => {
            let (cell, amount) = &objs[rng.below(objs.len())];
            let to = &handles[pick];
            let counter = match cell.move_charge(to, *amount) {
                Ok(()) => &shared.moved,
                Err(MoveError::TargetOffline) => {
                    assert!(!to.is_online());
                    &shared.refused
                }
                Err(MoveError::Limit { max, .. }) => {
                    assert_eq!(max, 200);
                    &shared.refused
                }
                Err(e) => panic!("move_charge: {e:?}"),
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // A handle from an object, through the guard-protected reader path.
        11 if !objs.is_empty() => {
            let (cell, _) = &objs[rng.below(objs.len())];
            let guard = tree.pin();
            let r = cell.load(&guard).unwrap();
            let g = cell.get(&guard).unwrap();
            assert!(r.is(&g), "no one else writes this cell");
            if let Some(online) = r.tryget_online() {
                handles.push(online);
            }
            drop(guard);
            handles.push(g);
        }
        // Share handles with other threads (dropped or used there).
        12 => {
            let g = handles.swap_remove(pick);
            shared.pool.lock().unwrap().push(g);
        }
        13 => {
            if let Some(g) = shared.pool.lock().unwrap().pop() {
                handles.push(g);
            }
            if let Some(p) = handles[pick.min(handles.len() - 1)].parent() {
                handles.push(p);
            }
        }
        _ => {
            if rng.below(8) == 0 {
                tree.reclaim();
            }
        }
    }
}

#[test]
fn stress_random_operations_balance_test_cpus() {
    let (tree, log) = test_tree();
    stress(tree, log, true);
}

#[test]
fn stress_random_operations_balance_thread_cpus() {
    let (tree, log) = thread_tree();
    stress(tree, log, false);
}
