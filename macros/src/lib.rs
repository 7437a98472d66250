//! Implementation detail of [tidings](https://docs.rs/tidings): the
//! `#[derive(Event)]` macro. Use it through `tidings::Event`; this crate's
//! API is not stable on its own.

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod attr;
mod expand;
mod name;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `tidings::Event`: gives the type its topic.
///
/// `#[event(topic = "orders.created")]` names the topic; without it the topic
/// is the type's name in snake_case (`OrderCreated` → `order_created`). The
/// topic is checked here, at compile time, against the grammar of
/// `tidings::Topic`. `#[event(crate = "path::to::tidings")]` serves crates that
/// re-export tidings under another path. `#[event(serde)]` makes the type
/// serializable by topic name (it must also derive `serde::Serialize` and
/// `serde::Deserialize`, and tidings' `serde` feature must be on): wildcard
/// subscriptions, dead letters and bridges can then (de)serialize it without
/// naming it.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
