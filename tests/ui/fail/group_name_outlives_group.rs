// A group's name is borrowed from the handle.
use chargetree::group::{GroupSpec, Tree};

fn main() {
    let tree = Tree::new();
    let name = {
        let group = tree.root().create_child(GroupSpec::new().name("tenant")).unwrap();
        group.name().unwrap()
    };
    let _ = name.len();
}
