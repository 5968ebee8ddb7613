// Walking a group's counter's ancestors borrows the handle too.
use chargetree::group::{GroupSpec, Tree};

fn main() {
    let tree = Tree::new();
    let top = {
        let group = tree.root().create_child(GroupSpec::new()).unwrap();
        group.counter().ancestors_and_self().last().unwrap()
    };
    let _ = top.usage();
}
