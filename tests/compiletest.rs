//! Compile-fail tests of `#[derive(Event)]`: each case in `tests/ui/` must be
//! refused with the message in its `.stderr`, pointing at the offending span.
//! Regenerate the expectations with `TRYBUILD=overwrite cargo test --test compiletest`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
