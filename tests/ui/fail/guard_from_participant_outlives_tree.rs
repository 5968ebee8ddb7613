// A guard pinned through a participant borrows the tree too.
use chargetree::group::Tree;

fn main() {
    let tree = Tree::new();
    let guard = {
        let participant = tree.register();
        participant.pin()
    };
    drop(tree);
    drop(guard);
}
