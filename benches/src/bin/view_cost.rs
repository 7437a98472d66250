//! What an open live view costs the bus: the 1→16 scenario (one publisher,
//! sixteen stream readers, `Block`, queues of 1,024, 64-byte events) run
//! for a fixed time with no view, with a view at its default interval
//! (1 s) and with one at 100 ms (ten times as often), each with a browser's
//! worth of client: one reader of `/api/events` taking every snapshot.
//! Each round runs the three setups in a rotating order; the report gives
//! each one's median deliveries per second and its ratio to "no view",
//! the median of the same-round ratios.
//!
//! Usage: view_cost [--rounds N] [--secs S]

use std::time::{Duration, Instant};

use tidings::view::ViewBuilder;
use tidings::{Bus, Overflow};
use tidings_benches::{arg, median, Ev};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READERS: usize = 16;
const LAST: u64 = u64::MAX;

/// One run: deliveries per second over `secs`, and the snapshots the client
/// read (to show the view was working).
async fn run(view: Option<Duration>, secs: Duration) -> (f64, u64) {
    let bus = Bus::builder().topic::<Ev<64>>().build().expect("bus");
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let mut sub = bus
                .subscribe::<Ev<64>>()
                .capacity(1024)
                .overflow(Overflow::Block)
                .stream()
                .expect("subscribe");
            tokio::spawn(async move {
                let mut seen = 0u64;
                while let Some(e) = sub.recv().await {
                    if e.n == LAST {
                        break;
                    }
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    let mut served = None;
    let mut client = None;
    if let Some(interval) = view {
        let v = ViewBuilder::new(&bus)
            .interval(interval)
            .serve("127.0.0.1:0")
            .await
            .expect("view");
        let addr = v.local_addr();
        served = Some(v);
        client = Some(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /api/events HTTP/1.1\r\n\r\n")
                .await
                .expect("request");
            let mut buf = vec![0u8; 64 * 1024];
            let mut frames = 0u64;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                frames += buf[..n].windows(6).filter(|w| w == b"data: ").count() as u64;
            }
            frames
        }));
    }
    let events = bus.publisher::<Ev<64>>().expect("registered");
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..1024 {
            events
                .publish(Ev {
                    publisher: 0,
                    n,
                    pad: [0; 64],
                })
                .await
                .expect("publish");
            n += 1;
            tidings_benches::pace(n).await;
        }
        if start.elapsed() >= secs {
            break;
        }
    }
    events
        .publish(Ev {
            publisher: 0,
            n: LAST,
            pad: [0; 64],
        })
        .await
        .expect("publish");
    let mut delivered = 0;
    for r in readers {
        delivered += r.await.expect("reader");
    }
    let rate = delivered as f64 / start.elapsed().as_secs_f64();
    drop(served);
    let frames = match client {
        Some(c) => c.await.unwrap_or(0),
        None => 0,
    };
    (rate, frames)
}

/// The sampler's work for one snapshot, done alone: the stats and health
/// of a bus like the scenario's, serialized to JSON. Microseconds.
fn snapshot_work() -> f64 {
    let bus = Bus::builder().topic::<Ev<64>>().build().expect("bus");
    let _subs: Vec<_> = (0..READERS)
        .map(|_| bus.subscribe::<Ev<64>>().stream().expect("subscribe"))
        .collect();
    let rounds = 2_000;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        let text = serde_json::to_string(&(bus.stats(), bus.health())).expect("json");
        bytes += text.len();
    }
    std::hint::black_box(bytes);
    start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn main() {
    let rounds = arg("--rounds", 7).max(1) as usize;
    let secs = Duration::from_secs(arg("--secs", 3).max(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let setups: [(&str, Option<Duration>); 3] = [
        ("no view", None),
        ("view open, 1 s (default)", Some(Duration::from_secs(1))),
        ("view open, 100 ms", Some(Duration::from_millis(100))),
    ];
    let mut rates = vec![Vec::new(); 3];
    let mut ratios = vec![Vec::new(); 3];
    let mut frames = [0u64; 3];
    for round in 0..rounds {
        let mut this = [0.0f64; 3];
        for k in 0..3 {
            let i = (round + k) % 3;
            let (rate, f) = rt.block_on(run(setups[i].1, secs));
            this[i] = rate;
            frames[i] += f;
        }
        for i in 0..3 {
            rates[i].push(this[i]);
            ratios[i].push(this[i] / this[0]);
        }
        eprintln!("round {}: {:.2?}", round + 1, this.map(|r| r / 1e6));
    }
    println!(
        "1→16 (Block, 64-byte events, 16 stream readers), {rounds} rounds of {} s, 2 tokio workers",
        secs.as_secs()
    );
    println!();
    println!("| setup | deliveries/s (median) | vs no view (median of same-round ratios, and their range) | snapshots read |");
    println!("|---|---|---|---|");
    let spread = |i: usize| {
        let r = &ratios[i];
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    for i in 0..3 {
        println!(
            "| {} | {:.1}M | {:.3}× ({}) | {} |",
            setups[i].0,
            median(rates[i].clone()) / 1e6,
            median(ratios[i].clone()),
            spread(i),
            frames[i]
        );
    }
    let work = snapshot_work();
    println!();
    println!(
        "One snapshot's work alone (stats and health of 16 subscriptions, as JSON): {work:.0} µs, \
         {:.3} % of one core at the default interval, {:.2} % at 100 ms.",
        work / 1e4,
        work / 1e3
    );
}
