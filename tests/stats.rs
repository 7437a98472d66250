//! Every snapshot of the stats, taken while handlers run or after, satisfies
//! every identity the README states:
//!
//! - `accepted == delivered + dropped + discarded + cut_off + queue_depth`;
//! - for handler subscriptions, `delivered == handled + dead_lettered +
//!   in_flight + cancelled`, and `dead_letters_unheard <= dead_lettered`;
//! - failed attempts are never fewer than the retries and dead letters they
//!   caused: `failed_attempts() >= retried + dead_lettered`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::{Bus, BusStats, Event, Overflow, RetryPolicy, SubscriberKind};

#[derive(Debug, Event)]
#[event(topic = "work")]
struct Work(u64);

fn check(stats: &BusStats) {
    for s in stats.subscriptions() {
        assert_eq!(
            s.accepted,
            s.delivered + s.dropped() + s.discarded + s.cut_off + s.queue_depth as u64,
            "accounting: {s}"
        );
        if s.kind != SubscriberKind::Stream {
            assert_eq!(
                s.delivered,
                s.handled + s.dead_lettered + s.in_flight as u64 + s.cancelled,
                "handling: {s}"
            );
            assert!(s.dead_letters_unheard <= s.dead_lettered, "{s}");
            assert!(
                s.failed_attempts() >= s.retried + s.dead_lettered,
                "attempts: {s}"
            );
        }
    }
}

/// Live snapshots while sync and async handlers (succeeding, failing,
/// retrying, dead-lettering), a lossy stream and a lossless one that holds
/// the publisher back run. Before the fix, 1–3 %
/// of live snapshots were off by one (`handled` was raised before
/// `in_flight` was lowered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_snapshots_satisfy_every_identity() {
    let bus = Bus::builder().topic::<Work>().build().unwrap();
    let retry = RetryPolicy::fixed(Duration::ZERO).max_attempts(2);
    let _h = [
        bus.subscribe::<Work>()
            .name("sync")
            .concurrency(2)
            .retry(retry)
            .sync(|e| if e.0 % 7 == 0 { Err("seven") } else { Ok(()) }),
        bus.subscribe::<Work>()
            .name("async")
            .concurrency(3)
            .retry(retry)
            .handler(|e| async move {
                tokio::task::yield_now().await;
                if e.0 % 5 == 0 {
                    Err("five")
                } else {
                    Ok(())
                }
            }),
    ]
    .map(Result::unwrap);
    let mut lossy = bus
        .subscribe::<Work>()
        .name("lossy")
        .capacity(8)
        .overflow(Overflow::DropOldest)
        .stream()
        .unwrap();
    // A lossless stream reads the topic's ring without its subscription's
    // lock, and its small queue makes the publisher wait for it.
    let mut ring = bus
        .subscribe::<Work>()
        .name("ring")
        .capacity(4)
        .overflow(Overflow::Block)
        .stream()
        .unwrap();
    let ring_reader = tokio::spawn(async move {
        for i in 0..20_000 {
            let e = ring.recv().await.expect("every event");
            assert_eq!(e.0, i, "in order");
            if i % 3 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if lossy.try_recv().is_err() {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..20_000 {
                bus.publish(Work(i)).await.unwrap();
            }
        })
    };
    let mut snapshots = 0u32;
    while !publisher.is_finished() {
        check(&bus.stats());
        snapshots += 1;
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    ring_reader.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let report = bus.shutdown(Duration::from_secs(60)).await;
    check(&report.stats);
    assert!(snapshots > 0);
    let dead_letters = bus.stats().topic("tidings.dead_letters").unwrap().published;
    let given_up: u64 = report.subscriptions().map(|s| s.dead_lettered).sum();
    assert_eq!(dead_letters, given_up, "one dead letter per event given up");
}
