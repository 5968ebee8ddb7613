// A counter's `ChargeError::Limit` names the refusing counter by reference: it borrows the
// handle the counter came from.
use chargetree::counter::ChargeError;
use chargetree::group::{GroupSpec, Tree};

fn main() {
    let tree = Tree::new();
    let error = {
        let group = tree.root().create_child(GroupSpec::new().max(1)).unwrap();
        group.counter().try_charge(2).unwrap_err()
    };
    if let ChargeError::Limit { at, .. } = error {
        let _ = at.usage();
    }
}
