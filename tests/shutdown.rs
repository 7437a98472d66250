//! Graceful shutdown: refuse, drain, wait, report; and what a deadline cuts.

use std::pin::pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures::poll;
use tidings::error::{PublishError, SubscribeError};
use tidings::{Bus, Event};

#[derive(Debug, PartialEq, Event)]
#[event(topic = "work.item")]
struct Item(u64);

fn bus() -> Bus {
    Bus::builder()
        .topic::<Item>()
        .build()
        .expect("valid allow-list")
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_queue_into_its_handler_and_stream() {
    let bus = bus();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (h1, h2) = (Arc::clone(&handled), Arc::clone(&handled));
    let _sync = bus
        .subscribe::<Item>()
        .name("sync")
        .sync(move |e| {
            std::thread::sleep(Duration::from_micros(50));
            h1.lock().unwrap().push(("sync", e.0));
        })
        .unwrap();
    let _async = bus
        .subscribe::<Item>()
        .name("async")
        .handler(move |e| {
            let h2 = Arc::clone(&h2);
            async move {
                tokio::task::yield_now().await;
                h2.lock().unwrap().push(("async", e.0));
            }
        })
        .unwrap();
    let mut stream = bus.subscribe::<Item>().name("stream").stream().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = stream.recv().await {
            got.push(e.0);
        }
        got
    });
    for i in 0..200 {
        bus.publish(Item(i)).await.unwrap();
    }
    let report = bus.shutdown(LONG).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.cut_off(), 0);
    for s in report.subscriptions() {
        assert_eq!(
            (s.accepted, s.delivered, s.queue_depth),
            (200, 200, 0),
            "{s}"
        );
        assert!(s.closed);
    }
    let count = |kind: &str| {
        handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .count()
    };
    assert_eq!(count("sync"), 200);
    assert_eq!(count("async"), 200);
    let streamed = reader.await.unwrap();
    assert_eq!(
        streamed,
        (0..200).collect::<Vec<_>>(),
        "the stream ended after draining"
    );
}

#[tokio::test]
async fn after_shutdown_publishing_fails_and_hands_the_event_back() {
    let bus = bus();
    let publisher = bus.publisher::<Item>().unwrap();
    bus.shutdown(LONG).await;
    let err = bus.publish(Item(1)).await.expect_err("closed");
    assert!(matches!(
        err,
        PublishError::Closed {
            topic: "work.item",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "the bus is shut down; the event on topic `work.item` was not published"
    );
    assert_eq!(err.into_inner(), Item(1));
    assert!(matches!(
        bus.try_publish(Item(2)),
        Err(PublishError::Closed { .. })
    ));
    assert!(matches!(
        publisher.try_publish(Item(3)),
        Err(PublishError::Closed { .. })
    ));
    assert!(matches!(
        bus.subscribe::<Item>().stream(),
        Err(SubscribeError::Closed { topic: "work.item" })
    ));
    assert_eq!(bus.stats().topic("work.item").unwrap().published, 0);
}

#[tokio::test]
async fn a_publisher_waiting_for_room_is_released_with_closed() {
    let bus = bus();
    let mut sub = bus.subscribe::<Item>().capacity(1).stream().unwrap();
    bus.publish(Item(1)).await.unwrap();
    let mut waiting = pin!(bus.publish(Item(2)));
    assert!(poll!(waiting.as_mut()).is_pending());

    let mut shutdown = pin!(bus.shutdown(LONG));
    assert!(
        poll!(shutdown.as_mut()).is_pending(),
        "item 1 is not read yet"
    );
    let err = waiting.await.expect_err("released by shutdown");
    assert_eq!(err.into_inner(), Item(2));

    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    assert!(sub.recv().await.is_none());
    let report = shutdown.await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.stats.topic("work.item").unwrap().published, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cuts_off_what_is_left_and_the_report_says_so() {
    let bus = bus();
    // A stream nobody reads: its events can only be cut off.
    let _unread = bus.subscribe::<Item>().name("unread").stream().unwrap();
    // An async handler stuck on its first event.
    let _stuck = bus
        .subscribe::<Item>()
        .name("stuck")
        .handler(|_| std::future::pending::<()>())
        .unwrap();
    for i in 0..5 {
        bus.publish(Item(i)).await.unwrap();
    }
    tokio::task::yield_now().await; // let the handler take its first event
    let report = bus.shutdown(Duration::from_millis(100)).await;
    assert!(report.deadline_hit);
    assert!(!report.is_clean());
    let by_name = |n: &str| {
        report
            .subscriptions()
            .find(|s| s.name == n)
            .cloned()
            .unwrap()
    };
    let unread = by_name("unread");
    assert_eq!(
        (unread.delivered, unread.cut_off, unread.queue_depth),
        (0, 5, 0)
    );
    let stuck = by_name("stuck");
    assert_eq!((stuck.delivered, stuck.cut_off, stuck.in_flight), (1, 4, 1));
    assert_eq!(report.cut_off(), 9);
    assert_eq!(report.in_flight(), 1);
    for s in report.subscriptions() {
        assert_eq!(s.accepted, s.delivered + s.undelivered(), "{s}");
    }
    let text = report.to_string();
    assert!(
        text.contains("deadline hit, 9 event(s) cut off, 1 handler run(s) unfinished"),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_twice_changes_nothing() {
    let bus = bus();
    let (tx, rx) = mpsc::channel();
    let _h = bus
        .subscribe::<Item>()
        .sync(move |e| tx.send(e.0).unwrap())
        .unwrap();
    bus.publish(Item(7)).await.unwrap();
    let first = bus.shutdown(LONG).await;
    let second = bus.shutdown(LONG).await;
    assert!(first.is_clean() && second.is_clean());
    assert_eq!(first.stats, second.stats);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [7]);
}

#[tokio::test]
async fn clones_share_one_bus() {
    let bus = bus();
    let clone = bus.clone();
    let mut sub = bus.subscribe::<Item>().stream().unwrap();
    clone.publish(Item(1)).await.unwrap();
    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    clone.shutdown(LONG).await;
    assert!(bus.publish(Item(2)).await.is_err());
}
