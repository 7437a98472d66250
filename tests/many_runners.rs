//! Many handler runners on one topic never starve its publisher: a publish
//! wakes at most the readers that waited when it began, and one runner per
//! subscription rather than every one of its siblings.
//!
//! Each scenario has a generous deadline as a guard against a hang (before
//! the fix, 100 sync subscriptions at concurrency 4 never finished one
//! publish in ten minutes); it is not a measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::{Bus, Event, SubscriptionHandle};

#[derive(Debug, Event)]
#[event(topic = "jobs.queued")]
struct Queued(u64);

const HANG: Duration = Duration::from_secs(120);
const SUBSCRIPTIONS: usize = 100;
const PUBLISHES: u64 = 200;

/// Publishes every event, then waits until every subscription has counted
/// each as handled (a run is counted once its handler has returned, a
/// moment after the handler's own count).
async fn publish_all(bus: &Bus, handled: &AtomicU64) {
    for i in 0..PUBLISHES {
        bus.publish(Queued(i)).await.expect("published");
    }
    let expected = PUBLISHES * SUBSCRIPTIONS as u64;
    loop {
        let all_counted = bus
            .stats()
            .topic("jobs.queued")
            .is_some_and(|t| t.subscriptions.iter().all(|s| s.handled == PUBLISHES));
        if handled.load(Ordering::SeqCst) == expected && all_counted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn check(bus: &Bus, handles: Vec<SubscriptionHandle>) {
    let stats = bus.stats();
    let topic = stats.topic("jobs.queued").expect("registered");
    assert_eq!(topic.published, PUBLISHES);
    assert_eq!(topic.subscriptions.len(), SUBSCRIPTIONS);
    for sub in &topic.subscriptions {
        assert_eq!(sub.handled, PUBLISHES, "{} handled every event", sub.name);
    }
    drop(handles);
}

/// How the subscriptions of a scenario handle their events.
#[derive(Copy, Clone)]
enum Kind {
    Sync,
    Async,
}

/// 100 subscriptions of `kind` at concurrency 4, 200 publishes, and every
/// event handled by every one of them, within the guard against a hang.
async fn many_runners(kind: Kind) {
    let bus = Bus::builder().topic::<Queued>().build().unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..SUBSCRIPTIONS)
        .map(|i| {
            let handled = Arc::clone(&handled);
            let builder = bus.subscribe::<Queued>().concurrency(4);
            match kind {
                Kind::Sync => builder.name(format!("sync-{i}")).sync(move |e| {
                    assert!(e.0 < PUBLISHES, "an event that was never published");
                    handled.fetch_add(1, Ordering::SeqCst);
                }),
                Kind::Async => builder.name(format!("async-{i}")).handler(move |e| {
                    assert!(e.0 < PUBLISHES, "an event that was never published");
                    let handled = Arc::clone(&handled);
                    async move {
                        handled.fetch_add(1, Ordering::SeqCst);
                    }
                }),
            }
            .unwrap()
        })
        .collect();
    tokio::time::timeout(HANG, publish_all(&bus, &handled))
        .await
        .expect("the publisher was starved by the runners it woke");
    check(&bus, handles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sync_subscriptions_at_concurrency_four_do_not_stall_the_publisher() {
    many_runners(Kind::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_async_subscriptions_at_concurrency_four_do_not_stall_the_publisher() {
    many_runners(Kind::Async).await;
}
