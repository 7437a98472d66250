//! The NATS bridge against a real `nats-server` (with JetStream), started
//! and stopped by these tests on 127.0.0.1 with a port and a store of their
//! own. Two buses in this one process talk only through the server.
//!
//! Waiting for something to arrive has a generous deadline as a guard
//! against a hang, never as a measurement.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{next, until, NatsServer};
use tidings::{Bus, Event, EventRef, PublishOptions};
use tidings_nats::{Bridge, BridgeError, BridgeTopics, Durable, RejectReason, Rejected};

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
    total_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.marker", serde)]
struct Marker(u64);

#[derive(Debug, Event)]
#[event(topic = "orders.internal")]
struct NotSerializable;

#[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "payments.settled", serde)]
struct Unregistered;

/// A generous deadline for bridge shutdowns: a guard, not a measurement.
const LONG: Duration = Duration::from_secs(60);

fn bus() -> Bus {
    Bus::builder()
        .bridge_topics()
        .topic::<OrderCreated>()
        .topic::<Marker>()
        .topic::<NotSerializable>()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_round_trip_between_two_buses() {
    let server = NatsServer::start();
    let (orders, billing) = (bus(), bus());
    let mut received = billing.subscribe::<OrderCreated>().stream().unwrap();
    let b = Bridge::builder(&billing, server.connect())
        .name("billing")
        .prefix("acme")
        .import::<OrderCreated>()
        .start()
        .await
        .unwrap();
    let a = Bridge::builder(&orders, server.connect())
        .name("orders")
        .prefix("acme")
        .export::<OrderCreated>()
        .start()
        .await
        .unwrap();
    let sent = OrderCreated {
        id: 7,
        total_cents: 1250,
    };
    let receipt = orders
        .publish_with(
            sent.clone(),
            PublishOptions::new().idempotency_key("order-7"),
        )
        .await
        .unwrap();
    orders
        .publish(OrderCreated {
            id: 8,
            total_cents: 1,
        })
        .await
        .unwrap();
    let got = received.recv().await.unwrap();
    assert_eq!(*got, sent);
    assert_eq!(got.idempotency_key(), Some("order-7"), "the key crosses");
    assert_eq!(got.origin(), Some(b.origin()));
    let got = received.recv().await.unwrap();
    assert_eq!(got.id, 8);
    // Without a key of its own, an event is keyed by its cross-process id.
    let key = got.idempotency_key().expect("keyed by id");
    assert!(key.starts_with(a.origin()), "{key}");
    assert_ne!(receipt.id.get(), 0);
    assert_eq!(a.shutdown(LONG).await.stats.exported, 2);
    until("the imports to be counted", || b.stats().imported == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_serializable_topics_can_be_bridged() {
    let server = NatsServer::start();
    let bus = bus();
    let err = Bridge::builder(&bus, server.connect())
        .export::<Unregistered>()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BridgeError::UnknownTopic {
                topic: "payments.settled"
            }
        ),
        "{err}"
    );
    let err = Bridge::builder(&bus, server.connect())
        .import::<Unregistered>()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, BridgeError::UnknownTopic { .. }), "{err}");
    let err = Bridge::builder(&bus, server.connect())
        .export::<NotSerializable>()
        .start()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "topic `orders.internal` (type `bridge::NotSerializable`) cannot cross the bridge: derive Serialize and Deserialize and add #[event(serde)]"
    );
    let err = Bridge::builder(&bus, server.connect())
        .export_pattern("shipping.>")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, BridgeError::NoMatch { .. }), "{err}");
    // A wildcard picks up every allow-listed topic it matches, and it must
    // be able to carry them all.
    let err = Bridge::builder(&bus, server.connect())
        .export_pattern("orders.*")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        BridgeError::NotSerializable {
            topic: "orders.internal",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_the_network_is_rejected_with_its_reason_and_bytes() {
    let server = NatsServer::start();
    let billing = Bus::builder()
        .bridge_topics()
        .topic::<OrderCreated>()
        .topic::<Marker>()
        .build()
        .unwrap();
    let mut rejected = billing.subscribe::<Rejected>().stream().unwrap();
    let mut orders = billing.subscribe::<OrderCreated>().stream().unwrap();
    let bridge = Bridge::builder(&billing, server.connect())
        .name("billing")
        .import_pattern("orders.>")
        .max_payload(256)
        .raw_limit(16)
        .start()
        .await
        .unwrap();
    let raw = server.client().await;
    raw.publish("orders.created", "{not json".into())
        .await
        .unwrap();
    raw.publish("orders.shipped", r#"{"id":1}"#.into())
        .await
        .unwrap();
    raw.publish("orders.created", vec![b' '; 300].into())
        .await
        .unwrap();
    raw.publish("orders.created", r#"{"id":9,"total_cents":5}"#.into())
        .await
        .unwrap();
    raw.flush().await.unwrap();

    let mut reasons = Vec::new();
    for _ in 0..3 {
        let r = rejected.recv().await.unwrap();
        assert!(r.raw.len() <= 16, "raw bytes are bounded");
        reasons.push((r.subject.clone(), r.reason.clone(), r.raw_len));
    }
    assert!(
        matches!(&reasons[0], (s, RejectReason::Malformed(_), 9) if s == "orders.created"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        ("orders.shipped".into(), RejectReason::NotAllowed, 8)
    );
    assert_eq!(
        reasons[2],
        (
            "orders.created".into(),
            RejectReason::Oversize { limit: 256 },
            300
        )
    );
    // The good one still gets through, typed, and nothing crashed.
    assert_eq!(orders.recv().await.map(|o| o.id), Some(9));
    // The bridge counts once its publish returned, just after delivery.
    until("the import to be counted", || bridge.stats().imported == 1).await;
    let stats = bridge.stats();
    assert_eq!((stats.rejected, stats.imported), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_event_is_not_exported_back() {
    let server = NatsServer::start();
    let (a_bus, b_bus) = (bus(), bus());
    let mut a_orders = a_bus.subscribe::<OrderCreated>().stream().unwrap();
    let mut b_orders = b_bus.subscribe::<OrderCreated>().stream().unwrap();
    let mut a_markers = a_bus.subscribe::<Marker>().stream().unwrap();
    // Both sides export and import the same topics.
    let a = Bridge::builder(&a_bus, server.connect())
        .name("a")
        .export_pattern("orders.created")
        .export::<Marker>()
        .import_pattern("orders.created")
        .import::<Marker>()
        .start()
        .await
        .unwrap();
    let b = Bridge::builder(&b_bus, server.connect())
        .name("b")
        .export::<OrderCreated>()
        .export::<Marker>()
        .import::<OrderCreated>()
        .import::<Marker>()
        .start()
        .await
        .unwrap();
    a_bus
        .publish(OrderCreated {
            id: 1,
            total_cents: 1,
        })
        .await
        .unwrap();
    assert_eq!(next("B to import the order", b_orders.recv()).await.id, 1);
    // B's marker comes after anything B could have sent back.
    b_bus.publish(Marker(1)).await.unwrap();
    assert_eq!(next("A to import B's marker", a_markers.recv()).await.0, 1);
    assert_eq!(
        next("A's own order", a_orders.recv()).await.id,
        1,
        "A's own publish"
    );
    assert!(
        a_orders.try_recv().is_err(),
        "the order did not come back to A"
    );
    // Each side counts an import once its publish returned, which may be
    // just after the reader got the event.
    until("the counts", || {
        let (a, b) = (a.stats(), b.stats());
        a.imported == 1 && b.exported == 1 && b.imported == 1
    })
    .await;
    let (a, b) = (a.stats(), b.stats());
    assert_eq!((a.exported, a.imported), (1, 1), "{a:?}");
    assert_eq!((b.exported, b.imported), (1, 1), "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_drops_a_republished_event_id() {
    let server = NatsServer::start();
    let billing = bus();
    let mut orders = billing.subscribe::<OrderCreated>().stream().unwrap();
    let mut markers = billing.subscribe::<Marker>().stream().unwrap();
    let _b = Bridge::builder(&billing, server.connect())
        .name("billing")
        .durable(Durable::new("ORDERS", ["orders.>"]))
        .import::<OrderCreated>()
        .import::<Marker>()
        .start()
        .await
        .unwrap();
    let js = async_nats::jetstream::new(server.client().await);
    let mut acks = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "orders-service-42");
        let ack = js
            .publish_with_headers(
                "orders.created",
                headers,
                r#"{"id":42,"total_cents":100}"#.into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        acks.push(ack.duplicate);
    }
    assert_eq!(acks, [false, true], "the broker recognised the repeat");
    js.publish("orders.marker", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(markers.recv().await.map(|m| m.0), Some(1));
    assert_eq!(orders.recv().await.map(|o| o.id), Some(42));
    assert!(orders.try_recv().is_err(), "delivered once");
}

/// The broker killed while the exporter has a full window of publishes
/// out, and started again: the stream holds every order once, in the order
/// they were published, and every order is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_durable_mode_keeps_order_and_loses_and_duplicates_nothing() {
    let mut server = NatsServer::start();
    let (orders, billing) = (bus(), bus());
    let handled = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&handled);
    let _billing = billing
        .subscribe::<OrderCreated>()
        .name("charge")
        .sync(move |o| log.lock().unwrap().push(o.id))
        .unwrap();
    let durable = || Durable::new("ORDERS", ["orders.>"]);
    let b = Bridge::builder(&billing, server.connect())
        .name("billing")
        .durable(durable())
        .import::<OrderCreated>()
        .start()
        .await
        .unwrap();
    let a = Bridge::builder(&orders, server.connect())
        .name("orders")
        .durable(durable().window(64))
        .export::<OrderCreated>()
        .start()
        .await
        .unwrap();
    const N: u64 = 5_000;
    let publisher = {
        let orders = orders.clone();
        tokio::spawn(async move {
            for id in 1..=N {
                orders
                    .publish(OrderCreated {
                        id,
                        total_cents: id,
                    })
                    .await
                    .unwrap();
                // Paced, so that the window has room when the broker goes
                // and new publishes are made while it is away.
                if id % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    until("a quarter to be handled", || {
        handled.lock().unwrap().len() as u64 >= N / 4
    })
    .await;
    server.stop(); // SIGKILL, mid-stream: publishes and acknowledgements in flight
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.spawn(); // same port, same store
    publisher.await.unwrap();
    until("every order to be handled", || {
        handled.lock().unwrap().len() as u64 >= N
    })
    .await;
    let a = a.shutdown(LONG).await.stats;
    let ids = handled.lock().unwrap().clone();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len() as u64, N, "nothing lost");
    assert_eq!(ids.len() as u64, N, "nothing handled twice");
    assert_eq!((a.exported, a.export_reordered), (N, 0), "{a:?}");
    assert!(a.disconnects >= 1, "the exporter saw the broker go: {a:?}");
    until("the imports to be counted", || b.stats().imported >= N).await;
    let b = b.stats();
    assert_eq!(b.imported, N, "{b:?}");
    // The stream itself, read from the start: each order once, in order.
    let stored = stored_ids(&server, "ORDERS", N).await;
    let expected: Vec<u64> = (1..=N).collect();
    assert!(
        stored == expected,
        "the stream holds the orders out of order or not once each: first difference at {:?}",
        stored.iter().zip(&expected).position(|(s, e)| s != e)
    );
}

/// The `id` of each order stream `stream` holds, in stream order (reads
/// `n` and checks that nothing follows).
async fn stored_ids(server: &NatsServer, stream: &str, n: u64) -> Vec<u64> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures::StreamExt;
    let js = async_nats::jetstream::new(server.client().await);
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    while (ids.len() as u64) < n {
        let msg = next("a stored message", messages.next()).await.unwrap();
        let order: OrderCreated = serde_json::from_slice(&msg.payload).unwrap();
        ids.push(order.id);
    }
    let info = js
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.state.messages, n,
        "the stream holds exactly the orders"
    );
    ids
}

/// A billing bridge shut down mid-stream and started again, as a new
/// process would (a new bus, which remembers no keys): every order is
/// handed to a local bus exactly once across the two runs, and each run's
/// count of imports is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_importer_restarted_mid_stream_hands_every_event_over_once() {
    let server = NatsServer::start();
    let durable = || Durable::new("ORDERS", ["orders.>"]);
    let orders = bus();
    let a = Bridge::builder(&orders, server.connect())
        .name("orders")
        .durable(durable())
        .export::<OrderCreated>()
        .start()
        .await
        .unwrap();
    const N: u64 = 1000;
    for id in 1..=N {
        orders
            .publish(OrderCreated {
                id,
                total_cents: id,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        a.shutdown(LONG).await.stats.exported,
        N,
        "all stored in the stream"
    );

    let mut runs = Vec::new();
    for run in 0..2 {
        let billing = bus();
        let handled = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&handled);
        // A short queue: the importer waits for the handler, so the
        // shutdown comes while most of the stream is still on the broker.
        let _charge = billing
            .subscribe::<OrderCreated>()
            .name("charge")
            .capacity(16)
            .sync(move |o| {
                std::thread::sleep(Duration::from_micros(200));
                log.lock().unwrap().push(o.id);
            })
            .unwrap();
        let bridge = Bridge::builder(&billing, server.connect())
            .name("billing")
            .durable(durable())
            .import::<OrderCreated>()
            .start()
            .await
            .unwrap();
        let before: u64 = runs.iter().map(|r: &Vec<u64>| r.len() as u64).sum();
        if run == 0 {
            until("a quarter to be handled", || {
                handled.lock().unwrap().len() as u64 >= N / 4
            })
            .await;
        } else {
            until("the rest to be handled", || {
                before + handled.lock().unwrap().len() as u64 >= N
            })
            .await;
        }
        let stats = bridge.shutdown(LONG).await.stats;
        // Every message the importer fetched was handed over and
        // acknowledged: none waits on the broker for an ack (it would be
        // redelivered to the next run, which remembers no keys).
        let info = async_nats::jetstream::new(server.client().await)
            .get_stream("ORDERS")
            .await
            .unwrap()
            .consumer_info("billing-orders_created")
            .await
            .unwrap();
        assert_eq!(info.num_ack_pending, 0, "run {run}: {info:?}");
        assert_eq!(
            info.ack_floor.stream_sequence,
            before + stats.imported,
            "run {run}: acknowledged exactly what was imported"
        );
        // What the bridge handed over is drained into the handler.
        assert!(billing.shutdown(Duration::from_secs(60)).await.is_clean());
        let handled = handled.lock().unwrap().clone();
        assert_eq!(
            stats.imported,
            handled.len() as u64,
            "run {run}: the count is exact: {stats:?}"
        );
        assert_eq!(stats.duplicates, 0, "run {run}: {stats:?}");
        runs.push(handled);
    }
    assert!(
        !runs[0].is_empty() && (runs[0].len() as u64) < N,
        "mid-stream"
    );
    let all: Vec<u64> = runs.concat();
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len() as u64, N, "nothing lost");
    assert_eq!(all.len() as u64, N, "nothing handed over twice");
}

/// JetStream acknowledges a message whose `Nats-Msg-Id` is already within
/// the stream's duplicate window with `duplicate: true` and drops it: the
/// exporter counts that apart, never as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_the_broker_drops_as_a_duplicate_is_counted_apart() {
    let server = NatsServer::start();
    let durable = || Durable::new("ORDERS", ["orders.>"]);
    let mut stats = Vec::new();
    // Two runs of an orders service using the same keys (two buses: the
    // local window of one does not know the other's keys).
    for _ in 0..2 {
        let orders = bus();
        let a = Bridge::builder(&orders, server.connect())
            .name("orders")
            .durable(durable())
            .export::<OrderCreated>()
            .start()
            .await
            .unwrap();
        orders
            .publish_with(
                OrderCreated {
                    id: 1,
                    total_cents: 1,
                },
                PublishOptions::new().idempotency_key("order-1"),
            )
            .await
            .unwrap();
        stats.push(a.shutdown(LONG).await.stats);
    }
    assert_eq!((stats[0].exported, stats[0].export_duplicates), (1, 0));
    assert_eq!(
        (stats[1].exported, stats[1].export_duplicates),
        (0, 1),
        "the broker dropped the second: {:?}",
        stats[1]
    );
}

/// A window of no publishes, or of more than the bridge allows, is an
/// error naming the setting, before anything connects.
#[tokio::test]
async fn a_durable_window_out_of_range_is_refused_at_start() {
    for window in [0, 65_537, usize::MAX] {
        let err = Bridge::builder(&bus(), tidings_nats::Connect::to("nats://127.0.0.1:1"))
            .durable(Durable::new("ORDERS", ["orders.>"]).window(window))
            .export::<OrderCreated>()
            .start()
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("durable.window") && text.contains(&window.to_string()),
            "{text}"
        );
    }
}

/// An order published in one process, charged by a handler in another
/// whose answer comes back: each event names what caused it and the root of
/// the chain, across both bridges, by the ids they crossed with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causes_cross_the_bridge_both_ways() {
    let server = NatsServer::start();
    let (orders, billing) = (bus(), bus());
    let mut answers = orders.subscribe::<Marker>().stream().unwrap();
    let handled = Arc::new(Mutex::new(None));
    let (b_bus, seen) = (billing.clone(), Arc::clone(&handled));
    // Billing's handler answers each order (published from the handler:
    // caused by the imported order without saying so).
    let _charge = billing
        .subscribe::<OrderCreated>()
        .sync(move |o| {
            *seen.lock().unwrap() = Some((o.reference(), o.caused_by().cloned()));
            b_bus.try_publish(Marker(o.id)).unwrap();
        })
        .unwrap();
    let b = Bridge::builder(&billing, server.connect())
        .name("billing")
        .import::<OrderCreated>()
        .export::<Marker>()
        .start()
        .await
        .unwrap();
    let a = Bridge::builder(&orders, server.connect())
        .name("orders")
        .import::<Marker>()
        .export::<OrderCreated>()
        .start()
        .await
        .unwrap();
    let receipt = orders
        .publish(OrderCreated {
            id: 3,
            total_cents: 300,
        })
        .await
        .unwrap();
    let answer = next("the answer", answers.recv()).await;
    assert_eq!(answer.0, 3);
    // The order's id on the wire: the exporting bridge's origin and the
    // order's local id.
    let order_on_wire = format!("{}-{:x}-", a.origin(), receipt.id.get());
    let (order_in_billing, its_cause) = handled.lock().unwrap().clone().expect("handled");
    let EventRef::Remote(id) = &order_in_billing else {
        panic!("an imported event is named by its wire id: {order_in_billing:?}");
    };
    assert!(id.starts_with(&order_on_wire), "{id} vs {order_on_wire}");
    assert_eq!(its_cause, None, "the order is a root");
    assert_eq!(answer.caused_by(), Some(&order_in_billing));
    assert_eq!(answer.correlation(), Some(&order_in_billing));
    // The stats count it on each side: in billing, an answer caused by an
    // order; back in the orders bus, one caused by an event known by its id
    // only (the order as billing named it).
    let caused_by = |bus: &Bus| -> Vec<(Option<&'static str>, u64)> {
        let stats = bus.stats();
        let topic = stats.topic(Marker::TOPIC).expect("registered");
        topic
            .caused_by
            .iter()
            .map(|c| (c.topic, c.events))
            .collect()
    };
    assert_eq!(caused_by(&billing), vec![(Some(OrderCreated::TOPIC), 1)]);
    assert_eq!(caused_by(&orders), vec![(None, 1)]);
    drop((a, b));
}

/// A durable importer holds at most one batch of events its bus has not
/// finished handling; a topic whose subscriber stopped reading stalls its
/// own import there, never another topic's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_topic_does_not_stall_another_topics_import() {
    let server = NatsServer::start();
    let (orders, billing) = (bus(), bus());
    let stuck = billing
        .subscribe::<OrderCreated>()
        .capacity(4096)
        .stream()
        .unwrap(); // never read
    let mut markers = billing.subscribe::<Marker>().stream().unwrap();
    let durable = || Durable::new("ORDERS", ["orders.>"]);
    let b = Bridge::builder(&billing, server.connect())
        .name("billing")
        .durable(durable())
        .import::<OrderCreated>()
        .import::<Marker>()
        .start()
        .await
        .unwrap();
    let a = Bridge::builder(&orders, server.connect())
        .name("orders")
        .durable(durable())
        .export::<OrderCreated>()
        .export::<Marker>()
        .start()
        .await
        .unwrap();
    for id in 1..=600 {
        orders
            .publish(OrderCreated { id, total_cents: 1 })
            .await
            .unwrap();
    }
    until("the orders importer to hold a full batch", || {
        b.stats().unacknowledged == 256
    })
    .await;
    orders.publish(Marker(1)).await.unwrap();
    assert_eq!(next("the marker", markers.recv()).await.0, 1);
    // Counted once its publish returned, which may be just after delivery.
    until("the marker to be counted", || b.stats().imported == 257).await;
    let stats = b.stats();
    assert_eq!(
        (stats.imported, stats.unacknowledged),
        (257, 256),
        "the orders wait for their reader: {stats:?}"
    );
    drop(stuck); // lets the 256 go: handled (dropped), acknowledged
    until("the rest of the orders", || b.stats().imported == 601).await;
    until("every import acknowledged", || {
        b.stats().unacknowledged == 0
    })
    .await;
    drop(a);
}
