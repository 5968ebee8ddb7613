// The compiling twins of the compile-fail cases: every borrow used while its owner lives,
// and the owned ways to keep something longer.
use chargetree::counter::{ChargeError, Counter, PeakWatcher};
use chargetree::group::{GroupSpec, OwnerCell, Tree};

fn main() {
    let tree = Tree::new();
    let child = tree.root().create_child(GroupSpec::new().name("tenant").max(1)).unwrap();

    // Counter, parent, ancestors and errors: used while `child` lives.
    let counter = child.counter();
    assert_eq!(counter.parent().unwrap().usage(), 0);
    assert_eq!(counter.ancestors_and_self().count(), 2);
    match counter.try_charge(2) {
        Err(ChargeError::Limit { at, level: 0 }) => assert_eq!(at.max(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(child.name(), Some("tenant"));

    // To keep the parent, keep a handle.
    let parent = child.parent().unwrap();
    drop(child);
    assert_eq!(parent.counter().usage(), 0);

    // Borrowed pointers under a guard; a durable handle with `tryget`.
    let cell = OwnerCell::new(parent.clone());
    let held = {
        let guard = tree.pin();
        let borrowed = cell.load(&guard).unwrap();
        assert_eq!(borrowed.counter().usage(), 0);
        borrowed.tryget().unwrap()
    };
    assert!(held.is_root());

    // A participant and its guard, dropped before the tree.
    let participant = tree.register();
    drop(participant.pin());
    drop(participant);

    // Counters and watchers on the stack.
    let root = Counter::new_root();
    let leaf = Counter::new(Some(&root));
    let watcher = core::pin::pin!(PeakWatcher::new(&leaf));
    leaf.charge(3).unwrap();
    watcher.as_ref().reset();
    assert_eq!(watcher.read(), 3);
    leaf.uncharge(3);
    drop(cell);
    drop((held, parent));
    drop(tree);
}
