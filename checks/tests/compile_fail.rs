//! Mistakes that must not compile: each case in `tests/ui/` must be refused
//! with the message in its `.stderr`, pointing at the offending span. They
//! cover `#[derive(Event)]` (bad topics, unknown attributes, unions: one
//! error each, no second "not implemented") and the API (a type that is not
//! an event, handler-only settings on a stream).
//!
//! Regenerate the expectations with
//! `TRYBUILD=overwrite cargo test -p tidings-checks --test compile_fail`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
