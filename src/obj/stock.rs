//! The object stock (Linux's `obj_stock_pcp`): per CPU, one cached `ObjGroup`, the bytes it
//! has charged but not handed out, and spare references on it for objects (see
//! [`OBJ_REF_BATCH`]), on the per-CPU slots of protocol S (`stock/slots.rs`). Its slots are
//! separate from the unit stock's, with their own `busy` flags (Linux gives the object stock
//! its own lock), so a byte charge can use the unit stock underneath without seeing itself as
//! a nested context.
//!
//! # Invariants
//!
//! * S6: an occupied object stock owns `1 + refs` references on its `ObjGroup` (its own and
//!   `refs ≤ 2 × OBJ_REF_BATCH` spares for objects); an empty one owns none and has
//!   `refs == 0`. A drain takes the spares with the entry and puts them all at once.
//! * O1 (per `ObjGroup`, at quiescence): `unit × units charged through it = object bytes +
//!   stocked bytes + parked bytes`.

use core::ptr::{self, NonNull};

use super::ObjNode;
use crate::cpu::{CpuProvider, SlotHook};
use crate::fallible::OutOfMemory;
use crate::groups::domain::{Domain, UpperCache};
use crate::groups::node::Node;
use crate::stock::OBJ_REF_BATCH;
use crate::stock::slots::{Held, Payload, PerCpu};
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// One CPU's object stock.
pub(crate) struct ObjEntry<P: CpuProvider, const K: usize> {
    obj: AtomicPtr<ObjNode<P, K>>,
    bytes: AtomicUsize,
    /// Spare references on `obj` beyond the entry's own (S6).
    refs: AtomicUsize,
}

impl<P: CpuProvider, const K: usize> Payload for ObjEntry<P, K> {
    #[inline]
    fn is_empty(&self) -> bool {
        // ORDERING: Relaxed; a racy check, or one made visible by an Acquire load of `busy`.
        self.obj.load(Ordering::Relaxed).is_null()
    }
}

/// An entry taken out of a stock: its `ObjGroup`, the bytes it cached and the references it
/// owned (its own and the spares), all moved to the taker.
struct TakenObj<P: CpuProvider, const K: usize> {
    obj: NonNull<ObjNode<P, K>>,
    bytes: usize,
    refs: usize,
}

/// Every CPU's object stock.
pub(crate) struct ObjStock<P: CpuProvider, const K: usize> {
    cpus: PerCpu<P, ObjEntry<P, K>>,
    unit_bytes: usize,
    /// The tree's domain (for its exit hook), set by `bind`.
    domain: *const Domain<P, K>,
}

// SAFETY: the entries' pointers each own references (sendable like an `ObjGroup`); every
// shared access goes through protocol S; `domain` points at the domain that owns the tree's
// allocation this stock lives in.
unsafe impl<P: CpuProvider, const K: usize> Send for ObjStock<P, K> {}
// SAFETY: see `Send`.
unsafe impl<P: CpuProvider, const K: usize> Sync for ObjStock<P, K> {}

impl<P: CpuProvider, const K: usize> ObjStock<P, K> {
    pub(crate) fn try_new(count: usize, unit_bytes: usize) -> Result<Self, OutOfMemory> {
        let cpus = PerCpu::try_new(count, || ObjEntry {
            obj: AtomicPtr::new(ptr::null_mut()),
            bytes: AtomicUsize::new(0),
            refs: AtomicUsize::new(0),
        })?;
        Ok(Self { cpus, unit_bytes, domain: ptr::null() })
    }

    /// Names the tree's domain (its provider and exit hook).
    ///
    /// # Safety
    ///
    /// The domain outlives the stock, and its exit hook drains this stock's slot.
    pub(crate) unsafe fn bind(me: *mut Self, domain: *const Domain<P, K>) {
        // SAFETY: the caller's promise: `me` is the stock's final address, unique for now;
        // the provider lives in the domain, and its pointer is derived from `domain` itself.
        unsafe {
            ptr::addr_of_mut!((*me).domain).write(domain);
            PerCpu::bind(ptr::addr_of_mut!((*me).cpus), ptr::addr_of!((*domain).cpus));
        }
    }

    fn hook(&self) -> &SlotHook {
        // SAFETY: `bind` set the domain, which outlives the stock.
        unsafe { (*self.domain).exit_hook() }
    }

    /// Takes `bytes` for `obj` from this CPU's object stock; with `with_ref`, also one
    /// reference on `obj` for the caller (from the spares, topped up by a batch when
    /// empty). All or nothing.
    #[inline(always)]
    pub(crate) fn consume(
        &self,
        cpu: Option<usize>,
        obj: NonNull<ObjNode<P, K>>,
        bytes: usize,
        with_ref: bool,
    ) -> bool {
        let Some(s) = self.cpus.enter(cpu) else { return false };
        // ORDERING: Relaxed; the stock is held (protocol S).
        if s.obj.load(Ordering::Relaxed) != obj.as_ptr() {
            return false;
        }
        let b = s.bytes.load(Ordering::Relaxed);
        if b < bytes {
            return false;
        }
        s.bytes.store(b - bytes, Ordering::Relaxed);
        if with_ref {
            // ORDERING: Relaxed; the stock is held (protocol S).
            let spare = match s.refs.load(Ordering::Relaxed) {
                0 => {
                    // SAFETY: the entry owns a reference on `obj` (S6) and the stock is held,
                    // so the node is alive and a plain get is legal.
                    unsafe { obj.as_ref() }.refs.get_many(s.cpu(), OBJ_REF_BATCH);
                    OBJ_REF_BATCH
                }
                n => n,
            };
            s.refs.store(spare - 1, Ordering::Relaxed);
        }
        true
    }

    /// Gives `bytes` (already charged to `obj`'s group in whole units) to this CPU's object
    /// stock (Linux's `refill_obj_stock`). A stock caching another `ObjGroup` is flushed
    /// first and re-seeded with `obj`'s parked remainder. With `allow_uncharge`, whole units
    /// beyond the stock's last unit are returned to the group that owns `obj` by then. Without
    /// a usable stock, the bytes are parked in `obj` (whole units uncharged).
    ///
    /// With `give_ref`, the caller also gives up one reference on `obj` (an object's): it is
    /// kept as a spare if this CPU caches `obj` and the bytes fit the fast path, else put
    /// after the bytes are dealt with. Spares above two batches go back to the count, a
    /// batch at a time.
    #[inline(always)]
    pub(crate) fn refill(
        &self,
        cpu: Option<usize>,
        obj: NonNull<ObjNode<P, K>>,
        bytes: usize,
        allow_uncharge: bool,
        give_ref: bool,
    ) {
        // Fast path: this CPU caches `obj` and the bytes stay within a unit (or may exceed
        // it): one add under the stock, as `consume`.
        if let Some(s) = self.cpus.enter(cpu) {
            // ORDERING: Relaxed; the stock is held (protocol S).
            if s.obj.load(Ordering::Relaxed) == obj.as_ptr() {
                let have = s.bytes.load(Ordering::Relaxed);
                if let Some(total) = have.checked_add(bytes) {
                    if !allow_uncharge || total <= self.unit_bytes {
                        s.bytes.store(total, Ordering::Relaxed);
                        let excess = if give_ref { keep_spare(&s) } else { 0 };
                        drop(s);
                        if excess > 0 {
                            // SAFETY: `keep_spare` moved `excess` spare references out of the
                            // entry to us; they keep the node alive until this put.
                            unsafe { ObjNode::put_many(obj, excess) };
                        }
                        return;
                    }
                }
            }
        }
        self.refill_slow(cpu, obj, bytes, allow_uncharge);
        if give_ref {
            // The caller's reference, given up last: until here it kept `obj` alive for the
            // slow path's uses of it after leaving the stock.
            // SAFETY: the caller owns it and gives it up (see above).
            unsafe { ObjNode::put(obj) };
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_slow(
        &self,
        cpu: Option<usize>,
        obj: NonNull<ObjNode<P, K>>,
        bytes: usize,
        allow_uncharge: bool,
    ) {
        // SAFETY: the caller holds a reference on `obj` (a handle or an object's).
        let o = unsafe { obj.as_ref() };
        self.cpus.note_used(cpu);
        let Some(s) = self.cpus.enter(cpu) else { return o.flush_bytes(bytes) };
        // Checked inside the critical section, never before it (see `PerCpu::close`).
        // ORDERING: Relaxed; the stock is held (protocol S).
        if s.obj.load(Ordering::Relaxed) != obj.as_ptr()
            && (s.is_closed() || !s.ensure_exit_hook(self.hook()))
        {
            // The tree is being dropped (or this context's end cannot be watched): do not
            // install a new entry nothing could drain.
            drop(s);
            return o.flush_bytes(bytes);
        }
        let mut allow_uncharge = allow_uncharge;
        let mut old = None;
        // ORDERING: Relaxed; the stock is held (protocol S).
        let cached = s.obj.load(Ordering::Relaxed);
        let mut have = s.bytes.load(Ordering::Relaxed);
        if cached != obj.as_ptr() {
            if let Some(c) = NonNull::new(cached) {
                // ORDERING: Relaxed; the stock is held (protocol S).
                let spare = s.refs.load(Ordering::Relaxed);
                s.refs.store(0, Ordering::Relaxed);
                old = Some(TakenObj { obj: c, bytes: have, refs: 1 + spare });
            }
            // The stock's reference (S6). The caller holds one.
            o.refs.get(s.cpu());
            s.obj.store(obj.as_ptr(), Ordering::Relaxed);
            have = o.take_charged_bytes();
            allow_uncharge = true;
        }
        let unit = self.unit_bytes;
        let (keep, units_out, stray) = match have.checked_add(bytes) {
            Some(total) if allow_uncharge && total > unit => (total % unit, total / unit, 0),
            Some(total) => (total, 0, 0),
            // An absurd uncharge: keep what the stock had, hand the request to the counters.
            None => (have, 0, bytes),
        };
        s.bytes.store(keep, Ordering::Relaxed);
        drop(s);
        give_back(old, false);
        if units_out > 0 {
            o.current_group().uncharge_counted(units_out);
        }
        if stray > 0 {
            o.flush_bytes(stray);
        }
    }

    /// Bytes cached for `obj` in every CPU's object stock (a racy statistic; never
    /// dereferences the cached pointers).
    pub(crate) fn cached_bytes(&self, obj: NonNull<ObjNode<P, K>>) -> usize {
        self.cpus
            .payloads()
            // ORDERING: Relaxed; racy statistic.
            .filter(|e| e.obj.load(Ordering::Relaxed) == obj.as_ptr())
            .map(|e| e.bytes.load(Ordering::Relaxed))
            .fold(0, usize::saturating_add)
    }
}

impl<P: CpuProvider, const K: usize> UpperCache<P, K> for ObjStock<P, K> {
    fn drain_all(&self, root: Option<&Node<P, K>>) {
        loop {
            let r = self.cpus.drain_all(
                |e| !e.is_empty(),
                // SAFETY: the drainer holds the slot.
                |e| take_if(e, |o| root.is_none_or(|r| o.current_group().node().is_descendant_of(r))),
                |t| give_back(t, true),
            );
            if r.is_some() {
                return;
            }
            crate::sync::spin_loop();
        }
    }

    fn drain_local(&self, cpu: Option<usize>) {
        if let Some(s) = self.cpus.enter(cpu) {
            let taken = take_if(&s, |_| true);
            drop(s);
            give_back(taken, false);
        }
    }

    fn drain_own(&self, cpu: usize) {
        let taken = self.cpus.drain_own(cpu, |s| take_if(s, |_| true));
        give_back(taken, true);
    }

    fn close(&self) -> bool {
        self.cpus.close()
    }

    fn is_drained(&self) -> bool {
        self.cpus.is_drained()
    }

    fn unwatch_exits(&self, hook: &SlotHook) {
        self.cpus.unwatch_exits(hook);
    }

    fn barrier_failures(&self) -> usize {
        self.cpus.barrier_failures()
    }
}

/// Empties the object stock `e` if `filter` accepts its cached `ObjGroup`. The caller holds
/// the slot.
fn take_if<P: CpuProvider, const K: usize>(
    e: &ObjEntry<P, K>,
    filter: impl FnOnce(&ObjNode<P, K>) -> bool,
) -> Option<TakenObj<P, K>> {
    // ORDERING: Relaxed; the object stock is held (protocol S).
    let o = NonNull::new(e.obj.load(Ordering::Relaxed))?;
    // SAFETY: the stock owns a reference on `o` and is held, so `o` is alive.
    if !filter(unsafe { o.as_ref() }) {
        return None;
    }
    let bytes = e.bytes.load(Ordering::Relaxed);
    let spare = e.refs.load(Ordering::Relaxed);
    e.obj.store(ptr::null_mut(), Ordering::Relaxed);
    e.bytes.store(0, Ordering::Relaxed);
    e.refs.store(0, Ordering::Relaxed);
    Some(TakenObj { obj: o, bytes, refs: 1 + spare })
}

/// Keeps an object's reference, just given up by the owner, as a spare of the held object
/// stock `s` (which caches that object's `ObjGroup`). Returns how many spares the caller
/// must put now: a batch once more than two are cached (S6), else none.
#[inline(always)]
fn keep_spare<P: CpuProvider, const K: usize>(s: &Held<'_, P, ObjEntry<P, K>>) -> usize {
    // ORDERING: Relaxed; the object stock is held (protocol S).
    let spare = s.refs.load(Ordering::Relaxed) + 1;
    if spare > 2 * OBJ_REF_BATCH {
        s.refs.store(spare - OBJ_REF_BATCH, Ordering::Relaxed);
        OBJ_REF_BATCH
    } else {
        s.refs.store(spare, Ordering::Relaxed);
        0
    }
}

/// Parks the bytes of a taken entry in its `ObjGroup` (whole units uncharged) and puts the
/// entry's references (its own and the spares) at once.
///
/// `remote`: taken by a drainer for another CPU (or for a context that went away), whose
/// whole units go straight to the counters; else by the owner of the calling CPU's slot,
/// whose units may go into its unit stock like any uncharge.
fn give_back<P: CpuProvider, const K: usize>(taken: Option<TakenObj<P, K>>, remote: bool) {
    if let Some(t) = taken {
        // SAFETY: the entry's references were moved to us with it.
        let o = unsafe { t.obj.as_ref() };
        if remote {
            o.flush_bytes_to_counters(t.bytes);
        } else {
            o.flush_bytes(t.bytes);
        }
        // SAFETY: those references, given up.
        unsafe { ObjNode::put_many(t.obj, t.refs) };
    }
}
