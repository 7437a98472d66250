//! The metrics tidings records, read back exactly after a known workload.
//! In its own binary: a metrics recorder is process-wide.
#![cfg(feature = "metrics")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tidings::{Bus, Event, Overflow, RetryPolicy};

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
}

/// A recorder that keeps every series it is handed, to read back: the same
/// key registered twice gets the same series, as with any exporter.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(Key, Series)>>>);

#[derive(Clone)]
enum Series {
    Counter(Arc<CounterCell>),
    Gauge(Arc<GaugeCell>),
    Histogram(Arc<HistogramCell>),
}

#[derive(Default)]
struct CounterCell(AtomicU64);
#[derive(Default)]
struct GaugeCell(Mutex<f64>);
#[derive(Default)]
struct HistogramCell(Mutex<Vec<f64>>);

impl CounterFn for CounterCell {
    fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn absolute(&self, n: u64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, by: f64) {
        *self.0.lock().unwrap() += by;
    }
    fn decrement(&self, by: f64) {
        *self.0.lock().unwrap() -= by;
    }
    fn set(&self, to: f64) {
        *self.0.lock().unwrap() = to;
    }
}

impl HistogramFn for HistogramCell {
    fn record(&self, sample: f64) {
        self.0.lock().unwrap().push(sample);
    }
}

impl Recorded {
    fn series(&self, key: &Key, make: impl FnOnce() -> Series) -> Series {
        let mut all = self.0.lock().unwrap();
        if let Some((_, series)) = all.iter().find(|(k, _)| k == key) {
            return series.clone();
        }
        let series = make();
        all.push((key.clone(), series.clone()));
        series
    }

    /// What the series read now.
    fn snapshot(&self) -> Vec<(Key, Reading)> {
        let all = self.0.lock().unwrap();
        all.iter()
            .map(|(key, series)| {
                let reading = match series {
                    Series::Counter(c) => Reading::Counter(c.0.load(Ordering::Relaxed)),
                    Series::Gauge(g) => Reading::Gauge(*g.0.lock().unwrap()),
                    Series::Histogram(h) => Reading::Histogram(h.0.lock().unwrap().clone()),
                };
                (key.clone(), reading)
            })
            .collect()
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.series(key, || Series::Counter(Arc::default())) {
            Series::Counter(c) => Counter::from_arc(c),
            _ => panic!("{key:?} registered as two kinds"),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match self.series(key, || Series::Gauge(Arc::default())) {
            Series::Gauge(g) => Gauge::from_arc(g),
            _ => panic!("{key:?} registered as two kinds"),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.series(key, || Series::Histogram(Arc::default())) {
            Series::Histogram(h) => Histogram::from_arc(h),
            _ => panic!("{key:?} registered as two kinds"),
        }
    }
}

#[derive(Debug)]
enum Reading {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// The reading of the series `name` whose labels include all of `labels`.
fn value<'a>(
    snapshot: &'a [(Key, Reading)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a Reading> {
    snapshot
        .iter()
        .find(|(key, _)| {
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, reading)| reading)
}

fn counter(snapshot: &[(Key, Reading)], name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(Reading::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: expected a counter, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_gauges_and_histograms_match_the_workload_and_the_stats() {
    // The recorder must be in place before the bus registers its handles.
    let recorder = Recorded::default();
    metrics::set_global_recorder(recorder.clone()).expect("first recorder");

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

    let snapshot = recorder.snapshot();
    let readings = snapshot.as_slice();
    let topic = ("topic", "orders.created");
    assert_eq!(counter(readings, "tidings_published_total", &[topic]), 10);
    assert_eq!(
        counter(
            readings,
            "tidings_delivered_total",
            &[topic, ("subscription", "all")]
        ),
        10
    );
    assert_eq!(
        counter(
            readings,
            "tidings_delivered_total",
            &[topic, ("subscription", "lossy")]
        ),
        0
    );
    assert_eq!(
        counter(
            readings,
            "tidings_dropped_total",
            &[topic, ("subscription", "lossy"), ("policy", "drop-newest")]
        ),
        8
    );
    assert_eq!(
        counter(
            readings,
            "tidings_handler_failures_total",
            &[topic, ("subscription", "picky")]
        ),
        10
    );
    assert_eq!(
        counter(
            readings,
            "tidings_retries_total",
            &[topic, ("subscription", "picky")]
        ),
        5
    );
    assert_eq!(
        counter(
            readings,
            "tidings_dead_letters_total",
            &[topic, ("subscription", "picky")]
        ),
        5
    );
    // Each dead letter was caused by the order that failed.
    assert_eq!(
        counter(
            readings,
            "tidings_caused_total",
            &[
                ("topic", tidings::DEAD_LETTER_TOPIC),
                ("caused_by", "orders.created")
            ]
        ),
        5
    );
    match value(
        readings,
        "tidings_handler_duration_seconds",
        &[("subscription", "picky")],
    ) {
        // One sample per attempt: 5 first tries that worked, 5 × 2 that failed.
        Some(Reading::Histogram(samples)) => assert_eq!(samples.len(), 15),
        other => panic!("expected a histogram, got {other:?}"),
    }
    match value(
        readings,
        "tidings_queue_depth",
        &[("subscription", "lossy")],
    ) {
        Some(Reading::Gauge(depth)) => assert_eq!(*depth, 2.0),
        other => panic!("expected a gauge, got {other:?}"),
    }
    match value(readings, "tidings_subscriptions", &[topic]) {
        Some(Reading::Gauge(n)) => assert_eq!(*n, 2.0, "picky left"),
        other => panic!("expected a gauge, got {other:?}"),
    }

    // The counters agree with the stats.
    let stats = bus.stats();
    for s in stats.subscriptions() {
        let labels = [topic, ("subscription", s.name.as_str())];
        assert_eq!(
            counter(readings, "tidings_delivered_total", &labels),
            s.delivered,
            "{s}"
        );
    }
    assert_eq!(stats.topic("orders.created").unwrap().published, 10);
    let letters = stats.topic(tidings::DEAD_LETTER_TOPIC).unwrap();
    assert_eq!(letters.caused(), 5);
}
