//! Per-group event counters, local and hierarchical (cgroup2's `memory.events.local` and
//! `memory.events`).

use core::fmt;

use crate::sync::atomic::{AtomicUsize, Ordering};

/// An event raised on a group.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A group below its effective `low` was reclaimed anyway (soft protection broken).
    Low,
    /// A charge left the group above its `high`.
    High,
    /// A charge hit the group's `max` (raised on the failing ancestor, once per charge).
    Max,
    /// A charge failed after reclaim and retries (or was forced past `max`).
    Oom,
}

impl Event {
    /// Every event, in a fixed order.
    pub const ALL: [Event; 4] = [Event::Low, Event::High, Event::Max, Event::Oom];

    #[inline]
    const fn index(self) -> usize {
        match self {
            Event::Low => 0,
            Event::High => 1,
            Event::Max => 2,
            Event::Oom => 3,
        }
    }
}

/// A snapshot of event counts. Each field is read separately (not one atomic snapshot).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventCounts {
    /// [`Event::Low`] count.
    pub low: usize,
    /// [`Event::High`] count.
    pub high: usize,
    /// [`Event::Max`] count.
    pub max: usize,
    /// [`Event::Oom`] count.
    pub oom: usize,
}

impl EventCounts {
    /// The count of one event.
    #[must_use]
    pub fn get(&self, event: Event) -> usize {
        match event {
            Event::Low => self.low,
            Event::High => self.high,
            Event::Max => self.max,
            Event::Oom => self.oom,
        }
    }
}

impl fmt::Display for EventCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "low {} high {} max {} oom {}", self.low, self.high, self.max, self.oom)
    }
}

/// The counters of one group: `local` counts events raised on this group, `hier` those
/// raised on it or any descendant.
#[derive(Default)]
pub(crate) struct Events {
    local: [AtomicUsize; 4],
    hier: [AtomicUsize; 4],
}

impl Events {
    /// Counts one event raised on this group (local and hierarchical).
    #[inline]
    pub(crate) fn raise_local(&self, event: Event) {
        // ORDERING: Relaxed; monotonic statistics, no data is published through them.
        self.local[event.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one event raised on this group or a descendant (hierarchical only).
    #[inline]
    pub(crate) fn raise_hier(&self, event: Event) {
        // ORDERING: Relaxed; statistics.
        self.hier[event.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn local(&self) -> EventCounts {
        snapshot(&self.local)
    }

    pub(crate) fn hierarchical(&self) -> EventCounts {
        snapshot(&self.hier)
    }
}

fn snapshot(c: &[AtomicUsize; 4]) -> EventCounts {
    // ORDERING: Relaxed; statistics, each read on its own.
    let r = |e: Event| c[e.index()].load(Ordering::Relaxed);
    EventCounts { low: r(Event::Low), high: r(Event::High), max: r(Event::Max), oom: r(Event::Oom) }
}
