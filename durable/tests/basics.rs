//! Durable topics end to end in one process: publish, subscribe, close,
//! open again, resume.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::{Bus, Event};
use tidings_durable::{Ack, DurableTopics, Store, StoreError, TopicOptions};

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "jobs.requested")]
struct Job {
    id: u64,
}

fn bus() -> Bus {
    Bus::builder()
        .durable_topic::<Job>()
        .build()
        .expect("valid")
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_restart_and_settled_ones_do_not_come_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let store = Store::open(dir.path()).expect("open");
        let bus = bus();
        let jobs = store.topic::<Job>(&bus).expect("topic");
        for id in 1..=10 {
            let receipt = jobs.publish(Job { id }).await.expect("stored");
            assert_eq!(receipt.seq, id);
        }
        let log = Arc::clone(&seen);
        let _worker = jobs
            .subscribe("worker")
            .sync(move |job| {
                log.lock().unwrap().push((job.id, job.redelivered()));
            })
            .expect("subscribed");
        wait_for(|| seen.lock().unwrap().len() == 10).await;
        let report = bus.shutdown(Duration::from_secs(10)).await;
        assert!(report.is_clean(), "{report:?}");
        store.close().expect("closed");
    }
    // Published while nobody was subscribed, in the next run.
    let store = Store::open(dir.path()).expect("open again");
    let bus = bus();
    let jobs = store.topic::<Job>(&bus).expect("topic");
    assert_eq!(jobs.recovery().truncated_bytes, 0);
    for id in 11..=15 {
        jobs.publish(Job { id }).await.expect("stored");
    }
    let log = Arc::clone(&seen);
    let _worker = jobs
        .subscribe("worker")
        .sync(move |job| {
            log.lock().unwrap().push((job.id, job.redelivered()));
        })
        .expect("subscribed");
    wait_for(|| seen.lock().unwrap().len() == 15).await;
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<(u64, bool)> = (1..=15).map(|id| (id, false)).collect();
    assert_eq!(seen, expected, "each once, in order, none marked again");
    let stats = jobs.stats();
    assert_eq!(stats.next_seq, 16);
    wait_for(|| jobs.stats().subscriptions[0].lag == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_events_come_again_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        let bus = bus();
        let jobs = store.topic::<Job>(&bus).expect("topic");
        for id in 1..=5 {
            jobs.publish(Job { id }).await.expect("stored");
        }
        // A stream that reads two and holds the second: only the first is
        // settled when the process goes.
        let mut reader = jobs.subscribe("reader").stream().expect("subscribed");
        let first = reader.recv().await.expect("fed");
        drop(first);
        let second = reader.recv().await.expect("fed");
        assert_eq!(second.id, 2);
        // Let the settlement of the first reach the log.
        wait_for(|| {
            jobs.stats()
                .subscriptions
                .first()
                .is_some_and(|s| s.settled_below == 2)
        })
        .await;
        std::mem::forget(second); // the process "dies" with it in hand
        drop(reader);
        store.close().expect("closed");
    }
    let store = Store::open(dir.path()).expect("open again");
    let bus = bus();
    let jobs = store.topic::<Job>(&bus).expect("topic");
    let mut reader = jobs.subscribe("reader").stream().expect("subscribed");
    let mut got = Vec::new();
    for _ in 2..=5 {
        let e = reader.recv().await.expect("fed");
        got.push((e.id, e.redelivered()));
    }
    // 2 was in hand, so it is marked; of 3..5, those the feeder had
    // offered before the end are marked too (in order: the marked ones
    // come first), the rest are first deliveries.
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![2, 3, 4, 5]);
    assert!(got[0].1, "the event in hand at the end comes again marked");
    let marks: Vec<bool> = got.iter().map(|(_, again)| *again).collect();
    assert!(marks.windows(2).all(|w| w[0] || !w[1]), "{marks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_dedup_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        let jobs = store
            .topic_with::<Job>(&bus(), TopicOptions::default().ack(Ack::Written))
            .expect("topic");
        let first = jobs
            .publish_keyed(Job { id: 1 }, "job-1")
            .await
            .expect("stored");
        assert!(!first.duplicate);
    }
    let store = Store::open(dir.path()).expect("open again");
    let jobs = store.topic::<Job>(&bus()).expect("topic");
    let again = jobs
        .publish_keyed(Job { id: 1 }, "job-1")
        .await
        .expect("answered");
    assert!(again.duplicate);
    assert_eq!(again.seq, 1);
    let other = jobs
        .publish_keyed(Job { id: 2 }, "job-2")
        .await
        .expect("stored");
    assert_eq!((other.seq, other.duplicate), (2, false));
}

#[test]
fn a_second_open_of_the_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = Store::open(dir.path()).expect("open");
    match Store::open(dir.path()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[tokio::test]
async fn the_bus_refuses_its_own_publishes_of_a_durable_topic() {
    let bus = bus();
    let err = bus
        .publish(Job { id: 1 })
        .await
        .expect_err("fed by the store");
    assert!(err.to_string().contains("tidings-durable"), "{err}");
    let plain = Bus::builder().topic::<Job>().build().expect("valid");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let err = store.topic::<Job>(&plain).expect_err("not durable there");
    assert!(matches!(err, StoreError::Topic { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_segments_go_and_disk_use_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let bus = bus();
    let segment = 8 << 10;
    let jobs = store
        .topic_with::<Job>(
            &bus,
            TopicOptions::default()
                .ack(Ack::Written)
                .segment_bytes(segment),
        )
        .expect("topic");
    let handled = Arc::new(Mutex::new(0u64));
    let count = Arc::clone(&handled);
    let _worker = jobs
        .subscribe("worker")
        .sync(move |_| *count.lock().unwrap() += 1)
        .expect("subscribed");
    for id in 1..=5_000 {
        jobs.publish(Job { id }).await.expect("stored");
    }
    wait_for(|| *handled.lock().unwrap() == 5_000).await;
    // Everything up to 5,000 is settled, and a place never moves back: at
    // the next roll every segment that holds only events up to 5,000 goes.
    // 400 more events (16 KB of event records alone) roll at least once.
    wait_for(|| jobs.stats().subscriptions[0].lag == 0).await;
    for id in 5_001..=5_400 {
        jobs.publish(Job { id }).await.expect("stored");
    }
    let stats = jobs.stats();
    // Without retention the log would hold all 5,400 events (over 200 KB);
    // what may stay is the segment holding event 5,000 and those after it.
    assert!(stats.bytes < 80_000, "{stats:?}");
    assert_eq!(stats.subscriptions[0].expired, 0);
    // A subscription gone for good is forgotten, and holds nothing back.
    drop(_worker);
    assert!(!jobs.forget("nobody").expect("appended"));
    assert!(jobs.forget("worker").expect("appended"));
    assert!(jobs.stats().subscriptions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_lets_go_of_unsettled_events_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let bus = bus();
    let jobs = store
        .topic_with::<Job>(
            &bus,
            TopicOptions::default()
                .ack(Ack::Written)
                .segment_bytes(4096)
                .max_bytes(32 << 10),
        )
        .expect("topic");
    // A stream nobody reads: it settles nothing.
    let _idle = jobs.subscribe("idle").stream().expect("subscribed");
    wait_for(|| jobs.stats().subscriptions.len() == 1).await;
    for id in 1..=3_000 {
        jobs.publish(Job { id }).await.expect("stored");
    }
    let stats = jobs.stats();
    // Within one segment of the limit.
    assert!(stats.bytes <= (32 << 10) + 8192, "{stats:?}");
    let idle = &stats.subscriptions[0];
    assert!(idle.expired > 0, "{stats:?}");
    // It settled nothing: everything below its place expired, everything
    // from it on is owed.
    assert_eq!(idle.expired, idle.settled_below - 1, "{idle:?}");
    assert_eq!(idle.lag, 3_000 - idle.expired, "{idle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_stored_with_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        let bus = bus();
        let jobs = store.topic::<Job>(&bus).expect("topic");
        let handled = Arc::new(Mutex::new(0u64));
        let count = Arc::clone(&handled);
        let _worker = jobs
            .subscribe("worker")
            .sync(move |job| {
                *count.lock().unwrap() += 1;
                if job.id == 2 {
                    Err(format!("job {} has no template", job.id))
                } else {
                    Ok(())
                }
            })
            .expect("subscribed");
        for id in 1..=3 {
            jobs.publish(Job { id }).await.expect("stored");
        }
        wait_for(|| {
            jobs.stats()
                .subscriptions
                .first()
                .is_some_and(|s| s.lag == 0)
        })
        .await;
        store.close().expect("closed");
    }
    let store = Store::open(dir.path()).expect("open again");
    let jobs = store.topic::<Job>(&bus()).expect("topic");
    let letters = jobs.dead_letters("worker").expect("read");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].seq, 2);
    assert_eq!(letters[0].event, Some(Job { id: 2 }));
    assert!(
        letters[0].error.contains("job 2 has no template"),
        "{}",
        letters[0].error
    );
    assert!(jobs.dead_letters("nobody").expect("read").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_close_fails_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let jobs = store.topic::<Job>(&bus()).expect("topic");
    jobs.publish(Job { id: 1 }).await.expect("stored");
    store.close().expect("closed");
    let err = tokio::time::timeout(Duration::from_secs(30), jobs.publish(Job { id: 2 }))
        .await
        .expect("it does not wait for a syncer that is gone")
        .expect_err("closed");
    assert!(matches!(err.reason, StoreError::Stopped { .. }), "{err}");
    assert_eq!(err.event, Job { id: 2 });
}

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "jobs.rendered")]
struct Rendered {
    id: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_handler_enqueues_follow_up_work_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let bus = Bus::builder()
        .durable_topic::<Job>()
        .durable_topic::<Rendered>()
        .build()
        .expect("bus");
    let jobs = store.topic::<Job>(&bus).expect("topic");
    let rendered = store.topic::<Rendered>(&bus).expect("topic"); // synced
    let next = rendered.clone();
    let _worker = jobs
        .subscribe("worker")
        .sync(move |job| {
            // No `.await` on a bus thread: the blocking publish, synced.
            next.publish_keyed_blocking(Rendered { id: job.id }, format!("rendered-{}", job.id))
                .map(|_| ())
                .map_err(|e| e.reason)
        })
        .expect("subscribed");
    let done = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&done);
    let _notify = rendered
        .subscribe("notify")
        .sync(move |r| log.lock().unwrap().push(r.id))
        .expect("subscribed");
    for id in 1..=20 {
        jobs.publish(Job { id }).await.expect("stored");
    }
    wait_for(|| done.lock().unwrap().len() == 20).await;
    assert_eq!(*done.lock().unwrap(), (1..=20).collect::<Vec<_>>());
    // The key makes a second enqueue of the same follow-up a duplicate.
    let again = rendered
        .publish_keyed_blocking(Rendered { id: 1 }, "rendered-1")
        .expect("answered");
    assert!(again.duplicate);
    let stats = rendered.stats();
    assert!(
        stats.sync.syncs >= 1 && stats.sync.synced_publishes >= 20,
        "{stats:?}"
    );
}
