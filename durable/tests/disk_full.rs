//! A disk that fills up: the append that does not fit writes part of
//! itself and fails with `ENOSPC` (the store's `Ledger` plays the disk).
//! The publish must fail with an error naming the file, hand the event
//! back and leave nothing of it in the log; once there is room again the
//! topic goes on, and after a reopen the log holds exactly the events
//! whose publish returned `Ok`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::{Bus, Event};
use tidings_durable::{DurableTopics, Ledger, Store, StoreError, StoreOptions, TopicOptions};

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "jobs.full")]
struct Job {
    id: u64,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_publish_and_corrupts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(Ledger::new());
    let mut stored = Vec::new();
    {
        let store = Store::open_with(
            dir.path(),
            StoreOptions::default().ledger(Arc::clone(&ledger)),
        )
        .expect("open");
        let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
        let jobs = store
            .topic_with::<Job>(&bus, TopicOptions::default().segment_bytes(64 << 10))
            .expect("topic");
        // Room for a few events, then the disk is full part-way through one.
        ledger.limit_space(Some(1_000));
        let mut refused = 0;
        for id in 1..=40u64 {
            let job = Job {
                id,
                body: "x".repeat(100),
            };
            match jobs.publish(job.clone()).await {
                Ok(receipt) => stored.push((receipt.seq, id)),
                Err(err) => {
                    refused += 1;
                    assert_eq!(err.event, job, "the event is handed back");
                    match &err.reason {
                        StoreError::Io { path, source, .. } => {
                            assert_eq!(source.raw_os_error(), Some(28), "{err}");
                            assert!(path.starts_with(dir.path()), "{}", path.display());
                        }
                        other => panic!("expected an Io error, got {other}"),
                    }
                }
            }
        }
        assert!(
            refused > 0 && !stored.is_empty(),
            "{refused} refused, {} stored",
            stored.len()
        );
        // Room again: the topic goes on where it was.
        ledger.limit_space(None);
        let receipt = jobs
            .publish(Job {
                id: 100,
                body: String::new(),
            })
            .await
            .expect("stored once there is room");
        assert_eq!(
            receipt.seq,
            stored.len() as u64 + 1,
            "no number was used up by a failed append"
        );
        stored.push((receipt.seq, 100));
        store.close().expect("closed");
    }
    let store = Store::open(dir.path()).expect("open again");
    let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
    let jobs = store.topic::<Job>(&bus).expect("topic");
    assert_eq!(jobs.recovery().truncated_bytes, 0, "{:?}", jobs.recovery());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let _reader = jobs
        .subscribe("reader")
        .sync(move |job| log.lock().unwrap().push((job.seq(), job.id)))
        .expect("subscribed");
    for _ in 0..5_000 {
        if seen.lock().unwrap().len() >= stored.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        stored,
        "exactly the events whose publish returned Ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_failed_append_finds_no_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(Ledger::new());
    let mut stored = 0u64;
    {
        let store = Store::open_with(
            dir.path(),
            StoreOptions::default().ledger(Arc::clone(&ledger)),
        )
        .expect("open");
        let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
        let jobs = store.topic::<Job>(&bus).expect("topic");
        ledger.limit_space(Some(1_000));
        for id in 1.. {
            match jobs
                .publish(Job {
                    id,
                    body: "x".repeat(100),
                })
                .await
            {
                Ok(_) => stored += 1,
                Err(_) => break,
            }
        }
        // The process dies here: nothing more is written.
        store.halt();
    }
    let store = Store::open(dir.path()).expect("open again");
    let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
    let jobs = store.topic::<Job>(&bus).expect("topic");
    // The part of the failed append that reached the file was cut at once.
    assert_eq!(jobs.recovery().truncated_bytes, 0, "{:?}", jobs.recovery());
    assert_eq!(jobs.stats().next_seq, stored + 1);
}
