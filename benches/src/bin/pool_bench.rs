//! Blocking handlers side by side, in one run (run it with
//! `scripts/pool-bench`, which builds the two bus programs):
//!
//! 1. **Dispatch cost** per event of a 1 µs handler, 1M events from one
//!    publisher, two at a time (the machine's cores): through tidings'
//!    worker pool (`pool_dispatch` built from this tree; its workers at
//!    the default nice 10, and at nice 0 as threads were before), through the
//!    thread-per-runner design it replaced (the same program built from
//!    the commit before the pool), `tokio::task::spawn_blocking` per event
//!    and `rayon::spawn` per event. Each round runs every setup once;
//!    the report gives each one's median ns/event and the pool's ratio to
//!    each peer, median of the same-round ratios.
//! 2. **Fairness**: one subscription flooded with 1 ms events at
//!    concurrency 2 (every worker), twenty quiet ones receiving an event
//!    every 10 ms: the time from a quiet event's publish to its handler's
//!    start, p50 / p99 / max, against the goal of one handler run + 1 ms.
//!
//! Usage: pool_bench --now PATH --before PATH [--rounds N] [--events N]
//!        [--fair-secs S]

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tidings::{Bus, Event};
use tidings_benches::median;

fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Runs one of the bus programs (with `extra` flags): its ns per event.
fn bus_program(path: &str, events: u64, extra: &[&str]) -> Result<f64, Box<dyn std::error::Error>> {
    let out = Command::new(path)
        .args(["--events", &events.to_string(), "--concurrency", "2"])
        .args(extra)
        .output()?;
    if !out.status.success() {
        return Err(format!("{path} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let value = text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("{path} printed {text:?}"))?;
    Ok(value.parse()?)
}

/// `spawn_blocking` per event: ns per event.
fn spawn_blocking(events: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..events {
            let done = Arc::clone(&done);
            tokio::task::spawn_blocking(move || {
                spin(Duration::from_micros(1));
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        while done.load(Ordering::Relaxed) < events {
            tokio::task::yield_now().await;
        }
    });
    let took = start.elapsed();
    rt.shutdown_background();
    took.as_nanos() as f64 / events as f64
}

/// `rayon::spawn` per event on a pool of two: ns per event.
fn rayon_spawn(pool: &rayon::ThreadPool, events: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for _ in 0..events {
        let done = Arc::clone(&done);
        pool.spawn(move || {
            spin(Duration::from_micros(1));
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    while done.load(Ordering::Relaxed) < events {
        std::thread::yield_now();
    }
    start.elapsed().as_nanos() as f64 / events as f64
}

#[derive(Debug, Event)]
#[event(topic = "bench.flood")]
struct Flood;

#[derive(Debug, Event)]
#[event(topic = "bench.quiet")]
struct Quiet(Instant);

/// The fairness scenario: publish-to-start latencies of quiet events, in µs.
fn fairness(secs: u64) -> Result<(Histogram<u64>, u64), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bus = Bus::builder().topic::<Flood>().topic::<Quiet>().build()?;
        let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
        let quiet: Vec<_> = (0..20)
            .map(|i| {
                let latencies = Arc::clone(&latencies);
                bus.subscribe::<Quiet>()
                    .name(format!("quiet-{i}"))
                    .sync(move |e| {
                        let us = e.0.elapsed().as_micros() as u64;
                        let _ = latencies.lock().map(|mut h| h.record(us.max(1)));
                    })
            })
            .collect::<Result<_, _>>()?;
        let flooded = Arc::new(AtomicU64::new(0));
        let flood = {
            let flooded = Arc::clone(&flooded);
            bus.subscribe::<Flood>()
                .name("flood")
                .capacity(100_000)
                .concurrency(2)
                .sync(move |_| {
                    spin(Duration::from_millis(1));
                    flooded.fetch_add(1, Ordering::Relaxed);
                })?
        };
        // The flood: 100k events waiting from the start.
        for _ in 0..100_000 {
            bus.try_publish(Flood).map_err(|e| e.to_string())?;
        }
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
            bus.publish(Quiet(Instant::now()))
                .await
                .map_err(|e| e.to_string())?;
        }
        drop(flood);
        for q in quiet {
            q.unsubscribe().await;
        }
        let h = latencies.lock().map_err(|_| "poisoned")?.clone();
        let _ = bus.shutdown(Duration::from_millis(10)).await;
        Ok((h, flooded.load(Ordering::Relaxed)))
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut now, mut before) = (None, None);
    let (mut rounds, mut events, mut fair_secs) = (5usize, 1_000_000u64, 5u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--now" => now = args.next(),
            "--before" => before = args.next(),
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            "--fair-secs" => fair_secs = args.next().ok_or("--fair-secs S")?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let now = now.ok_or("--now PATH (run scripts/pool-bench)")?;
    let before = before.ok_or("--before PATH (run scripts/pool-bench)")?;
    let rayon = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let names = [
        "tidings pool (workers at nice 10, the default)",
        "tidings pool (workers at nice 0)",
        "thread per runner (before)",
        "spawn_blocking",
        "rayon::spawn",
    ];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    println!("dispatch: {events} events of a 1 µs handler, two at a time, {rounds} rounds");
    for round in 0..rounds {
        let r = [
            bus_program(&now, events, &[])?,
            bus_program(&now, events, &["--nice", "0"])?,
            bus_program(&before, events, &[])?,
            spawn_blocking(events),
            rayon_spawn(&rayon, events),
        ];
        println!(
            "round {}: {}",
            round + 1,
            names
                .iter()
                .zip(r)
                .map(|(n, v)| format!("{n} {v:.0} ns"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (i, v) in r.iter().enumerate() {
            ns[i].push(*v);
            // How many times faster the pool (at nice 0) is than this
            // setup.
            ratios[i].push(v / r[1]);
        }
    }
    println!(
        "\n| setup | ns per event (median) | pool at nice 0 vs it (median of same-round ratios) |"
    );
    println!("|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let ratio = if i == 1 {
            "-".to_owned()
        } else {
            format!("{:.2}×", median(ratios[i].clone()))
        };
        println!("| {name} | {:.0} | {ratio} |", median(ns[i].clone()));
    }
    let (h, flooded) = fairness(fair_secs)?;
    println!(
        "\nfairness: 1 ms flood at concurrency 2 ({flooded} flooded runs in {fair_secs} s), 20 quiet subscriptions, an event every 10 ms"
    );
    println!(
        "| quiet events | publish → start p50 | p99 | max | goal (p99) |\n|---|---|---|---|---|"
    );
    println!(
        "| {} | {} µs | {} µs | {} µs | ≤ 2000 µs (one run + 1 ms) |",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    Ok(())
}
