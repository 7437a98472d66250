//! The metrics tidings records, read back exactly after a known workload.
//! In its own binary: a metrics recorder is process-wide.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;

type Series = [(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)];
use tidings::{Bus, Event, Overflow, RetryPolicy};

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
}

/// The value of the series `name` whose labels include all of `labels`.
fn value<'a>(snapshot: &'a Series, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, _, _, value)| value)
}

fn counter(snapshot: &Series, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: expected a counter, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_gauges_and_histograms_match_the_workload_and_the_stats() {
    // The recorder must be in place before the bus registers its handles.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder");

    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let mut all = bus
        .subscribe::<OrderCreated>()
        .name("all")
        .stream()
        .unwrap();
    let _lossy = bus
        .subscribe::<OrderCreated>()
        .name("lossy")
        .capacity(2)
        .overflow(Overflow::DropNewest)
        .stream()
        .unwrap();
    let picky = bus
        .subscribe::<OrderCreated>()
        .name("picky")
        .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(2))
        .handler(|e| async move {
            if e.id % 2 == 1 {
                return Err(format!("odd order {}", e.id));
            }
            Ok(())
        })
        .unwrap();

    for id in 0..10 {
        bus.publish(OrderCreated { id }).await.unwrap();
    }
    for _ in 0..10 {
        all.recv().await.expect("open");
    }
    let picky = picky.unsubscribe().await;
    assert_eq!(
        (picky.failures, picky.retried, picky.dead_lettered),
        (10, 5, 5)
    );

    // Reading a snapshot resets the recorder's counters: take one, once.
    let snapshot = snapshotter.snapshot().into_vec();
    let snapshotter = snapshot.as_slice();
    let topic = ("topic", "orders.created");
    assert_eq!(
        counter(snapshotter, "tidings_published_total", &[topic]),
        10
    );
    assert_eq!(
        counter(
            snapshotter,
            "tidings_delivered_total",
            &[topic, ("subscription", "all")]
        ),
        10
    );
    assert_eq!(
        counter(
            snapshotter,
            "tidings_delivered_total",
            &[topic, ("subscription", "lossy")]
        ),
        0
    );
    assert_eq!(
        counter(
            snapshotter,
            "tidings_dropped_total",
            &[topic, ("subscription", "lossy"), ("policy", "drop-newest")]
        ),
        8
    );
    assert_eq!(
        counter(
            snapshotter,
            "tidings_handler_failures_total",
            &[topic, ("subscription", "picky")]
        ),
        10
    );
    assert_eq!(
        counter(
            snapshotter,
            "tidings_retries_total",
            &[topic, ("subscription", "picky")]
        ),
        5
    );
    assert_eq!(
        counter(
            snapshotter,
            "tidings_dead_letters_total",
            &[topic, ("subscription", "picky")]
        ),
        5
    );
    match value(
        snapshotter,
        "tidings_handler_duration_seconds",
        &[("subscription", "picky")],
    ) {
        // One sample per attempt: 5 first tries that worked, 5 × 2 that failed.
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 15),
        other => panic!("expected a histogram, got {other:?}"),
    }
    match value(
        snapshotter,
        "tidings_queue_depth",
        &[("subscription", "lossy")],
    ) {
        Some(DebugValue::Gauge(depth)) => assert_eq!(depth.into_inner(), 2.0),
        other => panic!("expected a gauge, got {other:?}"),
    }
    match value(snapshotter, "tidings_subscriptions", &[topic]) {
        Some(DebugValue::Gauge(n)) => assert_eq!(n.into_inner(), 2.0, "picky left"),
        other => panic!("expected a gauge, got {other:?}"),
    }

    // The counters agree with the stats.
    let stats = bus.stats();
    for s in stats.subscriptions() {
        let labels = [topic, ("subscription", s.name.as_str())];
        assert_eq!(
            counter(snapshotter, "tidings_delivered_total", &labels),
            s.delivered,
            "{s}"
        );
    }
    assert_eq!(stats.topic("orders.created").unwrap().published, 10);
}
