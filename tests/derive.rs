//! `#[derive(Event)]`: topics from the attribute or the type name, generics,
//! enums, and the `crate` path. The refusals are UI tests (`compiletest.rs`).

use tidings::Event;

#[derive(Event)]
#[event(topic = "orders.created")]
struct OrderCreated;

#[derive(Event)]
struct PaymentFailed;

#[derive(Event)]
struct HTTPRequestSeen;

#[derive(Event)]
#[event(topic = "inventory.changed")]
enum InventoryChanged {
    Added { sku: u32 },
    Removed { sku: u32 },
}

#[derive(Event)]
#[event(topic = "wrapped")]
struct Wrapped<T: Send + Sync + 'static>(T);

mod reexport {
    pub use tidings as bus_crate;
}

#[derive(Event)]
#[event(crate = "reexport::bus_crate", topic = "via.reexport")]
struct ViaReexport;

#[derive(Event)]
#[event(topic = "a-b_c.0.x")]
#[event()] // an empty second attribute is harmless
struct EdgeChars;

#[test]
fn topics_come_from_the_attribute_or_the_type_name() {
    assert_eq!(<OrderCreated as Event>::TOPIC, "orders.created");
    assert_eq!(<PaymentFailed as Event>::TOPIC, "payment_failed");
    assert_eq!(<HTTPRequestSeen as Event>::TOPIC, "http_request_seen");
    assert_eq!(<InventoryChanged as Event>::TOPIC, "inventory.changed");
    assert_eq!(<Wrapped<u8> as Event>::TOPIC, "wrapped");
    assert_eq!(<ViaReexport as Event>::TOPIC, "via.reexport");
    assert_eq!(<EdgeChars as Event>::TOPIC, "a-b_c.0.x");
    for change in [
        InventoryChanged::Added { sku: 1 },
        InventoryChanged::Removed { sku: 1 },
    ] {
        let (InventoryChanged::Added { sku } | InventoryChanged::Removed { sku }) = change;
        assert_eq!(sku, 1);
    }
    assert_eq!(Wrapped(3u8).0, 3);
}

#[test]
fn derived_topics_pass_the_runtime_grammar() {
    for topic in [
        <OrderCreated as Event>::TOPIC,
        <PaymentFailed as Event>::TOPIC,
        <HTTPRequestSeen as Event>::TOPIC,
        <EdgeChars as Event>::TOPIC,
    ] {
        tidings::Topic::validate(topic).unwrap_or_else(|e| panic!("{topic}: {e}"));
    }
}
