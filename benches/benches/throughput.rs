//! tidings beside its peers, in the same run. Throughput is deliveries per
//! second (events × readers, `Throughput::Elements`).
//!
//! - S1 1→1: tidings, tokio mpsc, flume, kanal, jaeb; capacity 64 and 1024.
//! - S2 1→N fan-out, N = 4, 16, 64: tidings Block (lossless) and DropOldest,
//!   tokio broadcast (lossy), async-broadcast (lossless), N × tokio mpsc,
//!   jaeb.
//! - S3 M→N: 2 and 4 publishers to 1 and 8 readers.
//! - S4 isolation: latency of 15 fast readers with and without a slow one
//!   (reported by `examples/bench_report.rs`, which measures percentiles).
//! - S5 payload: 8 B and 1 KiB events, 1→16 (fan-out must not copy).
//! - S6 the blocked-runtime watch: an async handler with the watch on and off.
//!
//! `cargo bench -p tidings-benches --bench throughput` runs it all; `-- --quick` makes it a few
//! minutes on 2 cores; `-- --test` runs each case once (CI smoke).

use tidings_benches as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    AsyncBroadcast, Contender, Flume, Jaeb, Kanal, Shape, TidingsBlock, TidingsDropOldest,
    TokioBroadcast, TokioMpsc,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidings::{Bus, Event, WatchConfig};

/// Events per publisher per run.
const EVENTS: u64 = 20_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn measure<C: Contender, const N: usize>(
    c: &mut Criterion,
    group: &str,
    shape: Shape,
    param: String,
) {
    let rt = runtime();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(shape.deliveries()));
    g.bench_function(BenchmarkId::new(C::NAME, param), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += tokio::spawn(C::run::<N>(shape)).await.expect("run");
                }
                total
            })
        })
    });
    g.finish();
}

fn shape(publishers: usize, subscribers: usize, capacity: usize) -> Shape {
    Shape {
        publishers,
        subscribers,
        capacity,
        per_publisher: EVENTS / publishers as u64,
    }
}

fn s1_one_to_one(c: &mut Criterion) {
    for capacity in [64, 1024] {
        let s = shape(1, 1, capacity);
        let p = format!("cap{capacity}");
        measure::<TidingsBlock, 8>(c, "s1_1to1", s, p.clone());
        measure::<TokioMpsc, 8>(c, "s1_1to1", s, p.clone());
        measure::<Flume, 8>(c, "s1_1to1", s, p.clone());
        measure::<Kanal, 8>(c, "s1_1to1", s, p.clone());
        measure::<Jaeb, 8>(c, "s1_1to1", s, p);
    }
}

fn s2_fan_out(c: &mut Criterion) {
    for n in [4, 16, 64] {
        let s = shape(1, n, 1024);
        let group = format!("s2_1to{n}");
        let p = "cap1024".to_owned();
        measure::<TidingsBlock, 8>(c, &group, s, p.clone());
        measure::<TidingsDropOldest, 8>(c, &group, s, p.clone());
        measure::<TokioBroadcast, 8>(c, &group, s, p.clone());
        measure::<AsyncBroadcast, 8>(c, &group, s, p.clone());
        measure::<TokioMpsc, 8>(c, &group, s, p.clone());
        measure::<Jaeb, 8>(c, &group, s, p);
    }
}

fn s3_many_to_many(c: &mut Criterion) {
    for m in [2, 4] {
        for n in [1, 8] {
            let s = shape(m, n, 1024);
            let p = format!("{m}to{n}");
            measure::<TidingsBlock, 8>(c, "s3_m_to_n", s, p.clone());
            measure::<AsyncBroadcast, 8>(c, "s3_m_to_n", s, p.clone());
            measure::<TokioMpsc, 8>(c, "s3_m_to_n", s, p);
        }
    }
}

fn s5_payload(c: &mut Criterion) {
    let s = shape(1, 16, 1024);
    measure::<TidingsBlock, 8>(c, "s5_payload", s, "8B".to_owned());
    measure::<TidingsBlock, 1024>(c, "s5_payload", s, "1KiB".to_owned());
    measure::<TokioBroadcast, 8>(c, "s5_payload", s, "8B".to_owned());
    measure::<TokioBroadcast, 1024>(c, "s5_payload", s, "1KiB".to_owned());
}

#[derive(Debug, Event)]
#[event(topic = "bench.tick")]
struct Tick;

/// An async handler subscription, with the blocked-runtime watch on (the
/// default: every poll timed) or off: the price of the watch.
async fn handler_run(watch: bool, events: u64) -> Duration {
    use std::sync::atomic::{AtomicU64, Ordering};
    let watch = if watch {
        WatchConfig::default()
    } else {
        WatchConfig::off()
    };
    let bus = Bus::builder()
        .topic::<Tick>()
        .watch(watch)
        .build()
        .expect("bus");
    let done = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(AtomicU64::new(0));
    let signal = Arc::clone(&done);
    let _h = bus
        .subscribe::<Tick>()
        .handler(move |_| {
            if seen.fetch_add(1, Ordering::Relaxed) + 1 == events {
                signal.notify_one();
            }
            async {}
        })
        .expect("subscribe");
    let ticks = bus.publisher::<Tick>().expect("registered");
    let start = Instant::now();
    for i in 0..events {
        ticks.publish(Tick).await.expect("publish");
        common::pace(i).await;
    }
    done.notified().await;
    start.elapsed()
}

fn s6_watch(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("s6_watch");
    g.throughput(Throughput::Elements(EVENTS));
    for (name, on) in [
        ("async handler, watch off", false),
        ("async handler, watch on", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += tokio::spawn(handler_run(on, EVENTS)).await.expect("run");
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = s1_one_to_one, s2_fan_out, s3_many_to_many, s5_payload, s6_watch
}
criterion_main!(benches);
