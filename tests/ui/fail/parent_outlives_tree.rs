// The parent of a group's counter is borrowed for as long as the handle's borrow, not for
// 'static: it cannot be read after the handle and the tree are gone.
use chargetree::group::{GroupSpec, Tree};

fn main() {
    let tree = Tree::new();
    let parent = {
        let child = tree.root().create_child(GroupSpec::new()).unwrap();
        child.counter().parent().unwrap()
    };
    drop(tree);
    let _ = parent.usage();
}
