//! Byte-granular object charging (Linux's `obj_cgroup` and object stock, `obj_cgroup_charge()`
//! and `refill_obj_stock()` in `mm/memcontrol.c`).
//!
//! An [`ObjGroup`] stands between objects and their group. Objects hold a reference to the
//! `ObjGroup` (not to the group); the `ObjGroup` points at a group and owns one reference on
//! it. Charges are in bytes: whole units are charged to the group through the unit engine
//! (stock, limits, reclaim), and the sub-unit remainder is parked in this CPU's *object
//! stock* (one cached `ObjGroup` and its bytes per CPU) or, when that stock is flushed, in
//! the `ObjGroup`'s own `nr_charged_bytes`. So for every `ObjGroup` at quiescence:
//!
//! > `unit × units charged through it = object bytes + stocked bytes + nr_charged_bytes`
//!
//! (Linux's O1), and when it is released, its objects are gone and no stock caches it, so
//! `nr_charged_bytes` is a whole number of units, which are then uncharged from the group it
//! points at by then (O2).
//!
//! # Reparenting (Linux's `memcg_reparent_objcgs`)
//!
//! When a group goes offline, every `ObjGroup` on its list (its own active one and those
//! inherited from its removed descendants) is pointed at the parent, and the list is spliced
//! onto the parent's, in one critical section of the tree's topology flag. Each `ObjGroup`'s
//! reference moves with the pointer (get on the parent, put on the dying group), so the
//! dying group is released as soon as its own handles are gone, while objects charged
//! through its `ObjGroup`s live on; their uncharges land on the parent, which already counted
//! those charges hierarchically. The dying group keeps a residue that is never uncharged,
//! and is freed with it (Linux's O3: reparenting moves ownership, not charges).
//!
//! # Protocol R (reader of `ObjGroup → group` vs reparenting)
//!
//! Byte charging runs inside allocators, so it may not pin an epoch. A reader of the group
//! pointer instead announces itself on the `ObjGroup`:
//!
//! | step | reader (`current_group`) | reparenter (`reparent`) |
//! |------|--------------------------|-------------------------|
//! | 1 | `readers.fetch_add(1)` (SeqCst) | `get(parent)`; `old = group.swap(parent)` (SeqCst) |
//! | 2 | `g = group.load()` (SeqCst) | (loom only: `fence(SeqCst)`) |
//! | 3 | `get(g)`: a handle, legal because the `ObjGroup`'s reference on `g` cannot be put yet | wait until `readers == 0` (SeqCst loads), after releasing the topology flag, pinned |
//! | 4 | `readers.fetch_sub(1)` (Release) | `put(old)` |
//!
//! Either the reader's load sees the parent, or the reparenter's wait sees the reader and
//! waits for step 4; so `old` is never put while a reader may still be taking a handle on
//! it. Reader sections are a handful of instructions (the long work happens on the handle,
//! after step 4), so the wait is short; it happens outside the topology flag (the
//! reparenter stays pinned, so the `ObjGroup`s it waits on are not freed meanwhile), so a
//! reader preempted in its section delays only this offline, never other topology changes.
//!
//! # Objects and their references
//!
//! Each live object should own a reference on its `ObjGroup` (so the uncharge finds it).
//! Taking it with a clone costs an atomic read-modify-write per object, and giving it back
//! another: about as much as the byte charge itself costs without them.
//! [`ObjGroup::charge_object`] and [`ObjGroup::uncharge_object`] do both jobs in one visit
//! to the object stock, which also caches spare references (taken
//! [`OBJ_REF_BATCH`](crate::stock::OBJ_REF_BATCH) at a time, at most two batches per CPU,
//! all given back when the stock is drained): in the steady state an object costs no atomic
//! read-modify-write at all. The reference is the same kind [`ObjGroup::into_raw`] returns,
//! so the two styles mix.
//!
//! ```
//! use chargetree::group::{GroupSpec, Tree};
//! use chargetree::objgroup::ObjGroup;
//!
//! let tree = Tree::new();
//! let tenant = tree.root().create_child(GroupSpec::new().max(100)).unwrap();
//! let objs = tenant.obj_group().unwrap();
//! // An allocation of 200 bytes: charge it and store the reference in its header.
//! let header = objs.charge_object(200).unwrap().object;
//! // One 4 KiB unit is charged, plus what this CPU's unit stock pre-charged for later.
//! assert!(tenant.counter().usage() >= 1);
//! // Its free: only the header is needed.
//! // SAFETY: `header` came from `charge_object` on this tree's `ObjGroup`, once.
//! unsafe { <ObjGroup>::uncharge_object(header, 200) };
//! // Draining the stocks returns the cached unit and the spare references.
//! let _ = tree.drain_all(&tenant);
//! assert_eq!(tenant.counter().usage(), 0);
//! assert_eq!(objs.ref_count(), 2); // the handle and the group's own
//! ```

pub use crate::obj::{DEFAULT_UNIT_BYTES, MAX_UNIT_BYTES, ObjGroup, ObjectCharge};
