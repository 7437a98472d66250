//! Demos of tidings that serve HTTP; see `examples/`. This crate is never
//! published: it keeps web crates out of every build of tidings.

pub mod shop;
