// A peak watcher links itself into its counter: it cannot outlive it.
use chargetree::counter::{Counter, PeakWatcher};

fn main() {
    let watcher = {
        let counter = Counter::new_root();
        PeakWatcher::new(&counter)
    };
    let _ = watcher.read();
}
