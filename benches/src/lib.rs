//! Scenarios shared by the criterion benches (`benches/throughput.rs`) and
//! the one-command report (`examples/bench_report.rs`) of `tidings-benches`,
//! a crate that is never published: it keeps the peers and the plotting
//! crates out of a build of tidings: the same scenario
//! runs over tidings and its peers through one small trait, as flume's
//! benches do. Every contender moves `Arc`-shared events (fan-out must not
//! copy the payload), and every publisher yields once per 64 events so that
//! a publisher that never waits cannot starve its readers on 2 cores.

#![allow(dead_code)]
// The impls spell out `impl Future + Send + 'static`, as the trait does, so
// that a reader sees the bound every contender meets.
#![allow(clippy::manual_async_fn)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::{Bus, Clock, Event, Overflow, TopicConfig};

/// An event with `N` bytes of payload besides its sequence number and the
/// publisher that sent it.
#[derive(Debug, Clone, Event)]
#[event(topic = "bench.ev")]
pub struct Ev<const N: usize> {
    pub publisher: u32,
    pub n: u64,
    pub pad: [u8; N],
}

impl<const N: usize> Ev<N> {
    fn new(publisher: u32, n: u64) -> Self {
        Ev {
            publisher,
            n,
            pad: [0; N],
        }
    }
}

/// What a run moves: `publishers` tasks each publish `per_publisher` events
/// to `subscribers` readers with queues of `capacity`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub publishers: usize,
    pub subscribers: usize,
    pub capacity: usize,
    pub per_publisher: u64,
}

impl Shape {
    /// Deliveries a lossless contender makes.
    pub fn deliveries(&self) -> u64 {
        self.publishers as u64 * self.per_publisher * self.subscribers as u64
    }
}

/// One way of moving events from publishers to readers. `run` returns the
/// time from the first publish to the moment every reader has seen the last
/// event of every publisher.
pub trait Contender {
    const NAME: &'static str;
    /// Whether every reader receives every event.
    const LOSSLESS: bool;
    fn run<const N: usize>(shape: Shape) -> impl Future<Output = Duration> + Send + 'static;
}

/// The median of a run's measurements (the upper one of an even count),
/// as every bench program of this crate reports them. Panics on none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The number after `--name` on the command line, or `default` when it is
/// missing or not a number.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1)?.parse().ok())
        .unwrap_or(default)
}

pub async fn pace(i: u64) {
    if i % 64 == 63 {
        tokio::task::yield_now().await;
    }
}

/// Counts, per reader, the publishers whose last event it has seen.
struct Finals {
    publishers: usize,
    last: u64,
    seen: usize,
}

impl Finals {
    fn new(shape: Shape) -> Self {
        Finals {
            publishers: shape.publishers,
            last: shape.per_publisher - 1,
            seen: 0,
        }
    }
    /// True once every publisher's last event was seen.
    fn saw(&mut self, n: u64) -> bool {
        if n == self.last {
            self.seen += 1;
        }
        self.seen == self.publishers
    }
}

async fn publish_all<F, Fut>(shape: Shape, publish: F)
where
    F: Fn(u32, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..shape.publishers as u32)
        .map(|p| {
            let publish = publish.clone();
            tokio::spawn(async move {
                for i in 0..shape.per_publisher {
                    publish(p, i).await;
                    pace(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
}

async fn join_readers(readers: Vec<tokio::task::JoinHandle<()>>) {
    for r in readers {
        r.await.expect("reader");
    }
}

pub struct Tidings<const POLICY: u8>;
pub type TidingsBlock = Tidings<0>;
pub type TidingsDropOldest = Tidings<1>;
/// `Block` on a topic stamped with the coarse clock (`Clock::Coarse`).
pub type TidingsCoarse = Tidings<2>;

impl<const POLICY: u8> Contender for Tidings<POLICY> {
    const NAME: &'static str = match POLICY {
        0 => "tidings (Block)",
        1 => "tidings (DropOldest)",
        _ => "tidings (Block, coarse clock)",
    };
    const LOSSLESS: bool = POLICY != 1;
    fn run<const N: usize>(shape: Shape) -> impl Future<Output = Duration> + Send + 'static {
        async move {
            let policy = if POLICY == 1 {
                Overflow::DropOldest
            } else {
                Overflow::Block
            };
            let clock = if POLICY == 2 {
                Clock::Coarse
            } else {
                Clock::Precise
            };
            let bus = Bus::builder()
                .topic_with::<Ev<N>>(TopicConfig::default().clock(clock))
                .build()
                .expect("bus");
            let readers: Vec<_> = (0..shape.subscribers)
                .map(|_| {
                    let mut sub = bus
                        .subscribe::<Ev<N>>()
                        .capacity(shape.capacity)
                        .overflow(policy)
                        .stream()
                        .expect("subscribe");
                    tokio::spawn(async move {
                        let mut finals = Finals::new(shape);
                        while let Some(e) = sub.recv().await {
                            if finals.saw(e.n) {
                                break;
                            }
                        }
                    })
                })
                .collect();
            let events = bus.publisher::<Ev<N>>().expect("registered");
            let start = Instant::now();
            publish_all(shape, move |p, i| {
                let events = events.clone();
                async move {
                    events.publish(Ev::new(p, i)).await.expect("publish");
                }
            })
            .await;
            join_readers(readers).await;
            start.elapsed()
        }
    }
}

/// A bounded channel kind, for the hand-built "one channel per reader"
/// fan-out.
pub trait Channel: Send + Sync + 'static {
    const NAME: &'static str;
    type Tx<T: Send + Sync + 'static>: Send + Sync + 'static;
    type Rx<T: Send + Sync + 'static>: Send + 'static;
    fn bounded<T: Send + Sync + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Rx<T>);
    fn send<T: Send + Sync + 'static>(
        tx: &Self::Tx<T>,
        value: T,
    ) -> impl Future<Output = ()> + Send;
    fn recv<T: Send + Sync + 'static>(
        rx: &mut Self::Rx<T>,
    ) -> impl Future<Output = Option<T>> + Send;
}

/// `tokio::sync::mpsc`.
pub struct Mpsc;
impl Channel for Mpsc {
    const NAME: &'static str = "tokio mpsc (one per reader)";
    type Tx<T: Send + Sync + 'static> = tokio::sync::mpsc::Sender<T>;
    type Rx<T: Send + Sync + 'static> = tokio::sync::mpsc::Receiver<T>;
    fn bounded<T: Send + Sync + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Rx<T>) {
        tokio::sync::mpsc::channel(capacity)
    }
    async fn send<T: Send + Sync + 'static>(tx: &Self::Tx<T>, value: T) {
        tx.send(value).await.expect("send");
    }
    async fn recv<T: Send + Sync + 'static>(rx: &mut Self::Rx<T>) -> Option<T> {
        rx.recv().await
    }
}

/// `flume`.
pub struct FlumeChannel;
impl Channel for FlumeChannel {
    const NAME: &'static str = "flume (one per reader)";
    type Tx<T: Send + Sync + 'static> = flume::Sender<T>;
    type Rx<T: Send + Sync + 'static> = flume::Receiver<T>;
    fn bounded<T: Send + Sync + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Rx<T>) {
        flume::bounded(capacity)
    }
    async fn send<T: Send + Sync + 'static>(tx: &Self::Tx<T>, value: T) {
        tx.send_async(value).await.expect("send");
    }
    async fn recv<T: Send + Sync + 'static>(rx: &mut Self::Rx<T>) -> Option<T> {
        rx.recv_async().await.ok()
    }
}

/// `kanal`, through its async halves.
pub struct KanalChannel;
impl Channel for KanalChannel {
    const NAME: &'static str = "kanal (one per reader)";
    type Tx<T: Send + Sync + 'static> = kanal::AsyncSender<T>;
    type Rx<T: Send + Sync + 'static> = kanal::AsyncReceiver<T>;
    fn bounded<T: Send + Sync + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Rx<T>) {
        kanal::bounded_async(capacity)
    }
    async fn send<T: Send + Sync + 'static>(tx: &Self::Tx<T>, value: T) {
        tx.send(value).await.expect("send");
    }
    async fn recv<T: Send + Sync + 'static>(rx: &mut Self::Rx<T>) -> Option<T> {
        rx.recv().await.ok()
    }
}

/// One bounded channel per reader, every event sent to each: a hand-built
/// lossless fan-out (and, with one reader, the plain channel).
pub struct OnePerReader<C>(std::marker::PhantomData<C>);
pub type TokioMpsc = OnePerReader<Mpsc>;
pub type Flume = OnePerReader<FlumeChannel>;
pub type Kanal = OnePerReader<KanalChannel>;

impl<C: Channel> Contender for OnePerReader<C> {
    const NAME: &'static str = C::NAME;
    const LOSSLESS: bool = true;
    fn run<const N: usize>(shape: Shape) -> impl Future<Output = Duration> + Send + 'static {
        async move {
            let mut senders = Vec::new();
            let mut readers = Vec::new();
            for _ in 0..shape.subscribers {
                let (tx, mut rx) = C::bounded::<Arc<Ev<N>>>(shape.capacity);
                senders.push(tx);
                readers.push(tokio::spawn(async move {
                    let mut finals = Finals::new(shape);
                    while let Some(e) = C::recv(&mut rx).await {
                        if finals.saw(e.n) {
                            break;
                        }
                    }
                }));
            }
            let senders = Arc::new(senders);
            let start = Instant::now();
            publish_all(shape, move |p, i| {
                let senders = Arc::clone(&senders);
                async move {
                    let e = Arc::new(Ev::<N>::new(p, i));
                    for tx in senders.iter() {
                        C::send(tx, Arc::clone(&e)).await;
                    }
                }
            })
            .await;
            join_readers(readers).await;
            start.elapsed()
        }
    }
}

/// `tokio::sync::broadcast`: readers that fall behind skip (`Lagged`).
pub struct TokioBroadcast;
impl Contender for TokioBroadcast {
    const NAME: &'static str = "tokio broadcast";
    const LOSSLESS: bool = false;
    fn run<const N: usize>(shape: Shape) -> impl Future<Output = Duration> + Send + 'static {
        async move {
            use tokio::sync::broadcast::error::RecvError;
            let (tx, _) = tokio::sync::broadcast::channel::<Arc<Ev<N>>>(shape.capacity);
            let readers: Vec<_> = (0..shape.subscribers)
                .map(|_| {
                    let mut rx = tx.subscribe();
                    tokio::spawn(async move {
                        let mut finals = Finals::new(shape);
                        loop {
                            match rx.recv().await {
                                Ok(e) if finals.saw(e.n) => break,
                                Ok(_) | Err(RecvError::Lagged(_)) => {}
                                Err(RecvError::Closed) => break,
                            }
                        }
                    })
                })
                .collect();
            let start = Instant::now();
            publish_all(shape, move |p, i| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Arc::new(Ev::<N>::new(p, i)));
                }
            })
            .await;
            join_readers(readers).await;
            start.elapsed()
        }
    }
}

/// `async-broadcast` without overflow: senders wait for the slowest reader.
pub struct AsyncBroadcast;
impl Contender for AsyncBroadcast {
    const NAME: &'static str = "async-broadcast";
    const LOSSLESS: bool = true;
    fn run<const N: usize>(shape: Shape) -> impl Future<Output = Duration> + Send + 'static {
        async move {
            let (tx, rx) = async_broadcast::broadcast::<Arc<Ev<N>>>(shape.capacity);
            let readers: Vec<_> = (0..shape.subscribers)
                .map(|_| {
                    let mut rx = rx.clone();
                    tokio::spawn(async move {
                        let mut finals = Finals::new(shape);
                        while let Ok(e) = rx.recv().await {
                            if finals.saw(e.n) {
                                break;
                            }
                        }
                    })
                })
                .collect();
            drop(rx);
            let start = Instant::now();
            publish_all(shape, move |p, i| {
                let tx = tx.clone();
                async move {
                    tx.broadcast(Arc::new(Ev::<N>::new(p, i)))
                        .await
                        .expect("broadcast");
                }
            })
            .await;
            join_readers(readers).await;
            start.elapsed()
        }
    }
}

/// `jaeb`, the closest same-job event bus: one async handler per reader.
pub struct Jaeb;

struct JaebReader {
    seen: AtomicU64,
    expect: u64,
    /// One permit per reader that has seen everything.
    done: Arc<tokio::sync::Semaphore>,
}

impl<const N: usize> jaeb::EventHandler<Ev<N>> for JaebReader {
    async fn handle(&self, _event: &Ev<N>, _bus: &jaeb::EventBus) -> jaeb::HandlerResult {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.expect {
            self.done.add_permits(1);
        }
        Ok(())
    }
}

impl Contender for Jaeb {
    const NAME: &'static str = "jaeb";
    const LOSSLESS: bool = true;
    fn run<const N: usize>(shape: Shape) -> impl Future<Output = Duration> + Send + 'static {
        async move {
            let bus = jaeb::EventBus::builder().build().await.expect("jaeb bus");
            let done = Arc::new(tokio::sync::Semaphore::new(0));
            let expect = shape.publishers as u64 * shape.per_publisher;
            let mut subs = Vec::new();
            for _ in 0..shape.subscribers {
                let reader = JaebReader {
                    seen: AtomicU64::new(0),
                    expect,
                    done: Arc::clone(&done),
                };
                subs.push(
                    bus.subscribe::<Ev<N>, _, _>(reader)
                        .await
                        .expect("subscribe"),
                );
            }
            let start = Instant::now();
            let waiter = {
                let done = Arc::clone(&done);
                tokio::spawn(async move {
                    let all = u32::try_from(shape.subscribers).expect("few readers");
                    drop(done.acquire_many(all).await.expect("open"));
                })
            };
            let publisher_bus = bus.clone();
            publish_all(shape, move |p, i| {
                let bus = publisher_bus.clone();
                async move {
                    bus.publish(Ev::<N>::new(p, i)).await.expect("publish");
                }
            })
            .await;
            waiter.await.expect("waiter");
            let took = start.elapsed();
            drop(subs);
            let _ = bus.shutdown().await;
            took
        }
    }
}

/// S4: what one slow subscriber does to the others. Results in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    pub fast_p50_us: u64,
    pub fast_p99_us: u64,
    pub publish_p99_us: u64,
}

/// S4 over tidings: 15 fast stream readers record each event's delivery
/// latency, with or without a 16th subscriber that spends `slow_cost` of CPU
/// per event (a `.sync()` handler with `DropOldest`, so it can fall behind
/// without holding anyone up). The publisher sends `events` events, one
/// every `interval`, and records how long each publish took.
pub async fn isolation(events: u64, interval: Duration, slow_cost: Option<Duration>) -> Isolation {
    #[derive(Debug, Event)]
    #[event(topic = "bench.timed")]
    struct Timed {
        sent: Instant,
    }
    let bus = Bus::builder().topic::<Timed>().build().expect("bus");
    let _slow = slow_cost.map(|cost| {
        bus.subscribe::<Timed>()
            .name("slow")
            .capacity(64)
            .overflow(Overflow::DropOldest)
            .sync(move |_| {
                let start = Instant::now();
                while start.elapsed() < cost {
                    std::hint::spin_loop();
                }
            })
            .expect("subscribe")
    });
    let readers: Vec<_> = (0..15)
        .map(|_| {
            let mut sub = bus
                .subscribe::<Timed>()
                .capacity(1024)
                .stream()
                .expect("subscribe");
            tokio::spawn(async move {
                let mut h =
                    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
                        .expect("histogram");
                for _ in 0..events {
                    let Some(e) = sub.recv().await else { break };
                    h.saturating_record(e.sent.elapsed().as_micros() as u64);
                }
                h
            })
        })
        .collect();
    let mut publish = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("histogram");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..events {
        tick.tick().await;
        let start = Instant::now();
        bus.publish(Timed { sent: start }).await.expect("publish");
        publish.saturating_record(start.elapsed().as_micros() as u64);
    }
    let mut fast = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("histogram");
    for r in readers {
        fast.add(r.await.expect("reader")).expect("same bounds");
    }
    Isolation {
        fast_p50_us: fast.value_at_quantile(0.5),
        fast_p99_us: fast.value_at_quantile(0.99),
        publish_p99_us: publish.value_at_quantile(0.99),
    }
}
