//! [`GroupName`]: a group's name, owned without allocating, for errors that outlive every
//! borrow.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;

use super::Group;
use super::node::Node;
use crate::cpu::CpuProvider;

/// How to take and give back a reference on a node of one `P` and `K`.
struct NameOps {
    get: unsafe fn(NonNull<()>),
    put: unsafe fn(NonNull<()>),
}

struct NameOpsOf<P, const K: usize>(PhantomData<P>);

impl<P: CpuProvider, const K: usize> NameOpsOf<P, K> {
    const OPS: NameOps = NameOps { get: Self::get, put: Self::put };

    /// # Safety
    ///
    /// `node` is a `Node<P, K>` the caller holds a reference on.
    unsafe fn get(node: NonNull<()>) {
        // SAFETY: referenced by the caller, so alive and its count non-zero.
        let n = unsafe { node.cast::<Node<P, K>>().as_ref() };
        n.refs.get(n.hint());
    }

    /// # Safety
    ///
    /// The caller owns a reference on the `Node<P, K>` and gives it up.
    unsafe fn put(node: NonNull<()>) {
        // SAFETY: forwarded.
        unsafe { Node::<P, K>::put(node.cast()) };
    }
}

/// A group's name, owned: it holds a reference on the group (one atomic add, no allocation,
/// so errors made on an allocator path can carry it), and dereferences to `&str`. Cloning
/// takes another reference; dropping gives it back. Compared, hashed and displayed as the
/// string.
///
/// ```
/// use chargetree::group::{GroupSpec, Tree};
///
/// let tree = Tree::new();
/// let g = tree.root().create_child(GroupSpec::new().name("tenant-a").max(10)).unwrap();
/// let err = g.try_charge(100).unwrap_err();
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err.clone());
/// assert!(boxed.to_string().contains("\"tenant-a\""));
/// assert_eq!(err.group_name().map(|n| n.as_str()), Some("tenant-a"));
/// ```
pub struct GroupName {
    node: NonNull<()>,
    name: NonNull<str>,
    ops: &'static NameOps,
}

// SAFETY: the name is an immutable `str` inside a node kept alive by the reference this value
// owns; the reference may be given back on any thread (like a `Group`'s).
unsafe impl Send for GroupName {}
// SAFETY: see `Send`; `&GroupName` only reads the string.
unsafe impl Sync for GroupName {}

impl GroupName {
    /// The name of `group`, if it has one (takes a reference on it).
    #[allow(dead_code)] // the engine names groups by their node
    pub(crate) fn of<P: CpuProvider, const K: usize>(group: &Group<P, K>) -> Option<GroupName> {
        // SAFETY: `group` holds a reference on its node.
        unsafe { Self::of_node(group.node_ptr()) }
    }

    /// The name of the group at `node`, if it has one (takes a reference on it).
    ///
    /// # Safety
    ///
    /// The caller holds a reference on `node` (directly or through a descendant).
    pub(crate) unsafe fn of_node<P: CpuProvider, const K: usize>(
        node: NonNull<Node<P, K>>,
    ) -> Option<GroupName> {
        // SAFETY: referenced by the caller, so alive; the name never changes.
        let name = NonNull::from(unsafe { node.as_ref() }.name()?);
        let ops: &'static NameOps = &NameOpsOf::<P, K>::OPS;
        let node = node.cast::<()>();
        // SAFETY: referenced by the caller.
        unsafe { (ops.get)(node) };
        Some(GroupName { node, name, ops })
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // SAFETY: the node, hence its name (never changed after creation), is kept alive by
        // the reference this value owns.
        unsafe { self.name.as_ref() }
    }
}

impl Deref for GroupName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Clone for GroupName {
    fn clone(&self) -> Self {
        // SAFETY: this value holds a reference on the node.
        unsafe { (self.ops.get)(self.node) };
        GroupName { node: self.node, name: self.name, ops: self.ops }
    }
}

impl Drop for GroupName {
    fn drop(&mut self) {
        // SAFETY: the reference this value owns, given back once.
        unsafe { (self.ops.put)(self.node) };
    }
}

impl PartialEq for GroupName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for GroupName {}

impl PartialEq<str> for GroupName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Hash for GroupName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of units for people: the number with thousands separated, and, when the unit
/// is a known number of bytes, the size in binary units (`1,024 units (4.0 MiB)`).
pub(crate) struct Amount {
    pub(crate) units: usize,
    pub(crate) unit_bytes: usize,
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        grouped(f, self.units)?;
        if self.unit_bytes > 1 {
            f.write_str(if self.units == 1 { " unit (" } else { " units (" })?;
            bytes(f, self.units as u128 * self.unit_bytes as u128)?;
            f.write_str(")")
        } else {
            f.write_str(if self.units == 1 { " byte" } else { " bytes" })
        }
    }
}

/// `1234567` as `1,234,567`.
fn grouped(f: &mut fmt::Formatter<'_>, n: usize) -> fmt::Result {
    if n < 1000 {
        return write!(f, "{n}");
    }
    grouped(f, n / 1000)?;
    write!(f, ",{:03}", n % 1000)
}

/// A byte count in binary units with one decimal (`4.0 MiB`), or exact below a KiB.
fn bytes(f: &mut fmt::Formatter<'_>, n: u128) -> fmt::Result {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return write!(f, "{n} B");
    }
    let mut scale = 1024u128;
    let mut i = 0;
    while i + 1 < UNITS.len() && n >= scale * 1024 {
        scale *= 1024;
        i += 1;
    }
    let tenths = (n * 10 + scale / 2) / scale;
    write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[i])
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Amount;
    use alloc_crate::format;

    #[test]
    fn amounts_read_like_people_write_them() {
        let a = |units, unit_bytes| format!("{}", Amount { units, unit_bytes });
        assert_eq!(a(1, 1), "1 byte");
        assert_eq!(a(1_234_567, 1), "1,234,567 bytes");
        assert_eq!(a(1, 4096), "1 unit (4.0 KiB)");
        assert_eq!(a(256, 4096), "256 units (1.0 MiB)");
        assert_eq!(a(1_000_000, 4096), "1,000,000 units (3.8 GiB)");
        assert_eq!(a(100, 10), "100 units (1000 B)");
        assert_eq!(a(0, 4096), "0 units (0 B)");
    }
}
