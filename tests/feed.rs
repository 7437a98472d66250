//! Subscriptions fed by a storage layer (`tidings::feed`): what durable
//! topics stand on. The topic refuses the bus's own publishes and
//! ordinary subscriptions; a fed subscription gets what its feeder offers
//! and tells it how each event was settled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tidings::error::{Refusal, SubscribeError};
use tidings::feed::{self, Fed, Settled};
use tidings::{Bus, Event, TopicConfig};

#[derive(Debug, Event)]
#[event(topic = "jobs.requested")]
struct Job(u64);

fn fed_bus() -> Bus {
    Bus::builder()
        .topic_with::<Job>(TopicConfig::default().fed_by("a test store"))
        .build()
        .expect("valid")
}

type Log = Arc<Mutex<Vec<(u64, Option<Settled>)>>>;

fn offer(seq: u64, log: &Log) -> Fed<Job> {
    let log = Arc::clone(log);
    Fed::new(Job(seq), seq, SystemTime::now()).on_done(move |settlement| {
        if settlement.how == Some(Settled::DeadLettered) {
            assert_eq!(settlement.error.as_deref(), Some("job 2 always fails"));
        } else {
            assert_eq!(settlement.error, None);
        }
        log.lock().unwrap().push((seq, settlement.how));
    })
}

#[tokio::test]
async fn a_fed_topic_refuses_the_bus_publishes_and_plain_subscriptions() {
    let bus = fed_bus();
    let err = bus.publish(Job(1)).await.expect_err("fed elsewhere");
    assert_eq!(
        *err.reason(),
        Refusal::Fed {
            topic: "jobs.requested",
            owner: "a test store"
        }
    );
    assert_eq!(err.event().0, 1, "the event is handed back");
    let err = bus.subscribe::<Job>().stream().expect_err("fed elsewhere");
    assert!(matches!(err, SubscribeError::Fed { .. }), "{err}");

    // And a feeder cannot take over a topic nobody handed it.
    let plain = Bus::builder().topic::<Job>().build().expect("valid");
    let (slot, _pending) = feed::slot::<Job>();
    let err = plain
        .subscribe::<Job>()
        .fed(slot)
        .stream()
        .expect_err("not fed");
    assert!(matches!(err, SubscribeError::NotFed { .. }), "{err}");
}

#[tokio::test]
async fn handlers_and_streams_settle_what_they_are_fed() {
    let bus = fed_bus();
    let log: Log = Arc::default();

    let (slot, pending) = feed::slot::<Job>();
    let _worker = bus
        .subscribe::<Job>()
        .name("worker")
        .fed(slot)
        .sync(|job| {
            if job.0 == 2 {
                Err("job 2 always fails")
            } else {
                Ok(())
            }
        })
        .expect("attached");
    let feed = pending.attached().await.expect("attached");
    assert_eq!(feed.name(), "worker");
    for seq in 1..=3 {
        feed.offer(offer(seq, &log)).await.expect("taken");
    }

    let (slot, pending) = feed::slot::<Job>();
    let mut reader = bus
        .subscribe::<Job>()
        .name("reader")
        .fed(slot)
        .stream()
        .expect("attached");
    let feed_r = pending.attached().await.expect("attached");
    feed_r
        .offer(offer(10, &log).redelivered(true))
        .await
        .expect("taken");
    let got = reader.recv().await.expect("fed");
    assert_eq!((got.0, got.seq(), got.redelivered()), (10, 10, true));
    assert!(
        log.lock().unwrap().iter().all(|(seq, _)| *seq != 10),
        "still in hand"
    );
    drop(got);

    let report = bus.shutdown(Duration::from_secs(10)).await;
    assert!(!report.deadline_hit, "{report:?}");
    let mut seen = log.lock().unwrap().clone();
    seen.sort_by_key(|(seq, _)| *seq);
    assert_eq!(
        seen,
        vec![
            (1, Some(Settled::Handled)),
            (2, Some(Settled::DeadLettered)),
            (3, Some(Settled::Handled)),
            (10, Some(Settled::Read)),
        ]
    );
    // Once the bus is shut down, a feeder is told so, and the event it
    // offered is reported unsettled.
    let closed = feed.offer(offer(4, &log)).await;
    assert!(closed.is_err());
    assert_eq!(log.lock().unwrap().last(), Some(&(4, None)));
}

#[tokio::test]
async fn an_event_cut_off_at_the_deadline_is_unsettled() {
    let bus = fed_bus();
    let log: Log = Arc::default();
    let (slot, pending) = feed::slot::<Job>();
    // A stream nobody reads: what it holds at the deadline is cut off.
    let _reader = bus.subscribe::<Job>().fed(slot).stream().expect("attached");
    let feed = pending.attached().await.expect("attached");
    feed.offer(offer(1, &log)).await.expect("taken");
    let report = bus.shutdown(Duration::ZERO).await;
    assert!(!report.is_clean());
    assert_eq!(*log.lock().unwrap(), vec![(1, None)]);
    assert_eq!(feed.stats().accepted, 1);
}

#[tokio::test]
async fn a_feeder_waits_for_room() {
    let bus = fed_bus();
    let log: Log = Arc::default();
    let (slot, pending) = feed::slot::<Job>();
    let mut reader = bus
        .subscribe::<Job>()
        .capacity(1)
        .fed(slot)
        .stream()
        .expect("attached");
    let feed = Arc::new(pending.attached().await.expect("attached"));
    feed.offer(offer(1, &log)).await.expect("taken");
    let second = tokio::spawn({
        let feed = Arc::clone(&feed);
        let log = Arc::clone(&log);
        async move { feed.offer(offer(2, &log)).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(feed.stats().accepted, 1, "the second waits for room");
    assert_eq!(reader.recv().await.map(|e| e.0), Some(1));
    second.await.expect("joined").expect("taken");
    assert_eq!(reader.recv().await.map(|e| e.0), Some(2));
}
