// A participant is one execution context's: it cannot move to another thread.
use chargetree::group::Tree;

fn main() {
    let tree = Tree::new();
    let participant = tree.register();
    std::thread::scope(|s| {
        s.spawn(move || drop(participant.pin()));
    });
}
