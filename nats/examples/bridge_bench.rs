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
//!
//! `--against-raw [--rounds N]` measures instead what the bridge costs over
//! the raw `async-nats` client doing the same work through the same server,
//! in interleaved rounds (default 5; which goes first alternates): the same
//! JSON payload and header block, published flat out; in core mode a plain
//! subscription that decodes each message, in durable mode JetStream
//! publishes with message ids and up to 256 acknowledgements outstanding
//! (the bridge exporter's default window) and a pull consumer fetching 256
//! at a time and acknowledging each message (as its importer does). It prints the best, median and worst
//! round of each, and the bridge's rate as a share of the raw client's: the
//! median of the ratios of the same round, with their range; a range that
//! holds 1.0 is "indistinguishable".

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
    /// Rounds of the bridge against the raw client; 0: no comparison.
    against_raw: usize,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        url: "nats://127.0.0.1:4222".into(),
        events: 50_000,
        modes: vec![false, true],
        rate: 0,
        against_raw: 0,
    };
    let mut rounds = 5;
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
            "--against-raw" => out.against_raw = 1,
            "--rounds" => {
                rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?;
                if rounds == 0 {
                    return Err("--rounds: at least 1".into());
                }
            }
            "--help" | "-h" => {
                return Err("usage: bridge_bench [--url URL] [--events N] [--rate EVENTS_PER_S] [--mode core|durable|both] [--against-raw [--rounds N]]".into())
            }
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    if out.against_raw > 0 {
        out.against_raw = rounds;
    }
    Ok(out)
}

fn bus() -> Result<Bus, tidings::error::BuildError> {
    Bus::builder().bridge_topics().topic::<Order>().build()
}

/// What one run carried: how many events were sent and arrived, how long
/// the arrivals took, and each event's latency.
struct Measured {
    events: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// An order as both sides send it.
fn order(id: u64) -> Order {
    Order {
        id,
        total_cents: id * 3,
        customer: format!("customer-{}", id % 1000),
        sent_ns: now_ns(),
    }
}

type BoxError = Box<dyn std::error::Error>;

/// Where a run's events arrive: each gives the time it was sent.
trait Arrivals {
    fn next(&mut self) -> impl std::future::Future<Output = Result<Option<u64>, BoxError>>;
}

impl Arrivals for tidings::Subscription<Order> {
    async fn next(&mut self) -> Result<Option<u64>, BoxError> {
        Ok(self.recv().await.map(|e| e.sent_ns))
    }
}

/// Checks what the raw client received as the bridge's importer would
/// (headers there, the topic right, the payload decoded).
fn decode(payload: &[u8], headers: Option<&async_nats::HeaderMap>) -> Result<u64, BoxError> {
    let headers = headers.ok_or("no headers")?;
    if headers.get("Tidings-Topic").map(|v| v.as_str()) != Some("bench.order") {
        return Err("wrong topic".into());
    }
    Ok(serde_json::from_slice::<Order>(payload)?.sent_ns)
}

impl Arrivals for async_nats::Subscriber {
    async fn next(&mut self) -> Result<Option<u64>, BoxError> {
        match futures::StreamExt::next(self).await {
            Some(msg) => decode(&msg.payload, msg.headers.as_ref()).map(Some),
            None => Ok(None),
        }
    }
}

/// A JetStream pull consumer, fetched 256 at a time, each message
/// acknowledged.
struct Pulled {
    consumer:
        async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    batch: Option<async_nats::jetstream::consumer::pull::Batch>,
}

impl Arrivals for Pulled {
    async fn next(&mut self) -> Result<Option<u64>, BoxError> {
        loop {
            let batch = match &mut self.batch {
                Some(batch) => batch,
                None => self.batch.insert(
                    self.consumer
                        .fetch()
                        .max_messages(256)
                        .expires(Duration::from_millis(250))
                        .messages()
                        .await
                        .map_err(|e| e.to_string())?,
                ),
            };
            match futures::StreamExt::next(batch).await {
                Some(msg) => {
                    let msg = msg.map_err(|e| e.to_string())?;
                    let sent = decode(&msg.payload, msg.headers.as_ref())?;
                    msg.ack().await.map_err(|e| e.to_string())?;
                    return Ok(Some(sent));
                }
                None => self.batch = None,
            }
        }
    }
}

/// Receives up to `events`, stopping after a quiet spell (core NATS is at
/// most once: a message dropped on the way never comes).
async fn arrivals(events: u64, source: &mut impl Arrivals) -> Result<Measured, BoxError> {
    let start = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(events as usize);
    let mut last = start;
    for _ in 0..events {
        let Ok(sent_ns) = tokio::time::timeout(Duration::from_secs(3), source.next()).await else {
            break;
        };
        let Some(sent_ns) = sent_ns? else {
            return Err("subscription ended".into());
        };
        last = Instant::now();
        latencies.push(Duration::from_nanos(now_ns().saturating_sub(sent_ns)));
    }
    if latencies.is_empty() {
        return Err("nothing arrived".into());
    }
    Ok(Measured {
        events,
        latencies,
        elapsed: last - start,
    })
}

/// The bridge between two buses, one run.
async fn bridge_once(
    url: &str,
    events: u64,
    rate: u64,
    durable: bool,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let (a_bus, b_bus) = (bus()?, bus()?);
    let mut received = b_bus.subscribe::<Order>().capacity(4096).stream()?;
    let stream = format!("BENCH{}{}", std::process::id(), unique());
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
                bus.publish(order(id)).await.expect("publish");
            }
        })
    };
    let measured = arrivals(events, &mut received).await;
    publisher.await?;
    let deadline = Duration::from_secs(30);
    let (a, b) = (
        a.shutdown(deadline).await.stats,
        b.shutdown(deadline).await.stats,
    );
    eprintln!("  out: {a:?}\n  in:  {b:?}");
    if durable {
        // The bridge made the stream; the next run makes its own.
        let js = async_nats::jetstream::new(async_nats::connect(url).await?);
        let _ = js.delete_stream(&stream).await;
    }
    measured
}

/// A number no other run of this process has.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The header block the bridge sends with every event, with values of the
/// same shapes.
fn raw_headers(id: u64, msg_id: Option<&str>) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        "Tidings-Event-Id",
        format!("bench-out.{id:016x}.0123456789abcdef").as_str(),
    );
    h.insert("Tidings-Topic", "bench.order");
    h.insert("Tidings-Seq", id.to_string().as_str());
    h.insert("Tidings-Published-At", now_ns().to_string().as_str());
    h.insert("Tidings-Type", "bridge_bench::Order");
    h.insert("Tidings-Origin", "bench-out.0123456789abcdef");
    h.insert("Content-Type", "application/json");
    if let Some(msg_id) = msg_id {
        h.insert("Nats-Msg-Id", msg_id);
    }
    h
}

/// Publishes awaiting their acknowledgement at once, in durable mode: the
/// bridge's default window.
const WINDOW: usize = 256;

/// The raw `async-nats` client doing the bridge's work, one run.
async fn raw_once(
    url: &str,
    events: u64,
    durable: bool,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let (out, inn) = (
        async_nats::connect(url).await?,
        async_nats::connect(url).await?,
    );
    let stream = format!("RAW{}{}", std::process::id(), unique());
    let subject = format!("{stream}.bench.order");
    if !durable {
        let mut sub = inn.subscribe(subject.clone()).await?;
        inn.flush().await?;
        let publisher = tokio::spawn(async move {
            for id in 0..events {
                let payload = serde_json::to_vec(&order(id)).expect("encodes");
                out.publish_with_headers(subject.clone(), raw_headers(id, None), payload.into())
                    .await
                    .expect("publish");
            }
            out.flush().await.expect("flush");
        });
        let measured = arrivals(events, &mut sub).await;
        publisher.await?;
        return measured;
    }
    use async_nats::jetstream::{self, consumer::pull, stream};
    let js = jetstream::new(out);
    let stored = js
        .create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let consumer = stored
        .create_consumer(pull::Config {
            durable_name: Some("raw-in".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await?;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            // The same window of acknowledgements outstanding as the
            // bridge's exporter (`Durable::window`, default 256).
            let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
            for id in 0..events {
                let payload = serde_json::to_vec(&order(id)).expect("encodes");
                let msg_id = format!("bench-out.{id:016x}");
                let ack = js
                    .publish_with_headers(
                        subject.clone(),
                        raw_headers(id, Some(&msg_id)),
                        payload.into(),
                    )
                    .await
                    .expect("publish");
                acks.push_back(ack);
                if acks.len() >= WINDOW {
                    if let Some(ack) = acks.pop_front() {
                        ack.await.expect("stored");
                    }
                }
            }
            for ack in acks {
                ack.await.expect("stored");
            }
        })
    };
    drop(inn);
    let mut pulled = Pulled {
        consumer,
        batch: None,
    };
    let measured = arrivals(events, &mut pulled).await;
    publisher.await?;
    let _ = js.delete_stream(&stream).await;
    measured
}

/// One row of the plain run.
fn row(m: &Measured, durable: bool, rate: u64) {
    let mut latencies = m.latencies.clone();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        mode_name(durable),
        if rate > 0 {
            format!("{rate}/s")
        } else {
            "flat out".to_owned()
        },
        m.events,
        m.events - latencies.len() as u64,
        m.rate(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );
}

fn mode_name(durable: bool) -> &'static str {
    if durable {
        "durable (JetStream)"
    } else {
        "core NATS"
    }
}

/// Best, median and worst of `v`.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() - 1], v[v.len() / 2], v[0])
}

/// The bridge against the raw client, `rounds` interleaved rounds a mode.
async fn against_raw(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    println!("| mode | raw client: best / median / worst | bridge: best / median / worst | bridge ÷ raw (range) | |");
    println!("|---|---:|---:|---:|---|");
    for durable in args.modes.clone() {
        let (mut raw, mut bridge) = (Vec::new(), Vec::new());
        for round in 0..args.against_raw {
            eprintln!("  {} round {}", mode_name(durable), round + 1);
            // Which goes first alternates, so that neither always meets the
            // server fresh.
            if round % 2 == 0 {
                raw.push(raw_once(&args.url, args.events, durable).await?.rate());
                bridge.push(
                    bridge_once(&args.url, args.events, 0, durable)
                        .await?
                        .rate(),
                );
            } else {
                bridge.push(
                    bridge_once(&args.url, args.events, 0, durable)
                        .await?
                        .rate(),
                );
                raw.push(raw_once(&args.url, args.events, durable).await?.rate());
            }
        }
        let ratios: Vec<f64> = bridge.iter().zip(&raw).map(|(b, r)| b / r).collect();
        let (high, ratio, low) = spread(ratios);
        let ((rb, rm, rw), (bb, bm, bw)) = (spread(raw), spread(bridge));
        let verdict = if low <= 1.0 && 1.0 <= high {
            "indistinguishable"
        } else if low > 1.0 {
            "the bridge is faster"
        } else if ratio >= 0.85 {
            "within 15 %"
        } else {
            "more than 15 % slower"
        };
        println!(
            "| {} | {rb:.0} / {rm:.0} / {rw:.0} | {bb:.0} / {bm:.0} / {bw:.0} | {ratio:.2} ({low:.2}–{high:.2}) | {verdict} |",
            mode_name(durable)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    if args.against_raw > 0 {
        return against_raw(&args).await;
    }
    println!("| mode | offered | events | lost | events/s | p50 | p99 | max |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for durable in args.modes.clone() {
        let m = bridge_once(&args.url, args.events, args.rate, durable).await?;
        row(&m, durable, args.rate);
    }
    Ok(())
}
