//! A group's offline, the one lifecycle step that crosses layers, run from the top and
//! calling down (Linux's `css_offline` → `mem_cgroup_css_offline`):
//!
//! 1. under the topology flag, pinned: the group layer's step ([`Node::offline_locked`]:
//!    refuse the root, a second offline, online children; zero the protection; mark the
//!    node offline), then the object layer's (reparent the group's `ObjGroup`s to the parent,
//!    take its active one away: `memcg_reparent_objcgs`);
//! 2. after the flag, still pinned: the object layer waits for the readers of the
//!    reparented `ObjGroup`s (protocol R) and kills the active one's base reference;
//! 3. the group layer kills the node's reference count, dropping the base reference;
//! 4. the unit stock gives back the entries that cache this group (Linux's
//!    `drain_all_stock`), on the CPUs that cache it only;
//! 5. once [`OFFLINE_PUMP_BATCH`] released objects (groups and `ObjGroup`s, this one's
//!    included once its handles are gone) await freeing, reclamation frees them all.
//!
//! Step 5 is batched because a reclamation round costs what the epoch collector charges for
//! sealing a bag (about 2,300 instructions, a 2 KiB copy and an allocation): on every offline
//! it was two thirds of the offline's cost. What waits lives on the tree's released list, not
//! in a thread's private bag, so any later pump ([`Tree::reclaim`](crate::group::Tree::reclaim),
//! the tree's drop, the next batch) frees it, whichever thread runs it.

use core::ptr::NonNull;

use crate::cpu::CpuProvider;
use crate::groups::node::Node;
use crate::groups::{Group, GroupError, reclaim_orphans};
use crate::obj::{self, Reparented};

/// [`Group::offline`] frees what its tree released (groups and `ObjGroup`s whose last
/// reference is gone) once at least this many await freeing: after an offline fewer than this
/// many wait (unless a thread pinned elsewhere holds the collector back). A handle's last drop
/// only queues its group; [`Tree::reclaim`](crate::group::Tree::reclaim) and the tree's drop
/// free everything queued.
pub const OFFLINE_PUMP_BATCH: usize = 32;

impl<P: CpuProvider, const K: usize> Group<P, K> {
    /// Takes the group offline: no new children, no `tryget_online`, `min`/`low` zeroed, its
    /// `ObjGroup`s reparented to the parent, the base reference dropped, the stock entries
    /// caching it given back. Refused for the root, for a group already offline, and for a
    /// group with online children. Frees what the tree released before, in batches of
    /// [`OFFLINE_PUMP_BATCH`].
    pub fn offline(&self) -> Result<(), GroupError> {
        reclaim_orphans();
        let this = self.node_ptr();
        let node = self.node();
        let domain = node.domain();
        let parent = node.parent.ok_or(GroupError::Root)?;
        // Pinned until the reparented `ObjGroup`s' readers are waited for: none of them can
        // be freed meanwhile (their frees go through the epoch).
        let guard = domain.pin_internal();
        let reparented = {
            let _topology = domain.topology.lock();
            // SAFETY: the flag is held; this handle holds a reference.
            unsafe { node.offline_locked() }?;
            // SAFETY: the flag is held; this handle holds a reference on the node, which
            // holds one on its parent; we are pinned.
            unsafe { obj::reparent_locked(this, parent) }
        };
        // SAFETY: from `reparent_locked` on this node, pinned since.
        unsafe { obj::finish_reparent(this, reparented) };
        drop(guard);
        Node::finish_offline(this);
        // Stocks release their references to the dying group (Linux's css_offline calls
        // drain_all_stock). A CPU inside a stock operation at that moment keeps its entry
        // until its next eviction or drain.
        domain.drain_node(node);
        if domain.awaiting_free() >= OFFLINE_PUMP_BATCH {
            let _ = domain.reclaim_pumped();
        }
        Ok(())
    }
}

/// The root's offline, at the tree's drop (after every other group's): marks it offline,
/// kills its `ObjGroup`'s reference and then its own base reference.
pub(super) fn offline_root<P: CpuProvider, const K: usize>(root: NonNull<Node<P, K>>) {
    // SAFETY: the root's base reference is owned by the tree handle, which is being dropped.
    let node = unsafe { root.as_ref() };
    {
        let _topology = node.domain().topology.lock();
        node.mark_offline();
    }
    let active = obj::take_active(root);
    // SAFETY: nothing was reparented; the active `ObjGroup` was just taken from the root,
    // which the tree's base reference keeps alive.
    unsafe { obj::finish_reparent(root, Reparented::active_only(active)) };
    Node::finish_offline(root);
}
