// The counter of a borrowed group pointer lives no longer than the guard.
use chargetree::group::{OwnerCell, Tree};

fn main() {
    let tree = Tree::new();
    let cell = OwnerCell::new(tree.root());
    let counter = {
        let guard = tree.pin();
        let borrowed = cell.load(&guard).unwrap();
        borrowed.counter()
    };
    let _ = counter.usage();
}
