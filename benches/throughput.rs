//! Throughput of tidings beside the tokio channels it is built to compete
//! with, in the same run: 1→1 against `tokio::sync::mpsc`, and 1→N fan-out
//! against N × `mpsc` (lossless) and `tokio::sync::broadcast` (lossy).
//! Throughput is in deliveries per second (events × subscribers).
//!
//! `cargo bench --bench throughput` runs the full matrix; add `-- --quick`
//! for a run of a few seconds per case.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidings::{Bus, Event, Overflow, Watch};

#[derive(Debug, Event)]
#[event(topic = "bench.tick")]
struct Tick(u64);

const EVENTS: u64 = 20_000;

/// One way of moving `events` events from one publisher to `subs` readers.
/// Returns the time from the first publish to the last delivery.
trait Contender {
    const NAME: &'static str;
    fn run(
        subs: usize,
        capacity: usize,
        events: u64,
    ) -> impl Future<Output = Duration> + Send + 'static;
}

/// Every publisher yields to the runtime once per 64 events, as a publisher
/// in a real service does between requests. Without it a publisher that never
/// has to wait (`broadcast`, the lossy policies) would starve its readers on a
/// 2-core machine and measure only how fast it can overwrite them.
async fn pace(i: u64) {
    if i % 64 == 63 {
        tokio::task::yield_now().await;
    }
}

struct TidingsBlock;
impl Contender for TidingsBlock {
    const NAME: &'static str = "tidings/block";
    async fn run(subs: usize, capacity: usize, events: u64) -> Duration {
        tidings_run(subs, capacity, events, Overflow::Block).await
    }
}

struct TidingsDropOldest;
impl Contender for TidingsDropOldest {
    const NAME: &'static str = "tidings/drop-oldest (lossy)";
    async fn run(subs: usize, capacity: usize, events: u64) -> Duration {
        tidings_run(subs, capacity, events, Overflow::DropOldest).await
    }
}

async fn tidings_run(subs: usize, capacity: usize, events: u64, policy: Overflow) -> Duration {
    let bus = Bus::builder().topic::<Tick>().build().unwrap();
    let readers: Vec<_> = (0..subs)
        .map(|_| {
            let mut sub = bus
                .subscribe::<Tick>()
                .capacity(capacity)
                .overflow(policy)
                .stream()
                .unwrap();
            tokio::spawn(async move {
                // Read until the last event: under DropOldest some are skipped,
                // and `missed` says how many.
                while let Some(e) = sub.recv().await {
                    if e.0 == events - 1 {
                        break;
                    }
                }
            })
        })
        .collect();
    let ticks = bus.publisher::<Tick>().unwrap();
    let start = Instant::now();
    for i in 0..events {
        ticks.publish(Tick(i)).await.unwrap();
        pace(i).await;
    }
    for r in readers {
        r.await.unwrap();
    }
    start.elapsed()
}

/// An async handler subscription, with the blocked-runtime watch on (the
/// default: every poll timed) or off: the price of the watch.
struct TidingsHandler<const WATCH: bool>;
impl<const WATCH: bool> Contender for TidingsHandler<WATCH> {
    const NAME: &'static str = if WATCH {
        "tidings/async handler, watch on"
    } else {
        "tidings/async handler, watch off"
    };
    async fn run(subs: usize, capacity: usize, events: u64) -> Duration {
        use std::sync::atomic::{AtomicU64, Ordering};
        let watch = if WATCH {
            Watch::default()
        } else {
            Watch::off()
        };
        let bus = Bus::builder().topic::<Tick>().watch(watch).build().unwrap();
        let done = Arc::new(tokio::sync::Notify::new());
        let handles: Vec<_> = (0..subs)
            .map(|_| {
                let seen = Arc::new(AtomicU64::new(0));
                let done = Arc::clone(&done);
                bus.subscribe::<Tick>()
                    .capacity(capacity)
                    .handler(move |_| {
                        if seen.fetch_add(1, Ordering::Relaxed) + 1 == events {
                            done.notify_one();
                        }
                        async {}
                    })
                    .unwrap()
            })
            .collect();
        let ticks = bus.publisher::<Tick>().unwrap();
        let start = Instant::now();
        let all_done = async {
            for _ in 0..subs {
                done.notified().await;
            }
        };
        let publish = async {
            for i in 0..events {
                ticks.publish(Tick(i)).await.unwrap();
                pace(i).await;
            }
        };
        tokio::join!(all_done, publish);
        let took = start.elapsed();
        drop(handles);
        took
    }
}

struct TokioMpsc;
impl Contender for TokioMpsc {
    const NAME: &'static str = "tokio::mpsc (one per reader)";
    async fn run(subs: usize, capacity: usize, events: u64) -> Duration {
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..subs {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Tick>>(capacity);
            senders.push(tx);
            readers.push(tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if e.0 == events - 1 {
                        break;
                    }
                }
            }));
        }
        let start = Instant::now();
        for i in 0..events {
            let e = Arc::new(Tick(i));
            for tx in &senders {
                tx.send(Arc::clone(&e)).await.unwrap();
            }
            pace(i).await;
        }
        for r in readers {
            r.await.unwrap();
        }
        start.elapsed()
    }
}

struct TokioBroadcast;
impl Contender for TokioBroadcast {
    const NAME: &'static str = "tokio::broadcast (lossy)";
    async fn run(subs: usize, capacity: usize, events: u64) -> Duration {
        let (tx, _) = tokio::sync::broadcast::channel::<Arc<Tick>>(capacity);
        let readers: Vec<_> = (0..subs)
            .map(|_| {
                let mut rx = tx.subscribe();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(e) if e.0 == events - 1 => break,
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        for i in 0..events {
            let _ = tx.send(Arc::new(Tick(i)));
            pace(i).await;
        }
        for r in readers {
            r.await.unwrap();
        }
        start.elapsed()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn measure<C: Contender>(c: &mut Criterion, group: &str, subs: usize, capacity: usize) {
    let rt = runtime();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(EVENTS * subs as u64));
    g.bench_function(BenchmarkId::new(C::NAME, format!("cap{capacity}")), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += tokio::spawn(C::run(subs, capacity, EVENTS)).await.unwrap();
                }
                total
            })
        })
    });
    g.finish();
}

fn one_to_one(c: &mut Criterion) {
    for capacity in [64, 1024] {
        measure::<TidingsBlock>(c, "s1_1to1", 1, capacity);
        measure::<TokioMpsc>(c, "s1_1to1", 1, capacity);
    }
}

fn fan_out(c: &mut Criterion) {
    for subs in [4, 16] {
        let group = format!("s2_1to{subs}");
        measure::<TidingsBlock>(c, &group, subs, 1024);
        measure::<TidingsDropOldest>(c, &group, subs, 1024);
        measure::<TokioMpsc>(c, &group, subs, 1024);
        measure::<TokioBroadcast>(c, &group, subs, 1024);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// What the blocked-runtime watch costs an async handler: two clock
/// readings per poll.
fn watch_overhead(c: &mut Criterion) {
    measure::<TidingsHandler<false>>(c, "s6_watch", 1, 1024);
    measure::<TidingsHandler<true>>(c, "s6_watch", 1, 1024);
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_to_one, fan_out, watch_overhead
}
criterion_main!(benches);
