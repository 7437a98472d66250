//! Nothing here: the checks are the tests, `tests/compile_fail.rs` (the
//! cases in `tests/ui/`) and `tests/layers.rs`.
