//! The mistake this crate exists to catch: CPU-heavy work inside an `async`
//! handler freezes the runtime, and nothing says why. Here tidings names the
//! handler, shows how long it held the runtime, and the runtime's lag is
//! measured; then the same work moves to a `.sync()` handler and both go
//! away. Last, a handler that never returns holds every worker of the
//! CPU pool, and `health()` names it.
//!
//! `cargo run --release --example blocking_detector`

use std::time::{Duration, Instant};

use tidings::{Bus, Event, WatchConfig};

#[derive(Debug, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

/// About 20 ms of real CPU work: what a fraud score or a PDF render costs.
fn score(order: &OrderPlaced) -> u64 {
    let start = Instant::now();
    let mut h = order.id;
    while start.elapsed() < Duration::from_millis(20) {
        for i in 0..10_000u64 {
            h = h.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    h
}

/// How late a 5 ms ticker runs while `work` goes on: the runtime's lag, as
/// a request handler on it would feel it. Returns (p50, max).
async fn lag_during(work: impl std::future::Future<Output = ()>) -> (Duration, Duration) {
    let ticker = tokio::spawn(async {
        let mut lags = Vec::new();
        let mut next = tokio::time::Instant::now();
        loop {
            next += Duration::from_millis(5);
            tokio::time::sleep_until(next).await;
            lags.push(tokio::time::Instant::now().saturating_duration_since(next));
            if lags.len() == 200 {
                return lags;
            }
        }
    });
    work.await;
    let mut lags = ticker.await.expect("ticker");
    lags.sort();
    (lags[lags.len() / 2], lags[lags.len() - 1])
}

async fn run(bus: &Bus, orders: u64) {
    for id in 0..orders {
        bus.publish(OrderPlaced { id }).await.expect("open");
        tokio::time::sleep(Duration::from_millis(20)).await; // a request every 20 ms
    }
}

fn new_bus() -> Bus {
    Bus::builder()
        .topic::<OrderPlaced>()
        .watch(WatchConfig::default().slow_poll(Some(Duration::from_millis(10))))
        .build()
        .expect("valid allow-list")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tidings reports through `tracing`: print its warnings.
    tracing_subscriber::fmt()
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();

    println!("== 1. CPU work inside an async handler (the mistake)\n");
    let bus = new_bus();
    let fraud = bus
        .subscribe::<OrderPlaced>()
        .name("fraud-check")
        .handler(|order| async move {
            std::hint::black_box(score(&order)); // blocks the runtime's only worker
        })?;
    let (p50, max) = lag_during(run(&bus, 50)).await;
    let stats = fraud.unsubscribe().await;
    println!("\nruntime lag while it ran: p50 {p50:?}, max {max:?}");
    println!(
        "{} slow polls over {} orders; worst {:?}",
        stats.slow_polls, stats.delivered, stats.worst_poll
    );
    println!("bus.health():\n{}", bus.health());

    println!("== 2. The same work in a .sync() handler\n");
    let bus = new_bus();
    let fraud = bus
        .subscribe::<OrderPlaced>()
        .name("fraud-check")
        .sync(|order| {
            std::hint::black_box(score(&order)); // on the bus's own thread
        })?;
    let (p50, max) = lag_during(run(&bus, 50)).await;
    let stats = fraud.unsubscribe().await;
    println!("runtime lag while it ran: p50 {p50:?}, max {max:?}");
    println!(
        "handled {} orders, slow polls {}",
        stats.handled, stats.slow_polls
    );
    println!("bus.health(): {}", bus.health());

    println!("\n== 3. A handler stuck on a call that never returns\n");
    let bus = Bus::builder()
        .topic::<OrderPlaced>()
        .cpu_workers(2)
        .watch(
            WatchConfig::default()
                .sync_budget(Some(Duration::from_millis(100)))
                .pool_exhausted(Some(Duration::from_millis(200))),
        )
        .build()?;
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let stuck = std::sync::Mutex::new(stuck);
    let export = bus
        .subscribe::<OrderPlaced>()
        .name("export")
        .concurrency(2)
        .sync(move |_| {
            // A call without a timeout, to a peer that never answers.
            let _ = stuck.lock().map(|rx| rx.recv());
        })?;
    for id in 0..2 {
        bus.publish(OrderPlaced { id }).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("bus.health():\n{}", bus.health());
    drop(release);
    export.unsubscribe().await;
    Ok(())
}
