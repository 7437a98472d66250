//! `PublishOptions::on_done`: run once every subscription that took the
//! event is done with it, never for a publish that was not accepted.
//!
//! Each test follows the event to the point where it must still be in hand
//! (`on_done` not run) and then past the point where it is done; waiting
//! has a generous deadline as a guard against a hang, never a measurement.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::{Bus, Event, Overflow, PublishOptions, RetryPolicy};

#[derive(Debug, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

fn bus() -> Bus {
    Bus::builder().topic::<OrderPlaced>().build().unwrap()
}

/// Options whose `on_done` counts its runs.
fn counted() -> (PublishOptions, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let options = PublishOptions::new().on_done(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    (options, runs)
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn runs_once_every_stream_has_let_go() {
    let bus = bus();
    let mut a = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let mut b = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let (options, runs) = counted();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "queued in both");
    let first = a.recv().await.unwrap();
    drop(first);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "still queued in b");
    let second = b.recv().await.unwrap();
    let kept = second.clone();
    drop(second);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a clone is still held");
    drop(kept);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn runs_at_once_when_no_subscription_took_it() {
    let bus = bus();
    let (options, runs) = counted();
    let receipt = bus
        .try_publish_with(OrderPlaced { id: 1 }, options)
        .unwrap();
    assert_eq!(receipt.enqueued, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn never_runs_for_a_refused_or_duplicate_publish() {
    let bus = bus();
    let _full = bus
        .subscribe::<OrderPlaced>()
        .capacity(1)
        .overflow(Overflow::Fail)
        .stream()
        .unwrap();
    bus.try_publish(OrderPlaced { id: 1 }).unwrap();
    let (options, refused) = counted();
    let err = bus
        .try_publish_with(OrderPlaced { id: 2 }, options)
        .unwrap_err();
    drop(err); // the event handed back, and the options with it
    assert_eq!(refused.load(Ordering::SeqCst), 0, "refused: not accepted");

    let bus = self::bus();
    let (first, _) = counted();
    bus.try_publish_with(OrderPlaced { id: 3 }, first.idempotency_key("k"))
        .unwrap();
    let (again, duplicate) = counted();
    let receipt = bus
        .try_publish_with(OrderPlaced { id: 3 }, again.idempotency_key("k"))
        .unwrap();
    assert!(receipt.is_duplicate());
    assert_eq!(
        duplicate.load(Ordering::SeqCst),
        0,
        "a duplicate: not accepted"
    );
}

#[tokio::test]
async fn runs_when_the_overflow_policy_evicts_it() {
    let bus = bus();
    let mut latest = bus
        .subscribe::<OrderPlaced>()
        .capacity(1)
        .overflow(Overflow::DropOldest)
        .stream()
        .unwrap();
    let (options, runs) = counted();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    bus.publish(OrderPlaced { id: 2 }).await.unwrap(); // evicts the first
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(latest.recv().await.unwrap().id, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_handler_is_done_when_it_returns() {
    let bus = bus();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let _h = bus
        .subscribe::<OrderPlaced>()
        .sync(move |_o| {
            let _ = gate.lock().unwrap().recv();
        })
        .unwrap();
    let (options, runs) = counted();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    // The handler holds it (blocked on the gate) until released.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler is running");
    release.send(()).unwrap();
    until("the handler to finish", || runs.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn an_async_handler_is_done_after_its_last_attempt() {
    let bus = bus();
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (Arc::clone(&attempts), Arc::clone(&seen));
    let (options, runs) = counted();
    let runs_inside = Arc::clone(&runs);
    let _h = bus
        .subscribe::<OrderPlaced>()
        .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(3))
        .handler(move |_o| {
            let (a, s, r) = (Arc::clone(&a), Arc::clone(&s), Arc::clone(&runs_inside));
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                // Not done while any attempt runs.
                s.lock().unwrap().push(r.load(Ordering::SeqCst));
                Err::<(), _>("fails every time")
            }
        })
        .unwrap();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    until("the retries to end", || runs.load(Ordering::SeqCst) == 1).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(*seen.lock().unwrap(), vec![0, 0, 0]);
}

#[tokio::test]
async fn a_shutdown_that_cuts_it_off_lets_go_of_it() {
    let bus = bus();
    let _stuck = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let (options, runs) = counted();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    let report = bus.shutdown(Duration::from_millis(10)).await;
    assert!(!report.is_clean(), "{report:?}");
    drop(_stuck);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A copy kept by a log is not a subscription: neither the dead-letter
/// topic's retained log nor the event's own topic's holds `on_done` back.
#[tokio::test]
async fn a_retained_copy_does_not_hold_it_back() {
    let bus = Bus::builder()
        .topic_with::<OrderPlaced>(tidings::TopicConfig::default().retain(10))
        .dead_letters(tidings::TopicConfig::default().retain(10))
        .build()
        .unwrap();
    let _h = bus
        .subscribe::<OrderPlaced>()
        .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(1))
        .handler(|_o| async { Err::<(), _>("gives up") })
        .unwrap();
    let (options, runs) = counted();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    until("the dead letter", || runs.load(Ordering::SeqCst) == 1).await;
    let stats = bus.stats();
    let dead = stats.topic("tidings.dead_letters").unwrap();
    assert_eq!(dead.published, 1, "dead-lettered, and retained");
    // A late reader of the retained dead letter still gets the event.
    let mut late = bus
        .dead_letters()
        .from(tidings::StartAt::Earliest)
        .stream()
        .unwrap();
    let letter = late.recv().await.unwrap();
    assert_eq!(
        letter.event.downcast_ref::<OrderPlaced>().map(|o| o.id),
        Some(1)
    );
    drop(letter);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
}

/// A stream that got the event from the retained log holds it like one
/// that got it live.
#[tokio::test]
async fn a_late_reader_given_a_retained_event_holds_it() {
    let bus = Bus::builder()
        .topic_with::<OrderPlaced>(tidings::TopicConfig::default().retain(10))
        .build()
        .unwrap();
    let mut live = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let (options, runs) = counted();
    bus.publish_with(OrderPlaced { id: 1 }, options)
        .await
        .unwrap();
    let mut late = bus
        .subscribe::<OrderPlaced>()
        .from(tidings::StartAt::Earliest)
        .stream()
        .unwrap();
    drop(live.recv().await.unwrap());
    assert_eq!(runs.load(Ordering::SeqCst), 0, "queued for the late reader");
    drop(late.recv().await.unwrap());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the log does not hold it");
}
