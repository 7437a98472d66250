//! How fast the NATS bridge carries events between two buses through a
//! local server, in core and durable (JetStream) mode: events per second
//! end to end, and the latency from the publisher sending an event to the
//! other bus's subscriber receiving it.
//!
//! ```sh
//! nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats-store &
//! cargo run --release -p tidings-nats --example bridge_bench -- --events 50000
//! ```
//!
//! Flags: `--url` (default `nats://127.0.0.1:4222`), `--events` (per mode,
//! default 50,000), `--rate` (events per second offered; default 0, as fast
//! as the bridge takes them, which measures throughput; a rate below that
//! measures latency without queueing), `--mode core|durable|both` (default
//! both). Latency is from the publisher sending to the other bus's
//! subscriber receiving.

use std::time::{Duration, Instant, SystemTime};

use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics, Connect, Durable};

#[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "bench.order", serde)]
struct Order {
    id: u64,
    total_cents: u64,
    customer: String,
    /// When the publishing side sent it, in nanoseconds since the epoch
    /// (the receiving bus's own `published_at` is when the bridge
    /// published it there).
    sent_ns: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Args {
    url: String,
    events: u64,
    modes: Vec<bool>, // durable?
    /// Events per second offered; 0: as fast as the bridge takes them.
    rate: u64,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        url: "nats://127.0.0.1:4222".into(),
        events: 50_000,
        modes: vec![false, true],
        rate: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => out.url = value()?,
            "--rate" => out.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--events" => out.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--mode" => {
                out.modes = match value()?.as_str() {
                    "core" => vec![false],
                    "durable" => vec![true],
                    "both" => vec![false, true],
                    other => return Err(format!("--mode core|durable|both, not {other}")),
                }
            }
            "--help" | "-h" => {
                return Err("usage: bridge_bench [--url URL] [--events N] [--rate EVENTS_PER_S] [--mode core|durable|both]".into())
            }
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    Ok(out)
}

fn bus() -> Result<Bus, tidings::error::BuildError> {
    Bus::builder().bridge_topics().topic::<Order>().build()
}

async fn run(
    url: &str,
    events: u64,
    rate: u64,
    durable: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let (a_bus, b_bus) = (bus()?, bus()?);
    let mut received = b_bus.subscribe::<Order>().capacity(4096).stream()?;
    let stream = format!("BENCH{}", std::process::id());
    let with_mode = |b: tidings_nats::BridgeBuilder| {
        if durable {
            b.durable(Durable::new(stream.clone(), [format!("{stream}.>")]))
        } else {
            b
        }
    };
    let b = with_mode(
        Bridge::builder(&b_bus, Connect::to(url))
            .name(format!("bench-in-{}", std::process::id()))
            .prefix(stream.clone())
            .import::<Order>(),
    )
    .start()
    .await?;
    let a = with_mode(
        Bridge::builder(&a_bus, Connect::to(url))
            .name("bench-out")
            .prefix(stream.clone())
            .export::<Order>(),
    )
    .start()
    .await?;
    let publisher = {
        let bus = a_bus.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            for id in 0..events {
                if rate > 0 {
                    // Paced: event `id` goes out at `id / rate` seconds.
                    let due = start + Duration::from_secs_f64(id as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let order = Order {
                    id,
                    total_cents: id * 3,
                    customer: format!("customer-{}", id % 1000),
                    sent_ns: now_ns(),
                };
                bus.publish(order).await.expect("publish");
            }
        })
    };
    let start = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(events as usize);
    let mut last = start;
    for _ in 0..events {
        // Core NATS is at most once: a message dropped on the way (a slow
        // consumer in the client, say) never comes, so stop waiting after a
        // quiet spell and count it as lost.
        let Ok(e) = tokio::time::timeout(Duration::from_secs(3), received.recv()).await else {
            break;
        };
        let e = e.ok_or("subscription ended")?;
        last = Instant::now();
        latencies.push(Duration::from_nanos(now_ns().saturating_sub(e.sent_ns)));
    }
    let elapsed = last - start;
    publisher.await?;
    let got = latencies.len() as u64;
    if latencies.is_empty() {
        return Err("nothing arrived".into());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        if durable {
            "durable (JetStream)"
        } else {
            "core NATS"
        },
        if rate > 0 {
            format!("{rate}/s")
        } else {
            "flat out".to_owned()
        },
        events,
        events - got,
        got as f64 / elapsed.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );
    let deadline = Duration::from_secs(30);
    let (a, b) = (
        a.shutdown(deadline).await.stats,
        b.shutdown(deadline).await.stats,
    );
    eprintln!("  out: {a:?}\n  in:  {b:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    println!("| mode | offered | events | lost | events/s | p50 | p99 | max |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for durable in args.modes.clone() {
        run(&args.url, args.events, args.rate, durable).await?;
    }
    Ok(())
}
