//! A flood against a bridge, in a test binary of its own so that the
//! process's resident memory is the bridge's: what a stalled reader and a
//! hostile sender can make it hold stays inside its byte budget, and
//! honest traffic keeps flowing beside poison. The throughput figures are
//! printed (`cargo test --test flood -- --nocapture`), never asserted.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{header_block, resident_bytes, until, NatsServer};
use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics};

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
    #[serde(default)]
    pad: String,
}

const BUDGET: usize = 8 << 20;
const MIB: f64 = (1 << 20) as f64;

/// Samples the resident memory every millisecond until stopped; the peak.
fn watch_memory(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(resident_bytes());
            std::thread::sleep(Duration::from_millis(1));
        }
        peak
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_stays_inside_the_byte_budget_and_honest_traffic_flows() {
    let server = NatsServer::start();

    // 1. A stalled reader and a flood of 32 KiB orders: the bridge holds no
    //    more than its budget; what does not fit is dropped and counted.
    let bus = Bus::builder()
        .bridge_topics()
        .topic::<OrderCreated>()
        .build()
        .unwrap();
    let stalled = bus
        .subscribe::<OrderCreated>()
        .name("stalled")
        .capacity(16)
        .stream()
        .unwrap();
    let bridge = Bridge::builder(&bus, server.connect())
        .name("billing")
        .import::<OrderCreated>()
        .max_payload(64 * 1024)
        .max_held_bytes(BUDGET)
        .start()
        .await
        .unwrap();
    let before = resident_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let memory = watch_memory(Arc::clone(&stop));
    let big = format!(r#"{{"id":1,"pad":"{}"}}"#, "x".repeat(32 * 1024)).into_bytes();
    const FLOOD: u64 = 20_000; // 640 MiB offered
    let mut raw = server.raw(None);
    for i in 0..FLOOD {
        raw.publish(b"orders.created", None, &big);
        if i % 1000 == 0 {
            raw.sync();
        }
    }
    raw.sync();
    until("the flood to be held or dropped", || {
        let s = bridge.stats();
        s.imported + s.dropped + (s.held_bytes as u64 / big.len() as u64) >= FLOOD - 1
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = memory.join().unwrap();
    let stats = bridge.stats();
    let grew = peak.saturating_sub(before) as f64 / MIB;
    eprintln!(
        "stalled reader, {FLOOD} orders of 32 KiB offered: {} imported, {} dropped, {:.1} MiB held; resident memory grew {grew:.1} MiB (budget {:.0} MiB)",
        stats.imported,
        stats.dropped,
        stats.held_bytes as f64 / MIB,
        BUDGET as f64 / MIB
    );
    assert!(stats.held_bytes <= BUDGET, "{stats:?}");
    assert!(stats.dropped > 0, "{stats:?}");
    // The budget, the stalled queue (16 events), and room for the
    // allocator's and the runtime's own: far from the 908 MiB a stalled
    // reader made the old bridge hold.
    assert!(grew < 64.0, "resident memory grew {grew:.1} MiB");
    assert!(stalled.stats().queue_depth <= 16);
    drop(bridge);
    drop(stalled);

    // 2. Honest traffic beside a stream of poison: the honest rate with and
    //    without the attack, and every honest order either imported or
    //    counted as dropped (a core-NATS flood beyond what the importer
    //    takes must lose something; it never loses it silently).
    let mut rates = Vec::new();
    for attack in [false, true] {
        let billing = Bus::builder()
            .bridge_topics()
            .topic::<OrderCreated>()
            .build()
            .unwrap();
        let mut orders = billing
            .subscribe::<OrderCreated>()
            .capacity(65_536)
            .stream()
            .unwrap();
        let importer = Bridge::builder(&billing, server.connect())
            .name("billing")
            .import::<OrderCreated>()
            .max_held_bytes(BUDGET)
            .start()
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let poison_sent = Arc::new(AtomicU64::new(0));
        let attacker = attack.then(|| {
            let mut raw = server.raw(None);
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&poison_sent));
            std::thread::spawn(move || {
                let block = header_block(&[b"X-Any: a\rb"]);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100 {
                        raw.hpub(b"orders.created", &block, br#"{"id":0}"#);
                    }
                    sent.fetch_add(100, Ordering::Relaxed);
                    raw.sync();
                }
            })
        });
        let honest = server.client().await;
        const HONEST: u64 = 20_000;
        let started = Instant::now();
        for id in 1..=HONEST {
            let body = format!(r#"{{"id":{id}}}"#);
            honest.publish("orders.created", body.into()).await.unwrap();
        }
        honest.flush().await.unwrap();
        until("every honest order to be imported or counted", || {
            let s = importer.stats();
            s.imported + s.dropped >= HONEST
        })
        .await;
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        if let Some(attacker) = attacker {
            attacker.join().unwrap();
        }
        let mut got = 0u64;
        while orders.try_recv().is_ok() {
            got += 1;
        }
        let stats = importer.stats();
        let rate = got as f64 / took.as_secs_f64();
        eprintln!(
            "{}: {got} of {HONEST} honest orders imported in {took:?} ({rate:.0}/s), {} dropped, {} poison frames sent and {} rejected, {} disconnects",
            if attack { "under attack" } else { "no attack" },
            stats.dropped,
            poison_sent.load(Ordering::Relaxed),
            stats.rejected,
            stats.disconnects,
        );
        assert_eq!(stats.disconnects, 0, "{stats:?}");
        assert_eq!(got, stats.imported, "{stats:?}");
        rates.push(rate);
    }
    eprintln!(
        "honest rate under attack: {:.2}x the rate without",
        rates[1] / rates[0]
    );
}
