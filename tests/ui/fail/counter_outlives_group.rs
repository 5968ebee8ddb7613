// A group's counter is borrowed from the handle: it cannot be kept after the handle is gone.
use chargetree::group::{GroupSpec, Tree};

fn main() {
    let tree = Tree::new();
    let counter = {
        let group = tree.root().create_child(GroupSpec::new()).unwrap();
        group.counter()
    };
    let _ = counter.usage();
}
