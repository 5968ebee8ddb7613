// A guard borrows its tree: the tree cannot be dropped (and its identity reused) while the
// guard is pinned.
use chargetree::group::Tree;

fn main() {
    let tree = Tree::new();
    let guard = tree.pin();
    drop(tree);
    drop(guard);
}
