//! The blocked-runtime watch: it names async handlers that block the
//! runtime, sync handlers over budget and subscriptions that keep publishers
//! waiting, and stays quiet for handlers that behave. Thresholds sit far
//! from the sleep times, so a busy machine cannot flip an outcome.

use std::time::Duration;

use tidings::{Bus, Event, FindingKind, WatchConfig};

#[derive(Debug, Event)]
#[event(topic = "jobs")]
struct Job;

const THRESHOLD: Duration = Duration::from_millis(50);
const BLOCK: Duration = Duration::from_millis(300);

fn bus(watch: WatchConfig) -> Bus {
    Bus::builder()
        .topic::<Job>()
        .watch(watch)
        .build()
        .expect("valid")
}

fn strict() -> WatchConfig {
    WatchConfig::default()
        .slow_poll(Some(THRESHOLD))
        .sync_budget(Some(THRESHOLD))
        .publish_wait(Some(THRESHOLD))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_handler_that_blocks_is_named() {
    let bus = bus(strict());
    let h = bus
        .subscribe::<Job>()
        .name("blocking-in-async")
        .handler(|_| async { std::thread::sleep(BLOCK) })
        .unwrap();
    bus.publish(Job).await.unwrap();
    bus.publish(Job).await.unwrap();
    let stats = h.unsubscribe().await;
    assert_eq!(stats.slow_polls, 2, "{stats}");
    assert!(stats.worst_poll >= BLOCK, "{stats}");

    let health = bus.health();
    assert!(!health.is_healthy(), "{health}");
    let f = &health.findings[0];
    assert_eq!(
        (f.kind, f.topic, f.subscription.as_str()),
        (FindingKind::SlowPoll, "jobs", "blocking-in-async")
    );
    assert_eq!(f.count, 2);
    assert!(f.worst >= BLOCK);
    let text = health.to_string();
    assert!(
        text.contains("slow poll in subscription `blocking-in-async` on topic `jobs`"),
        "{text}"
    );
    assert!(
        text.contains("`.sync()`"),
        "the advice names the fix: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_awaits_is_not_reported() {
    let bus = bus(strict());
    let h = bus
        .subscribe::<Job>()
        .handler(|_| async { tokio::time::sleep(BLOCK).await })
        .unwrap();
    bus.publish(Job).await.unwrap();
    let stats = h.unsubscribe().await;
    assert_eq!(stats.handled, 1);
    assert_eq!(stats.slow_polls, 0, "{stats}");
    assert!(stats.worst_poll < THRESHOLD, "{stats}");
    assert!(bus.health().findings.is_empty(), "{}", bus.health());
}

#[tokio::test]
async fn a_handler_that_blocks_before_returning_its_future_is_named_too() {
    let bus = bus(strict());
    let h = bus
        .subscribe::<Job>()
        .handler(|_| {
            std::thread::sleep(BLOCK); // outside the async block
            async {}
        })
        .unwrap();
    bus.publish(Job).await.unwrap();
    assert_eq!(h.unsubscribe().await.slow_polls, 1);
}

#[tokio::test]
async fn a_sync_handler_over_budget_is_reported() {
    let bus = bus(strict());
    let slow = bus
        .subscribe::<Job>()
        .name("slow-sync")
        .sync(|_| std::thread::sleep(BLOCK))
        .unwrap();
    let quick = bus
        .subscribe::<Job>()
        .name("quick-sync")
        .sync(|_| ())
        .unwrap();
    bus.publish(Job).await.unwrap();
    let slow = slow.unsubscribe().await;
    let quick = quick.unsubscribe().await;
    assert_eq!((slow.over_budget, quick.over_budget), (1, 0));
    assert!(slow.worst_run >= BLOCK);
    let health = bus.health();
    assert_eq!(health.findings.len(), 1, "{health}");
    assert_eq!(health.findings[0].kind, FindingKind::SyncOverBudget);
    assert_eq!(health.findings[0].subscription, "slow-sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_kept_waiting_names_the_full_subscription() {
    let bus = bus(strict());
    let narrow = bus
        .subscribe::<Job>()
        .name("narrow")
        .capacity(1)
        .sync(|_| std::thread::sleep(BLOCK))
        .unwrap();
    for _ in 0..3 {
        bus.publish(Job).await.unwrap(); // the third waits for the first to finish
    }
    let stats = narrow.unsubscribe().await;
    assert!(stats.publishers_blocked >= 1, "{stats}");
    assert!(stats.worst_publisher_wait >= THRESHOLD, "{stats}");
    let health = bus.health();
    let blocked = health
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::PublisherBlocked)
        .expect("publisher finding");
    assert_eq!(blocked.subscription, "narrow");
}

#[tokio::test]
async fn watch_off_times_nothing() {
    let bus = bus(WatchConfig::off());
    let h = bus
        .subscribe::<Job>()
        .handler(|_| async { std::thread::sleep(BLOCK) })
        .unwrap();
    bus.publish(Job).await.unwrap();
    let stats = h.unsubscribe().await;
    assert_eq!((stats.slow_polls, stats.worst_poll), (0, Duration::ZERO));
    assert!(bus.health().is_healthy());
}

#[tokio::test]
async fn default_names_come_from_the_call_site() {
    let bus = bus(WatchConfig::default());
    let sub = bus.subscribe::<Job>().stream().unwrap();
    let line = line!() - 1;
    assert_eq!(sub.name(), format!("jobs@tests/watch.rs:{line}"));
}
