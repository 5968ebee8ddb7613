//! The shipped accounting allocators: `TenantAlloc` as this test binary's global allocator,
//! and `GroupAlloc` for one collection.

use std::alloc::{Layout, System};
use std::sync::mpsc;
use std::thread;

use chargetree::alloc::{self, GroupAlloc, TenantAlloc};
use chargetree::group::{Group, GroupSpec, LazyTree, Tree, TreeConfig};
use chargetree::objgroup::ObjGroup;

#[global_allocator]
static ALLOCATOR: TenantAlloc<System> = TenantAlloc::new(System);

/// The tenants of these tests, in a `static` tree (the way an allocator's tenants live).
static TREE: LazyTree = LazyTree::new(TreeConfig::new);

const PAGE: usize = 4096;

fn tenant(name: &str, max_pages: usize) -> (Group, ObjGroup) {
    let g = TREE.root().create_child(GroupSpec::new().name(name).max(max_pages)).unwrap();
    let o = g.obj_group().unwrap();
    (g, o)
}

/// Pages the group's objects really hold: its usage with every stock drained.
fn held(g: &Group) -> usize {
    let _ = TREE.drain_all(g);
    g.counter().usage()
}

#[test]
fn allocations_are_charged_to_the_tenant_and_refused_over_its_limit() {
    let (g, o) = tenant("limited", 256); // 1 MiB
    let refused_before = alloc::stats().refused;
    {
        let _inside = alloc::enter(&o);
        let mut big: Vec<u8> = Vec::new();
        assert!(big.try_reserve_exact(2 << 20).is_err(), "2 MiB is above the tenant's 1 MiB");
        let kept: Vec<u8> = vec![7; 100 * 1024];
        let pages = held(&g);
        assert!((25..=27).contains(&pages), "100 KiB (and the header) charged: {pages} pages");
        drop(kept);
    }
    assert!(alloc::stats().refused > refused_before, "the refusal is counted");
    assert!(held(&g) <= 1, "freed: at most a parked partial page remains");
    assert!(g.counter().failcnt() >= 1);
}

#[test]
fn a_block_freed_on_another_thread_uncharges_the_tenant_it_was_charged_to() {
    let (a, oa) = tenant("sender", 1 << 20);
    let (b, ob) = tenant("receiver", 1 << 20);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let sender = thread::spawn(move || {
        let _inside = alloc::enter(&oa);
        tx.send(vec![1u8; 64 * PAGE]).unwrap();
    });
    sender.join().unwrap();
    let block = rx.recv().unwrap();
    assert!(held(&a) >= 64, "the sender's tenant holds the block");
    let receiver = thread::spawn(move || {
        let _inside = alloc::enter(&ob);
        drop(block);
    });
    receiver.join().unwrap();
    assert!(held(&a) <= 1, "the free uncharged the tenant that was charged");
    assert_eq!(held(&b), 0, "not the freeing thread's tenant");
}

#[test]
fn realloc_charges_only_the_difference_and_keeps_the_owner() {
    let (g, o) = tenant("growing", 300); // 1.17 MiB
    let _inside = alloc::enter(&o);
    // Growing to 1 MiB by pushing reallocates ~20 times; a charge of the whole new size per
    // growth (before the old one is uncharged) would need about 2 MiB at the last step.
    let mut v: Vec<u8> = Vec::new();
    for i in 0..(1 << 20) {
        v.push(i as u8);
    }
    let pages = held(&g);
    let cap_pages = v.capacity().div_ceil(PAGE);
    assert!(pages >= cap_pages && pages <= cap_pages + 2, "{pages} pages for {cap_pages} of capacity");
    v.truncate(10);
    v.shrink_to_fit();
    assert!(held(&g) <= 2, "shrinking uncharges the difference");
    drop(v);
    assert!(held(&g) <= 1);
}

#[test]
fn nested_tenants_restore_the_outer_one() {
    let (a, oa) = tenant("outer", 1 << 20);
    let (b, ob) = tenant("inner", 1 << 20);
    let _outer = alloc::enter(&oa);
    let x = vec![0u8; 16 * PAGE];
    let y = {
        let _inner = alloc::enter(&ob);
        vec![0u8; 32 * PAGE]
    };
    let z = vec![0u8; 8 * PAGE];
    let (ha, hb) = (held(&a), held(&b));
    assert!((24..=26).contains(&ha), "outer holds x and z: {ha}");
    assert!((32..=33).contains(&hb), "inner holds y: {hb}");
    drop((x, y, z));
    assert!(held(&a) <= 1 && held(&b) <= 1);
}

#[test]
fn every_alignment_and_zeroed_memory() {
    let (g, o) = tenant("aligned", 1 << 20);
    let _inside = alloc::enter(&o);
    for align in [1, 8, 16, 64, 4096, 1 << 16] {
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: a non-zero size; given back with the same layout.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "alignment {align} kept");
            assert!(std::slice::from_raw_parts(p, 100).iter().all(|&b| b == 0), "zeroed");
            p.write_bytes(0xAB, 100);
            let q = std::alloc::realloc(p, layout, 5000);
            assert_eq!(q as usize % align, 0, "alignment {align} kept by realloc");
            assert_eq!(*q.add(99), 0xAB, "realloc keeps the data");
            std::alloc::dealloc(q, Layout::from_size_align(5000, align).unwrap());
        }
    }
    assert!(held(&g) <= 1);
}

#[test]
fn threads_outside_any_tenant_are_not_charged() {
    let (g, _o) = tenant("nobody", 1 << 20);
    let v = vec![0u8; 64 * PAGE];
    assert_eq!(held(&g), 0);
    drop(v);
    assert_eq!(alloc::stats().nested, 0, "the accounting never allocated inside the allocator");
}

#[test]
fn tenants_on_many_threads_at_once_balance() {
    let tenants: Vec<(Group, ObjGroup)> = (0..4).map(|i| tenant(&format!("busy-{i}"), 1 << 20)).collect();
    thread::scope(|s| {
        for (_, o) in &tenants {
            s.spawn(move || {
                let _inside = alloc::enter(o);
                for round in 0..200 {
                    let v: Vec<u64> = (0..(round * 37) % 5000).collect();
                    let b = Box::new([round as u8; 16]);
                    drop((v, b));
                }
            });
        }
    });
    for (g, _) in &tenants {
        assert!(held(g) <= 1, "{:?} still holds {}", g.name(), held(g));
    }
}

#[test]
fn group_alloc_charges_one_collection_to_one_group() {
    let tree = Tree::new();
    let g = tree.root().create_child(GroupSpec::new().name("cache").max(4)).unwrap();
    let mut v: allocator_api2::vec::Vec<u64, GroupAlloc> =
        allocator_api2::vec::Vec::new_in(GroupAlloc::new(g.obj_group().unwrap()));
    v.extend(0..1000);
    let _ = tree.drain_all(&g);
    assert_eq!(g.counter().usage(), (v.capacity() * 8).div_ceil(PAGE));
    assert!(v.try_reserve(1 << 20).is_err(), "over the group's 4 pages");
    assert_eq!(v.len(), 1000, "a refused growth leaves the collection intact");
    drop(v);
    let _ = tree.drain_all(&g);
    assert!(g.counter().usage() <= 1);
}
