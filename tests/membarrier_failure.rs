//! A `membarrier(2)` that fails after registration degrades to a safe path instead of
//! aborting. A seccomp filter installed after the first tree makes the system call return
//! `EPERM` (as a sandbox that tightens after start-up would); then remote drains take
//! nothing (they cannot know whether an owner is inside its stock), offline still succeeds,
//! the failure is counted, charges keep working, and dropping the tree neither aborts nor
//! hangs. The test binary holds this one test: the filter applies to the whole process.

#![cfg(target_os = "linux")]

use std::sync::mpsc;
use std::thread;

use chargetree::group::{GroupSpec, Tree};

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;

/// Makes `membarrier` fail with `EPERM` in every thread of the process from now on.
fn forbid_membarrier() {
    // Classic BPF over `struct seccomp_data` (its first field is the system call number).
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const SET_MODE_FILTER: libc::c_long = 1;
    const FLAG_TSYNC: libc::c_long = 1;
    let filter = [
        libc::sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: JEQ_K, jt: 0, jf: 1, k: libc::SYS_membarrier as u32 },
        libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: RET_ERRNO | libc::EPERM as u32 },
        libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: RET_ALLOW },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: plain system calls with valid arguments; `prog` outlives them.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0, "no_new_privs");
        let r =
            libc::syscall(libc::SYS_seccomp, SET_MODE_FILTER, FLAG_TSYNC, &prog as *const libc::sock_fprog);
        assert_eq!(r, 0, "seccomp filter installed");
    }
}

fn membarrier_works() -> bool {
    // SAFETY: a query touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) >= 0 }
}

#[test]
fn a_failing_membarrier_degrades_instead_of_aborting() {
    let tree = Tree::new();
    if !tree.stock_is_asymmetric() {
        eprintln!("membarrier is not available here: nothing to degrade from");
        return;
    }
    let g = tree.root().create_child(GroupSpec::new().max(1000)).unwrap();
    // A thread caches units of `g` in its stock and stays alive (idle) with them.
    let (cached_tx, cached_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let worker = {
        let g = g.clone();
        thread::spawn(move || {
            let _ = g.try_charge(10).unwrap();
            cached_tx.send(g.cached_units()).unwrap();
            exit_rx.recv().unwrap();
            // Charges keep working for an owner whose stock a failed drain left alone.
            let _ = g.try_charge(1).unwrap();
            g.uncharge(11);
        })
    };
    let cached = cached_rx.recv().unwrap();
    assert!(cached > 0, "the worker's stock caches units");

    assert!(membarrier_works());
    forbid_membarrier();
    assert!(!membarrier_works(), "the filter refuses membarrier");

    // A remote drain cannot take the idle worker's entry safely: it takes nothing.
    assert_eq!(tree.drain_all(&g), Some(0));
    assert!(tree.stats().barrier_failures >= 1, "the failure is counted");
    assert_eq!(g.cached_units(), cached, "the entry is untouched");
    let usage = g.counter().usage();
    assert_eq!(usage, 10 + cached);
    // Offline drains too: it succeeds and leaves the entry.
    g.offline().unwrap();
    assert_eq!(g.counter().usage(), usage);

    exit_tx.send(()).unwrap();
    worker.join().unwrap();
    drop(g);
    // Neither aborts nor hangs; what the worker's stock holds stays allocated.
    drop(tree);
}
