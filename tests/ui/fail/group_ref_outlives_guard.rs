// A group pointer borrowed from an owner cell is valid only while the guard is pinned.
use chargetree::group::{OwnerCell, Tree};

fn main() {
    let tree = Tree::new();
    let cell = OwnerCell::new(tree.root());
    let borrowed = {
        let guard = tree.pin();
        cell.load(&guard).unwrap()
    };
    let _ = borrowed.id();
}
