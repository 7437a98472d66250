//! A flood of small messages against a stalled reader, in a test binary of
//! its own so that the process's resident memory is the bridge's: the byte
//! budget bounds what the bridge really holds, each held delivery counted
//! at what it costs (its bytes and its own bookkeeping), not only at its
//! payload. Before that, a million 24-byte orders under an 8 MiB budget
//! made the process hold 6.3 times the budget (51.4 MiB).

mod common;

use std::time::Duration;

use common::{resident_bytes, until, NatsServer};
use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics};

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
}

const BUDGET: usize = 8 << 20;
const MIB: f64 = (1 << 20) as f64;
/// The most the process may grow, in budgets: the held deliveries
/// themselves, plus room for the allocator's and the runtime's own.
const FACTOR: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_small_messages_stays_inside_the_byte_budget() {
    let server = NatsServer::start();
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
        .max_held_bytes(BUDGET)
        .start()
        .await
        .unwrap();
    let before = resident_bytes();
    // Twice what the budget held before each delivery's own cost was
    // counted (8 MiB of 38-byte messages: 220,000).
    const FLOOD: u64 = 440_000;
    let order = br#"{"id":1234567890123456}"#; // 24 bytes
    let mut raw = server.raw(None);
    raw.read_timeout(Duration::from_secs(120));
    // A blocking client: off the runtime's workers, which run the bridge.
    tokio::task::spawn_blocking(move || {
        for i in 0..FLOOD {
            raw.publish(b"orders.created", None, order);
            if i % 10_000 == 0 {
                raw.sync();
            }
        }
        raw.sync();
    })
    .await
    .expect("the flood was sent");
    until("the flood to be held or dropped", || {
        let s = bridge.stats();
        s.imported + s.dropped + s.held_bytes as u64 / 24 >= FLOOD / 2 && s.dropped > 0
    })
    .await;
    // Let the importer settle: what it holds stays held (the reader is
    // stalled), what did not fit was dropped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = resident_bytes();
    let stats = bridge.stats();
    let grew = now.saturating_sub(before) as f64 / MIB;
    eprintln!(
        "stalled reader, {FLOOD} orders of 24 bytes offered: {} imported, {} dropped, {:.1} MiB held by the count; resident memory grew {grew:.1} MiB (budget {:.0} MiB)",
        stats.imported,
        stats.dropped,
        stats.held_bytes as f64 / MIB,
        BUDGET as f64 / MIB
    );
    assert!(stats.held_bytes <= BUDGET, "{stats:?}");
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(
        grew <= FACTOR * BUDGET as f64 / MIB,
        "resident memory grew {grew:.1} MiB, over {FACTOR} times the {:.0} MiB budget",
        BUDGET as f64 / MIB
    );
    assert!(stalled.stats().queue_depth <= 16);
}
