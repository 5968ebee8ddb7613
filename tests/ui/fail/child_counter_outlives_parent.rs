// A counter borrows its parent.
use chargetree::counter::Counter;

fn main() {
    let child;
    {
        let parent = Counter::new_root();
        child = Counter::new(Some(&parent));
    }
    let _ = child.usage();
}
