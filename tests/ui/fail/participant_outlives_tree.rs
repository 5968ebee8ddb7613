// A participant borrows its tree, like a guard.
use chargetree::group::Tree;

fn main() {
    let tree = Tree::new();
    let participant = tree.register();
    drop(tree);
    let _guard = participant.pin();
}
