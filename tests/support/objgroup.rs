//! Helpers of the object-group chapters (`tests/objgroup_*.rs`): trees with impersonated
//! CPUs, a unit size and a logging observer; byte and object charges on a given CPU; the
//! cached and parked bytes of an `ObjGroup`, and the O1 check.

use super::{Log, Obs, on};

use core::ptr::NonNull;
use std::sync::Arc;

use chargetree::cpu::{CpuProvider, TestCpus};
use chargetree::group::{Group, GroupSpec, Tree, TreeConfig};
use chargetree::objgroup::ObjGroup;

/// Bytes per unit in the rule tests.
pub(crate) const UNIT: usize = 100;

/// Charges `n` bytes through `o` on CPU `cpu`; the charge must succeed.
#[track_caller]
pub(crate) fn charge<P: CpuProvider, const K: usize>(cpu: usize, o: &ObjGroup<P, K>, n: usize) {
    let r = on(cpu, || o.charge_bytes(n));
    assert!(r.is_ok(), "charge {n} bytes on CPU {cpu}: {r:?}");
}

/// Uncharges `n` bytes through `o` on CPU `cpu`.
pub(crate) fn uncharge<P: CpuProvider, const K: usize>(cpu: usize, o: &ObjGroup<P, K>, n: usize) {
    on(cpu, || o.uncharge_bytes(n));
}

/// Charges an object of `n` bytes through `o` on CPU `cpu` with `charge_object` (the charge
/// must succeed) and returns the object's reference.
#[track_caller]
pub(crate) fn charge_obj(cpu: usize, o: &ObjGroup<TestCpus>, n: usize) -> NonNull<()> {
    let r = on(cpu, || o.charge_object(n));
    match r {
        Ok(c) => c.object,
        Err(e) => panic!("charge an object of {n} bytes on CPU {cpu}: {e:?}"),
    }
}

/// Gives back an object of `n` bytes on CPU `cpu` with `uncharge_object`.
///
/// # Safety
///
/// `object` came from [`charge_obj`] (or `into_raw`) on a `TestCpus` tree's `ObjGroup`
/// and is given back once.
pub(crate) unsafe fn uncharge_obj(cpu: usize, object: NonNull<()>, n: usize) {
    // SAFETY: the caller's obligation.
    on(cpu, || unsafe { ObjGroup::<TestCpus>::uncharge_object(object, n) });
}

/// A tree with `cpus` impersonated CPUs, `unit` bytes per unit and the default unit stock.
pub(crate) fn tree_on(cpus: usize, unit: usize) -> (Tree<TestCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(cpus)).unit_bytes(unit).observer(Obs(log.clone())),
    );
    (tree, log)
}

/// A tree with `cpus` impersonated CPUs, units of [`UNIT`] bytes and no unit stock, so that
/// every unit charged through an `ObjGroup` shows in the counters.
pub(crate) fn exact_tree(cpus: usize) -> (Tree<TestCpus>, Arc<Log>) {
    let log = Arc::new(Log::default());
    let tree = Tree::with_config(
        TreeConfig::with_cpus(TestCpus::new(cpus)).unit_bytes(UNIT).batch(0).observer(Obs(log.clone())),
    );
    (tree, log)
}

pub(crate) fn child<P: CpuProvider, const K: usize>(parent: &Group<P, K>) -> Group<P, K> {
    parent.create_child(GroupSpec::new()).unwrap()
}

pub(crate) fn usage<P: CpuProvider, const K: usize>(g: &Group<P, K>) -> usize {
    g.counter().usage()
}

/// `(cached, parked)` bytes of an `ObjGroup`.
pub(crate) fn bytes<P: CpuProvider, const K: usize>(o: &ObjGroup<P, K>) -> (usize, usize) {
    (o.cached_bytes(), o.parked_bytes())
}

/// O1 at quiescence: unit × units charged through `o` = object bytes + stocked + parked.
#[track_caller]
pub(crate) fn assert_o1(group: &Group<TestCpus>, o: &ObjGroup<TestCpus>, object_bytes: usize, unit: usize) {
    let charged_units = group.counter().usage() - group.cached_units();
    assert_eq!(
        charged_units * unit,
        object_bytes + o.cached_bytes() + o.parked_bytes(),
        "O1: whole units charged = object bytes + stocked bytes + parked bytes"
    );
}
