//! Idempotency keys: a key seen within the topic's window is not delivered
//! again, and only accepted publishes record their key.

use std::collections::HashSet;
use std::time::Duration;

use tidings::error::Refusal;
use tidings::{Bus, DedupWindow, Event, Overflow, PublishOptions, TopicConfig};

#[derive(Debug, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "orders.refunded")]
struct OrderRefunded;

fn key(k: &str) -> PublishOptions {
    PublishOptions::new().idempotency_key(k)
}

#[tokio::test]
async fn a_repeated_key_is_delivered_once_and_names_the_original() {
    let bus = Bus::builder().topic::<OrderPlaced>().build().unwrap();
    let mut sub = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let orders = bus.publisher::<OrderPlaced>().unwrap();
    let first = orders
        .publish_with(OrderPlaced { id: 42 }, key("order-42"))
        .await
        .unwrap();
    let again = bus
        .publish_with(OrderPlaced { id: 42 }, key("order-42"))
        .await
        .unwrap();
    let sync_again = orders
        .try_publish_with(OrderPlaced { id: 42 }, key("order-42"))
        .unwrap();
    assert!(!first.is_duplicate());
    for dup in [&again, &sync_again] {
        let d = dup.duplicate.expect("a duplicate");
        assert_eq!((d.original, d.original_seq), (first.id, first.seq));
        assert_eq!((dup.id, dup.seq, dup.enqueued), (first.id, first.seq, 0));
    }
    bus.publish_with(OrderPlaced { id: 43 }, key("order-43"))
        .await
        .unwrap();
    let e = sub.recv().await.unwrap();
    assert_eq!((e.id, e.idempotency_key()), (42, Some("order-42")));
    let e = sub.recv().await.unwrap();
    assert_eq!(
        (e.id, e.seq()),
        (43, 2),
        "the duplicates took no sequence number"
    );
    assert_eq!(bus.stats().topic("orders.placed").unwrap().published, 2);
}

#[tokio::test]
async fn keys_are_per_topic() {
    let bus = Bus::builder()
        .topic::<OrderPlaced>()
        .topic::<OrderRefunded>()
        .build()
        .unwrap();
    let a = bus
        .publish_with(OrderPlaced { id: 1 }, key("k"))
        .await
        .unwrap();
    let b = bus.publish_with(OrderRefunded, key("k")).await.unwrap();
    assert!(!a.is_duplicate() && !b.is_duplicate());
}

#[tokio::test]
async fn a_refused_publish_leaves_no_key_behind() {
    let bus = Bus::builder().topic::<OrderPlaced>().build().unwrap();
    let mut strict = bus
        .subscribe::<OrderPlaced>()
        .capacity(1)
        .overflow(Overflow::Fail)
        .stream()
        .unwrap();
    bus.publish(OrderPlaced { id: 1 }).await.unwrap();
    let err = bus
        .publish_with(OrderPlaced { id: 2 }, key("order-2"))
        .await
        .unwrap_err();
    let (Refusal::Full { .. }, event) = err.into_parts() else {
        panic!("expected Full")
    };
    strict.recv().await.unwrap();
    // The client retries with the same key: it was never accepted, so it is
    // delivered now.
    let retry = bus.publish_with(event, key("order-2")).await.unwrap();
    assert!(!retry.is_duplicate());
    assert_eq!(strict.recv().await.map(|e| e.id), Some(2));
}

#[tokio::test]
async fn the_window_forgets_the_oldest_keys_by_count() {
    let bus = Bus::builder()
        .topic_with::<OrderPlaced>(TopicConfig::default().dedup(DedupWindow::new().max_keys(2)))
        .build()
        .unwrap();
    for k in ["a", "b", "c"] {
        assert!(!bus
            .publish_with(OrderPlaced { id: 0 }, key(k))
            .await
            .unwrap()
            .is_duplicate());
    }
    // "a" left the two-key window; "c" is still in it.
    assert!(!bus
        .publish_with(OrderPlaced { id: 0 }, key("a"))
        .await
        .unwrap()
        .is_duplicate());
    assert!(bus
        .publish_with(OrderPlaced { id: 0 }, key("c"))
        .await
        .unwrap()
        .is_duplicate());
}

#[tokio::test]
async fn the_window_forgets_keys_by_age() {
    let bus = Bus::builder()
        .topic_with::<OrderPlaced>(
            TopicConfig::default().dedup(DedupWindow::new().max_age(Duration::from_millis(5))),
        )
        .build()
        .unwrap();
    assert!(!bus
        .publish_with(OrderPlaced { id: 0 }, key("a"))
        .await
        .unwrap()
        .is_duplicate());
    std::thread::sleep(Duration::from_millis(20)); // longer than the window, whatever the load
    assert!(!bus
        .publish_with(OrderPlaced { id: 0 }, key("a"))
        .await
        .unwrap()
        .is_duplicate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishes_of_one_key_deliver_exactly_one_event() {
    let bus = Bus::builder().topic::<OrderPlaced>().build().unwrap();
    let mut sub = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish_with(OrderPlaced { id: i }, key("the-one"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut originals = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let receipt = t.await.unwrap();
        match receipt.duplicate {
            Some(d) => {
                originals.insert(d.original);
            }
            None => {
                fresh += 1;
                originals.insert(receipt.id);
            }
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(originals.len(), 1, "every duplicate names the one original");
    sub.close();
    let mut delivered = 0;
    while sub.recv().await.is_some() {
        delivered += 1;
    }
    assert_eq!(delivered, 1);
}

/// Keys are checked when publishing: empty, too long for the topic's window
/// or holding a control character (a CR or LF could not cross a bridge's
/// headers) is a typed error naming the topic and the key, the event comes
/// back, and nothing is enqueued or remembered.
#[tokio::test]
async fn bad_keys_are_refused_at_publish_and_change_nothing() {
    let bus = Bus::builder()
        .topic::<OrderPlaced>()
        .topic_with::<OrderRefunded>(
            TopicConfig::default().dedup(DedupWindow::new().max_key_len(1024)),
        )
        .build()
        .unwrap();
    let mut sub = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let long = "k".repeat(257);
    for (bad, says) in [
        ("", "the key is empty"),
        ("order\r\n42", "the key holds a control character"),
        ("order\u{0}", "the key holds a control character"),
        (
            long.as_str(),
            "the key is 257 bytes long; the topic's limit is 256",
        ),
    ] {
        let err = bus
            .publish_with(OrderPlaced { id: 1 }, key(bad))
            .await
            .expect_err(bad);
        assert!(err.to_string().contains(says), "{err}");
        assert!(err.to_string().contains("topic `orders.placed`"), "{err}");
        match err.reason() {
            Refusal::InvalidKey { topic, key, .. } => {
                assert_eq!(*topic, "orders.placed");
                assert!(key.len() <= 64 * 4, "the key is shown bounded");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.into_inner().id, 1, "the event comes back");
        let err = bus
            .try_publish_with(OrderPlaced { id: 2 }, key(bad))
            .expect_err("refused without waiting too");
        assert!(matches!(err.reason(), Refusal::InvalidKey { .. }));
    }
    // The scope follows the same rules.
    let err = bus
        .publish_with(OrderPlaced { id: 3 }, key("fine").key_scope("bad\nscope"))
        .await
        .expect_err("a bad scope");
    assert!(
        err.to_string()
            .contains("the key scope holds a control character"),
        "{err}"
    );
    assert!(sub.try_recv().is_err(), "nothing was enqueued");
    assert_eq!(bus.stats().topic("orders.placed").unwrap().published, 0);
    // A topic may allow longer keys.
    bus.publish_with(OrderRefunded, key(&long)).await.unwrap();
}

/// A key in a scope of its own is not a duplicate of the same key in
/// another scope (how a bridge keeps its peers' keys apart).
#[tokio::test]
async fn keys_are_per_scope() {
    let bus = Bus::builder().topic::<OrderPlaced>().build().unwrap();
    let local = bus
        .publish_with(OrderPlaced { id: 1 }, key("order-1"))
        .await
        .unwrap();
    let remote = bus
        .publish_with(
            OrderPlaced { id: 1 },
            key("order-1").key_scope("bridge:orders"),
        )
        .await
        .unwrap();
    let again = bus
        .publish_with(
            OrderPlaced { id: 1 },
            key("order-1").key_scope("bridge:orders"),
        )
        .await
        .unwrap();
    assert!(!local.is_duplicate() && !remote.is_duplicate());
    assert_eq!(again.duplicate.map(|d| d.original), Some(remote.id));
}
