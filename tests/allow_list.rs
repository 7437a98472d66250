//! The allow-list: what may be published and subscribed, and how refusals read.

use tidings::error::{BuildError, Refusal, SubscribeError, TopicError};
use tidings::{Bus, Event, Overflow, Topic, TopicConfig};

#[derive(Debug, PartialEq, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct AlsoOrderCreated;

#[derive(Debug, PartialEq, Event)]
#[event(topic = "orders.shipped")]
struct OrderShipped {
    id: u64,
}

/// A hand-written impl is not checked by the derive; `build` checks it.
struct Handwritten;
impl Event for Handwritten {
    const TOPIC: &'static str = "Bad Topic";
}

#[test]
fn two_types_one_topic_is_refused_naming_both() {
    let err = Bus::builder()
        .topic::<OrderCreated>()
        .topic::<AlsoOrderCreated>()
        .build()
        .expect_err("two types claim orders.created");
    match &err {
        BuildError::TopicConflict {
            topic,
            first,
            second,
        } => {
            assert_eq!(*topic, "orders.created");
            assert!(first.ends_with("OrderCreated"), "first = {first}");
            assert!(second.ends_with("AlsoOrderCreated"), "second = {second}");
        }
        other => panic!("expected TopicConflict, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("topic `orders.created` is claimed by two types:"),
        "{msg}"
    );
}

#[test]
fn registering_a_type_twice_is_fine_with_the_same_config_only() {
    let bus = Bus::builder()
        .topic::<OrderCreated>()
        .topic::<OrderCreated>()
        .build()
        .expect("same type, same config");
    // Tidings' own topics follow the application's.
    assert_eq!(bus.topics()[0], "orders.created");
    assert!(bus.topics()[1..].iter().all(|t| t.starts_with("tidings.")));

    let err = Bus::builder()
        .topic::<OrderCreated>()
        .topic_with::<OrderCreated>(TopicConfig::default().capacity(8))
        .build()
        .expect_err("same type, different config");
    assert_eq!(
        err,
        BuildError::ConfigConflict {
            topic: "orders.created"
        }
    );
}

#[test]
fn a_handwritten_impl_with_a_bad_topic_is_refused() {
    let err = Bus::builder()
        .topic::<Handwritten>()
        .build()
        .expect_err("bad topic");
    match err {
        BuildError::InvalidTopic { type_name, source } => {
            assert!(type_name.ends_with("Handwritten"), "{type_name}");
            assert!(
                matches!(source, TopicError::BadChar { ch: 'B', at: 0, .. }),
                "{source:?}"
            );
        }
        other => panic!("expected InvalidTopic, got {other:?}"),
    }
}

#[test]
fn zero_capacity_topic_config_is_refused() {
    let err = Bus::builder()
        .topic_with::<OrderCreated>(TopicConfig::default().capacity(0))
        .build()
        .expect_err("capacity 0");
    assert_eq!(
        err,
        BuildError::ZeroCapacity {
            topic: "orders.created"
        }
    );
}

#[tokio::test]
async fn publishing_an_unregistered_type_fails_and_hands_the_event_back() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    assert!(!bus.is_registered::<OrderShipped>());

    let err = bus
        .publish(OrderShipped { id: 7 })
        .await
        .expect_err("not registered");
    assert!(matches!(
        err.reason(),
        Refusal::UnknownTopic {
            topic: "orders.shipped",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "topic `orders.shipped` is not registered on this bus"
    );
    assert_eq!(err.into_inner(), OrderShipped { id: 7 });

    let err = bus
        .try_publish(OrderShipped { id: 8 })
        .expect_err("not registered");
    assert_eq!(err.topic(), "orders.shipped");
    assert_eq!(err.event(), &OrderShipped { id: 8 });

    let err = bus
        .publish_timeout(OrderShipped { id: 9 }, std::time::Duration::from_millis(1))
        .await
        .expect_err("not registered");
    assert_eq!(err.into_inner(), OrderShipped { id: 9 });

    let err = bus.publisher::<OrderShipped>().expect_err("not registered");
    assert_eq!(err.topic, "orders.shipped");
}

#[tokio::test]
async fn subscribing_to_an_unregistered_type_fails_for_every_kind() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let is_unknown = |e: SubscribeError| {
        matches!(
            e,
            SubscribeError::UnknownTopic {
                topic: "orders.shipped"
            }
        )
    };
    assert!(is_unknown(
        bus.subscribe::<OrderShipped>().stream().unwrap_err()
    ));
    assert!(is_unknown(
        bus.subscribe::<OrderShipped>().sync(|_| ()).unwrap_err()
    ));
    assert!(is_unknown(
        bus.subscribe::<OrderShipped>()
            .handler(|_| async {})
            .unwrap_err()
    ));
}

#[tokio::test]
async fn zero_capacity_and_zero_concurrency_are_errors_not_panics() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let err = bus
        .subscribe::<OrderCreated>()
        .capacity(0)
        .stream()
        .unwrap_err();
    assert!(matches!(
        err,
        SubscribeError::ZeroCapacity {
            topic: "orders.created"
        }
    ));
    assert_eq!(
        err.to_string(),
        "subscription to topic `orders.created` asked for capacity 0; a queue needs room for at least one event"
    );
    let err = bus
        .subscribe::<OrderCreated>()
        .concurrency(0)
        .sync(|_| ())
        .unwrap_err();
    assert!(matches!(err, SubscribeError::ZeroConcurrency { .. }));
    // Nothing was left subscribed by the refusals.
    assert!(bus.stats().subscriptions().next().is_none());
}

#[test]
fn an_async_handler_outside_a_runtime_is_an_error() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let err = bus
        .subscribe::<OrderCreated>()
        .handler(|_| async {})
        .unwrap_err();
    assert!(matches!(
        err,
        SubscribeError::NoRuntime {
            topic: "orders.created"
        }
    ));
    assert!(bus.stats().subscriptions().next().is_none());
}

#[test]
fn topic_config_defaults_reach_subscriptions() {
    let bus = Bus::builder()
        .topic_with::<OrderCreated>(
            TopicConfig::default()
                .capacity(16)
                .overflow(Overflow::DropNewest),
        )
        .build()
        .unwrap();
    let sub = bus.subscribe::<OrderCreated>().stream().unwrap();
    let s = sub.stats();
    assert_eq!((s.capacity, s.policy), (16, Overflow::DropNewest));
    let own = bus
        .subscribe::<OrderCreated>()
        .capacity(2)
        .overflow(Overflow::Fail)
        .stream()
        .unwrap();
    let s = own.stats();
    assert_eq!((s.capacity, s.policy), (2, Overflow::Fail));
}

#[test]
fn runtime_topic_parsing_matches_the_grammar() {
    assert_eq!(Topic::parse("a.b-c_d.9").unwrap().as_str(), "a.b-c_d.9");
    assert_eq!(Topic::parse("").unwrap_err(), TopicError::Empty);
    assert!(matches!(
        Topic::validate("a..b"),
        Err(TopicError::EmptySegment { segment: 2, .. })
    ));
    assert!(matches!(
        Topic::validate(&"a".repeat(256)),
        Err(TopicError::TooLong { len: 256 })
    ));
}
