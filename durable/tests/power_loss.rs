//! The power-loss simulation: the store records every sync in a
//! [`Ledger`]; at a random point the test halts it (nothing more is
//! written or synced) and throws away every byte that was not synced,
//! leaving a little junk where a sector was half written. Then it opens
//! the store again and checks that every publish that returned `Ok` at the
//! *synced* level is still there (its subscription gets it), that the
//! store opens, and that the torn part was reported.
//!
//! `TIDINGS_POWER_CYCLES` sets the number of cuts (default 40; the
//! closing note gives 200). `TIDINGS_POWER_SEED` replays a run.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::{Bus, Event};
use tidings_durable::{DurableTopics, Ledger, Store, StoreOptions, TopicOptions};

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "power.synced")]
struct Order {
    id: u64,
}

/// A topic at the *written* level beside it: its tail is mostly unsynced,
/// so cuts tear it often (its `Ok`s may be lost: that is the level).
#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "power.written")]
struct Note {
    id: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_synced_ok_survives_a_power_cut() {
    let cycles = common::setting("TIDINGS_POWER_CYCLES", 40);
    let seed = common::seed("TIDINGS_POWER_SEED");
    eprintln!("power-loss simulation: {cycles} cuts, TIDINGS_POWER_SEED={seed}");
    let rng = Arc::new(Mutex::new(common::Rng(seed)));
    let dir = tempfile::tempdir().expect("tempdir");
    // Ids whose synced publish returned Ok, and ids the audit saw.
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut torn_reported = 0u64;
    let mut junk_left = 0u64;
    let mut lost_bytes = 0u64;
    let began = std::time::Instant::now();
    for cycle in 0..=cycles {
        let ledger = Arc::new(Ledger::new());
        let store = Store::open_with(
            dir.path(),
            StoreOptions::default().ledger(Arc::clone(&ledger)),
        )
        .expect("the store opens after every cut");
        let bus = Bus::builder()
            .durable_topic::<Order>()
            .durable_topic::<Note>()
            .build()
            .expect("bus");
        let orders = store
            .topic_with::<Order>(&bus, TopicOptions::default().segment_bytes(16 << 10))
            .expect("topic");
        let notes = store
            .topic_with::<Note>(
                &bus,
                TopicOptions::default()
                    .segment_bytes(16 << 10)
                    .ack(tidings_durable::Ack::Written),
            )
            .expect("topic");
        torn_reported += orders.recovery().truncated_bytes + notes.recovery().truncated_bytes;
        let audit = Arc::clone(&seen);
        let _audit = orders
            .subscribe("audit")
            .sync(move |e| {
                audit.lock().unwrap().insert(e.id);
            })
            .expect("subscribed");
        // Everything synced before the cut comes to the audit.
        for _ in 0..20_000 {
            if orders
                .stats()
                .subscriptions
                .first()
                .is_some_and(|s| s.lag == 0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        {
            let acked = acked.lock().unwrap();
            let seen = seen.lock().unwrap();
            let missing: Vec<&u64> = acked
                .iter()
                .filter(|id| !seen.contains(id))
                .take(5)
                .collect();
            assert!(
                missing.is_empty(),
                "cycle {cycle}: synced publishes lost: {missing:?}"
            );
        }
        if cycle == cycles {
            break;
        }
        // Three publishers flat out; the cut comes after a random while.
        let mut lanes = Vec::new();
        for lane in 0..3u64 {
            let orders = orders.clone();
            let acked = Arc::clone(&acked);
            lanes.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = (cycle << 32) | (lane << 24) | n;
                    match orders.publish(Order { id }).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(_) => return, // halted
                    }
                }
            }));
        }
        lanes.push(tokio::spawn({
            let notes = notes.clone();
            async move {
                for n in 0.. {
                    if notes.publish(Note { id: n }).await.is_err() {
                        return; // halted
                    }
                    if n % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
        let wait = rng.lock().unwrap().next() % 40;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        store.halt();
        for lane in lanes {
            lane.await.expect("publisher");
        }
        bus.shutdown(Duration::ZERO).await;
        let junk_rng = Arc::clone(&rng);
        let cut = ledger
            .cut_power(|_| {
                let mut rng = junk_rng.lock().unwrap();
                let n = (rng.next() % 300) as usize;
                (0..n).map(|_| rng.next() as u8).collect()
            })
            .expect("cut");
        junk_left += cut.junk_bytes;
        lost_bytes += cut.bytes_lost;
    }
    eprintln!(
        "power-loss simulation: {cycles} cuts in {:.1?}: {} synced publishes acknowledged, all found; {lost_bytes} unsynced bytes thrown away, {junk_left} bytes of junk left, {torn_reported} bytes cut by recovery",
        began.elapsed(),
        acked.lock().unwrap().len()
    );
    assert!(!acked.lock().unwrap().is_empty());
    if junk_left > 0 {
        assert!(
            torn_reported > 0,
            "junk was left but recovery reported no torn tail"
        );
    }
}
