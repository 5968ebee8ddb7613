//! `TenantAlloc`'s default tenant: threads outside any tenant are charged to it (a test
//! binary of its own: the default is process-wide and set once).

use std::alloc::System;
use std::thread;

use chargetree::alloc::{self, TenantAlloc};
use chargetree::group::{GroupSpec, LazyTree, TreeConfig};

#[global_allocator]
static ALLOCATOR: TenantAlloc<System> = TenantAlloc::new(System);

static TREE: LazyTree = LazyTree::new(TreeConfig::new);

#[test]
fn threads_outside_any_tenant_charge_the_default() {
    let everyone = TREE.root().create_child(GroupSpec::new().name("everyone").max(64)).unwrap();
    let scoped = TREE.root().create_child(GroupSpec::new().name("scoped")).unwrap();
    alloc::set_default_tenant(&everyone.obj_group().unwrap()).unwrap();
    assert!(alloc::set_default_tenant(&scoped.obj_group().unwrap()).is_err(), "set once");

    let outcome = thread::spawn(|| {
        let mut big: Vec<u8> = Vec::new();
        let refused = big.try_reserve_exact(1 << 20).is_err(); // 256 pages > 64
        let small = vec![0u8; 8 * 4096];
        (refused, small)
    })
    .join()
    .unwrap();
    assert!(outcome.0, "the default tenant's limit refused 1 MiB");
    let _ = TREE.drain_all(&everyone);
    assert!(everyone.counter().usage() >= 8, "the thread's block charged the default");
    // A thread inside a tenant charges that one, not the default.
    let o = scoped.obj_group().unwrap();
    let v = thread::spawn(move || {
        let _inside = alloc::enter(&o);
        vec![0u8; 16 * 4096]
    })
    .join()
    .unwrap();
    let _ = TREE.drain_all(&scoped);
    assert!(scoped.counter().usage() >= 16);
    drop((v, outcome));
}
