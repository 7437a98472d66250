//! Wildcard subscriptions and type-erased, serializable events.

use tidings::error::{DecodeError, SubscribeError};
use tidings::{AnyEvent, Bus, DynEvent, Event, PublishOptions};

#[derive(Debug, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
    total_cents: u64,
}

#[derive(Debug, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created.eu", serde)]
struct EuOrderCreated {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "orders.cancelled")]
struct OrderCancelled {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "payments.failed")]
struct PaymentFailed;

fn bus() -> Bus {
    Bus::builder()
        .topic::<OrderCreated>()
        .topic::<EuOrderCreated>()
        .topic::<OrderCancelled>()
        .topic::<PaymentFailed>()
        .build()
        .unwrap()
}

#[tokio::test]
async fn star_matches_one_segment_and_tail_the_rest() {
    let bus = bus();
    let star = bus.subscribe_pattern("orders.*").stream().unwrap();
    assert_eq!(star.topics(), ["orders.cancelled", "orders.created"]);
    let tail = bus.subscribe_pattern("orders.>").stream().unwrap();
    assert_eq!(
        tail.topics(),
        ["orders.cancelled", "orders.created", "orders.created.eu"]
    );
    let mut every = bus.subscribe_pattern(">").name("audit").stream().unwrap();
    assert!(every.topics().contains(&"tidings.dead_letters"));

    bus.publish(OrderCreated {
        id: 1,
        total_cents: 990,
    })
    .await
    .unwrap();
    bus.publish(PaymentFailed).await.unwrap();
    bus.publish(OrderCancelled { id: 1 }).await.unwrap();
    let mut got: Vec<(&str, u64)> = Vec::new();
    for _ in 0..3 {
        let e: AnyEvent = every.recv().await.unwrap();
        got.push((e.topic(), e.seq()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("orders.cancelled", 1),
            ("orders.created", 1),
            ("payments.failed", 1)
        ]
    );
    // Each part is an ordinary subscription, listed under the name.
    let named = bus
        .stats()
        .subscriptions()
        .filter(|s| s.name == "audit")
        .count();
    assert_eq!(named, bus.topics().len());
    drop(every);
    let named = bus
        .stats()
        .subscriptions()
        .filter(|s| s.name == "audit")
        .count();
    assert_eq!(named, 0, "dropping it unsubscribes every part");
}

#[tokio::test]
async fn erased_events_downcast_back_to_their_type() {
    let bus = bus();
    let mut orders = bus.subscribe_pattern("orders.*").stream().unwrap();
    let receipt = bus
        .publish_with(
            OrderCancelled { id: 9 },
            PublishOptions::new().idempotency_key("c-9"),
        )
        .await
        .unwrap();
    let any = orders.recv().await.unwrap();
    assert!(any.is::<OrderCancelled>() && !any.is::<OrderCreated>());
    assert_eq!((any.id(), any.idempotency_key()), (receipt.id, Some("c-9")));
    assert!(any.type_name().ends_with("OrderCancelled"));
    let any = any
        .downcast::<OrderCreated>()
        .expect_err("not an OrderCreated");
    let typed = any.downcast::<OrderCancelled>().unwrap();
    assert_eq!((typed.id, typed.id()), (9, receipt.id));
}

#[tokio::test]
async fn a_pattern_is_checked_against_the_allow_list_when_subscribing() {
    let bus = bus();
    let err = bus.subscribe_pattern("shipping.*").stream().unwrap_err();
    assert!(matches!(&err, SubscribeError::NoMatch { pattern, .. } if pattern == "shipping.*"));
    assert!(
        err.to_string()
            .starts_with("pattern `shipping.*` matches no topic registered on this bus"),
        "{err}"
    );
    let err = bus.subscribe_pattern("orders.>.eu").stream().unwrap_err();
    assert_eq!(
        err.to_string(),
        "pattern `orders.>.eu` has `>` before its last segment; `>` matches the rest of a topic and must come last"
    );
    let err = bus.subscribe_pattern("Orders.*").stream().unwrap_err();
    assert!(
        err.to_string().starts_with("pattern `Orders.*` is invalid"),
        "{err}"
    );
}

#[tokio::test]
async fn serializable_events_cross_as_bytes_by_topic_name() {
    let bus = bus();
    let mut orders = bus.subscribe_pattern("orders.>").stream().unwrap();
    bus.publish(OrderCreated {
        id: 7,
        total_cents: 1250,
    })
    .await
    .unwrap();
    let any = orders.recv().await.unwrap();
    assert!(any.is_serializable());
    let json = serde_json::to_string(&any).unwrap();
    assert_eq!(json, r#"{"id":7,"total_cents":1250}"#);

    // Back by topic name, through the allow-list, and published again.
    let mut de = serde_json::Deserializer::from_str(&json);
    let event: DynEvent = bus.deserialize_event(any.topic(), &mut de).unwrap();
    assert_eq!(event.topic(), "orders.created");
    let receipt = bus.publish_dyn(event, PublishOptions::new()).await.unwrap();
    assert_eq!(receipt.seq, 2);
    let again = orders.recv().await.unwrap();
    assert_eq!(
        again.downcast_ref::<OrderCreated>(),
        Some(&OrderCreated {
            id: 7,
            total_cents: 1250
        })
    );
}

#[tokio::test]
async fn what_cannot_be_decoded_says_why() {
    let bus = bus();
    let de = |s: &'static str| serde_json::Deserializer::from_str(s);
    let err = bus
        .deserialize_event("shipping.sent", &mut de("{}"))
        .unwrap_err();
    assert!(matches!(err, DecodeError::UnknownTopic { .. }), "{err}");
    let err = bus
        .deserialize_event("orders.cancelled", &mut de("{}"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::NoCodec {
                topic: "orders.cancelled",
                ..
            }
        ),
        "{err}"
    );
    let err = bus
        .deserialize_event("orders.created", &mut de(r#"{"id":"seven"}"#))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Payload {
                topic: "orders.created",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("does not deserialize as"), "{err}");

    // An event type without a codec does not serialize, and says which.
    let mut cancelled = bus.subscribe_pattern("orders.cancelled").stream().unwrap();
    bus.publish(OrderCancelled { id: 1 }).await.unwrap();
    let any = cancelled.recv().await.unwrap();
    assert!(!any.is_serializable());
    let err = serde_json::to_string(&any).unwrap_err();
    assert!(err.to_string().contains("add #[event(serde)]"), "{err}");
}

#[tokio::test]
async fn default_names_from_one_call_site_are_made_unique_for_wildcards_too() {
    let bus = bus();
    let subscribe = || bus.subscribe_pattern("orders.*").stream();
    let first = subscribe().expect("the first");
    let second = subscribe().expect("the second: the default name gets #2");
    let third = subscribe().expect("the third: #3");
    let stats = bus.stats();
    let mut names: Vec<_> = stats
        .topic("orders.created")
        .unwrap()
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3);
    assert!(
        names[1].ends_with("#2") && names[2].ends_with("#3"),
        "{names:?}"
    );
    assert!(names[1].starts_with(&names[0]), "{names:?}");
    drop((first, second, third));
}

#[tokio::test]
async fn a_wildcard_refused_on_one_topic_changes_nothing_on_the_others() {
    let bus = bus();
    // "billing" is taken on orders.created only: the pattern matches
    // orders.cancelled first (name order), then is refused there.
    let _taken = bus
        .subscribe::<OrderCreated>()
        .name("billing")
        .stream()
        .unwrap();
    let before = bus.stats();
    let err = bus
        .subscribe_pattern("orders.*")
        .name("billing")
        .stream()
        .expect_err("the name is taken on orders.created");
    assert!(
        matches!(
            err,
            SubscribeError::NameTaken {
                topic: "orders.created",
                ..
            }
        ),
        "{err}"
    );
    let after = bus.stats();
    for topic in ["orders.cancelled", "orders.created"] {
        let (b, a) = (before.topic(topic).unwrap(), after.topic(topic).unwrap());
        assert_eq!(a.unsubscribed, b.unsubscribed, "{topic}: {a:?}");
        assert_eq!(a.subscriptions.len(), b.subscriptions.len(), "{topic}");
    }
}
