//! Subscribing is all or nothing: every setting is checked before anything
//! shared changes, absurd values are typed errors (never a panic), and a
//! subscription's name is unique on its topic.

use std::time::Duration;

use tidings::error::SubscribeError;
use tidings::{Bus, Event, Overflow, RetryPolicy, StartAt, TopicConfig, MAX_CONCURRENCY};

#[derive(Debug, Event)]
#[event(topic = "ticks")]
struct Tick(u64);

fn bus() -> Bus {
    Bus::builder()
        .topic_with::<Tick>(TopicConfig::default().capacity(64).retain(8))
        .build()
        .unwrap()
}

/// What a refused subscription must leave as it was: the topic's
/// subscriptions and its ring readers. Publishing well past one ring lap
/// proves no phantom reader holds the ring back (in a debug build, a
/// phantom reader fails the "ring slot overwritten" check).
async fn topic_still_works(bus: &Bus) {
    let stats = bus.stats();
    let topic = stats.topic("ticks").unwrap();
    assert!(topic.subscriptions.is_empty(), "{stats}");
    let mut reader = bus.subscribe::<Tick>().name("reader").stream().unwrap();
    let seq_before = bus.stats().topic("ticks").unwrap().published;
    for i in 0..1000 {
        bus.try_publish(Tick(i)).expect("room: the reader keeps up");
        let e = reader.try_recv().expect("delivered");
        assert_eq!(e.seq(), seq_before + i + 1);
    }
    assert_eq!(reader.unsubscribe().accepted, 1000);
}

#[tokio::test]
async fn absurd_concurrency_is_a_typed_error_and_changes_nothing() {
    let bus = bus();
    for concurrency in [usize::MAX, MAX_CONCURRENCY + 1] {
        let err = bus
            .subscribe::<Tick>()
            .concurrency(concurrency)
            .handler(|_| async {})
            .expect_err("too many runners");
        assert!(
            matches!(err, SubscribeError::ConcurrencyTooHigh { topic: "ticks", max, .. } if max == MAX_CONCURRENCY),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("subscription to topic `ticks` asked for concurrency {concurrency}; the most is 65536 runners")
        );
        let err = bus
            .subscribe::<Tick>()
            .concurrency(concurrency)
            .sync(|_| ())
            .expect_err("too many threads");
        assert!(matches!(err, SubscribeError::ConcurrencyTooHigh { .. }));
    }
    topic_still_works(&bus).await;
}

#[tokio::test]
async fn every_refused_setting_leaves_the_topic_as_it_was() {
    let bus = bus();
    let refusals: Vec<(&str, SubscribeError)> = vec![
        (
            "capacity 0",
            bus.subscribe::<Tick>().capacity(0).stream().unwrap_err(),
        ),
        (
            "concurrency 0",
            bus.subscribe::<Tick>()
                .concurrency(0)
                .sync(|_| ())
                .unwrap_err(),
        ),
        (
            "zero attempts",
            bus.subscribe::<Tick>()
                .retry(RetryPolicy::none().max_attempts(0))
                .handler(|_| async {})
                .unwrap_err(),
        ),
        (
            "start ahead",
            bus.subscribe::<Tick>()
                .from(StartAt::Seq(u64::MAX))
                .stream()
                .unwrap_err(),
        ),
    ];
    for (what, err) in &refusals {
        assert!(err.to_string().contains("ticks"), "{what}: {err}");
    }
    topic_still_works(&bus).await;
}

/// Extreme values that are not absurd are accepted and work: a queue of
/// `usize::MAX` (unbounded in practice), `u32::MAX` attempts, the maximum
/// concurrency, `StartAt::Last(u64::MAX)`, `StartAt::Seq(0)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_but_sane_settings_work() {
    let bus = bus();
    for i in 0..5 {
        bus.publish(Tick(i)).await.unwrap();
    }
    let mut huge = bus
        .subscribe::<Tick>()
        .capacity(usize::MAX)
        .stream()
        .unwrap();
    let mut lossy = bus
        .subscribe::<Tick>()
        .capacity(usize::MAX)
        .overflow(Overflow::DropOldest)
        .stream()
        .unwrap();
    let mut all = bus
        .subscribe::<Tick>()
        .from(StartAt::Last(u64::MAX))
        .stream()
        .unwrap();
    let mut zero = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(0))
        .stream()
        .unwrap();
    assert_eq!(all.started().replayed, 5);
    assert_eq!(zero.started().replayed, 5);
    let many = bus
        .subscribe::<Tick>()
        .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(u32::MAX))
        .concurrency(1024)
        .handler(|_| async {})
        .unwrap();
    for i in 5..10 {
        bus.publish(Tick(i)).await.unwrap();
    }
    for sub in [&mut huge, &mut lossy] {
        for i in 5..10 {
            assert_eq!(sub.recv().await.map(|e| e.0), Some(i));
        }
    }
    for sub in [&mut all, &mut zero] {
        for i in 0..10 {
            assert_eq!(sub.recv().await.map(|e| e.0), Some(i));
        }
    }
    assert_eq!(many.unsubscribe().await.handled, 5);
}

#[tokio::test]
async fn a_taken_name_is_refused_naming_the_topic_and_the_name() {
    let bus = bus();
    let billing = bus.subscribe::<Tick>().name("billing").stream().unwrap();
    let err = bus
        .subscribe::<Tick>()
        .name("billing")
        .sync(|_| ())
        .expect_err("taken");
    assert!(
        matches!(&err, SubscribeError::NameTaken { topic: "ticks", name } if name == "billing"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "topic `ticks` already has a subscription named `billing`; names are unique per topic"
    );
    let stats = bus.stats();
    assert_eq!(stats.topic("ticks").unwrap().subscriptions.len(), 1);
    // Once it is gone, the name is free again.
    drop(billing);
    let _again = bus.subscribe::<Tick>().name("billing").stream().unwrap();
}

#[tokio::test]
async fn default_names_from_one_call_site_are_made_unique() {
    let bus = bus();
    let subs: Vec<_> = (0..3)
        .map(|_| bus.subscribe::<Tick>().stream().unwrap())
        .collect();
    let names: Vec<&str> = subs.iter().map(|s| s.name()).collect();
    let base = names[0];
    assert!(base.starts_with("ticks@tests/subscribe.rs:"), "{base}");
    assert_eq!(names[1], format!("{base}#2"));
    assert_eq!(names[2], format!("{base}#3"));
}

/// Names are per topic: the same name on two topics is fine.
#[tokio::test]
async fn the_same_name_on_two_topics_is_fine() {
    #[derive(Debug, Event)]
    #[event(topic = "tocks")]
    struct Tock;
    let bus = Bus::builder()
        .topic::<Tick>()
        .topic::<Tock>()
        .build()
        .unwrap();
    let _a = bus.subscribe::<Tick>().name("audit").stream().unwrap();
    let _b = bus.subscribe::<Tock>().name("audit").stream().unwrap();
}

/// A handler kept for the bus's lifetime without a handle: it keeps
/// handling, shows in stats, and the shutdown drains and reports it. Until
/// then the name stays taken.
#[tokio::test]
async fn a_handler_can_run_until_shutdown_without_its_handle() {
    let bus = bus();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe::<Tick>()
        .name("audit")
        .sync(move |e| {
            let _ = tx.send(e.0);
        })
        .unwrap()
        .run_until_shutdown();
    for i in 0..3 {
        bus.publish(Tick(i)).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(rx.recv().await, Some(i));
    }
    let listed = bus.stats();
    assert!(
        listed.subscriptions().any(|s| s.name == "audit"),
        "{listed}"
    );
    assert!(matches!(
        bus.subscribe::<Tick>().name("audit").stream(),
        Err(SubscribeError::NameTaken { .. })
    ));
    bus.publish(Tick(3)).await.unwrap();
    let report = bus.shutdown(Duration::from_secs(60)).await;
    assert!(report.is_clean(), "{report}");
    let audit = report
        .subscriptions()
        .find(|s| s.name == "audit")
        .expect("reported");
    assert_eq!(audit.handled, 4, "drained before the bus closed");
    assert_eq!(rx.recv().await, Some(3));
    assert_eq!(rx.recv().await, None, "the handler is gone with the bus");
}
