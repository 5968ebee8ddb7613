// A borrowed group pointer is only valid under its thread's guard: it cannot be sent to
// another thread.
use chargetree::group::{OwnerCell, Tree};

fn main() {
    let tree = Tree::new();
    let cell = OwnerCell::new(tree.root());
    let guard = tree.pin();
    let borrowed = cell.load(&guard).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || borrowed.id());
    });
}
