//! What a group costs in bytes: the layout guards of the performance issue's footprint
//! target (≤ 512 heap bytes per group at the default configuration, `examples/scale.rs`).

use core::mem::{align_of, size_of};

use crate::counter::Counter;
use crate::cpu::DefaultCpus;
use crate::groups::node::Node;
use crate::padded::LinePadded;
use crate::stock::STOCK_SLOTS;

/// The counter is three cache lines (Linux's `page_counter` layout): the line charges write,
/// the protection and peak line, the read-mostly line. A field added to a full line would
/// silently add a fourth.
#[test]
fn a_counter_is_three_lines() {
    let line = align_of::<LinePadded<u8>>();
    assert_eq!(size_of::<Counter<'static>>(), 3 * line, "line = {line}");
}

/// A group's node on x86-64: 192 bytes of counter and at most 192 of everything else, six
/// lines in all; with its reference-count shards (8 classes × 8 bytes at the default) a group
/// costs 448 heap bytes. A word added to the node adds a line.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_group_node_is_six_lines_on_x86_64() {
    let node = size_of::<Node<DefaultCpus, STOCK_SLOTS>>();
    assert!(node <= 384, "a group's node is {node} bytes");
}
