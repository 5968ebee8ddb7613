//! Lifetime and thread-safety rules of the public API, checked by the compiler: every
//! reference into a group's node (its counter, the counter's parent and ancestors, a
//! counter's `ChargeError`, a group's name), every borrowed group pointer (`GroupRef`) and
//! every guard or participant fails to compile when it would outlive the handle, guard or
//! tree it came from (`tests/ui/fail/`); their twins that stay within their borrows compile
//! and run (`tests/ui/pass/`). `TestCpus::run_on` cannot be called from safe code.
//!
//! The expected compiler messages are in the `.stderr` files next to each case (made by
//! `TRYBUILD=overwrite cargo test --test compile_fail` on the CI's stable toolchain, whose
//! version `ci/common.sh` pins).

#[test]
#[cfg_attr(miri, ignore = "runs rustc")]
fn lifetimes_and_thread_safety() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
