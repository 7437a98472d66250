//! The capacity tuner (feature `tune`): runs a described workload against
//! your own handler at each capacity of a sweep and recommends the smallest
//! capacity that is within 5% of the best throughput and meets a publish
//! latency target. `benches/examples/tune.rs` in the repository is its
//! command line.
//!
//! ```no_run
//! use std::time::Duration;
//! use tidings::tune::{self, Workload};
//! use tidings::{Event, Overflow};
//!
//! #[derive(Event)]
//! #[event(topic = "orders.created")]
//! struct OrderCreated { id: u64 }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tidings::tune::TuneError> {
//! let workload = Workload {
//!     publishers: 2,
//!     subscribers: 8,
//!     events: 20_000,
//!     rate: Some(200_000),
//!     policy: Overflow::Block,
//!     p99_target: Duration::from_millis(1),
//! };
//! let tuning = tune::sweep(
//!     &workload,
//!     tune::powers_of_two(1, 65_536),
//!     |i| OrderCreated { id: i },
//!     |order: &OrderCreated| { std::hint::black_box(order.id); }, // your handler
//!     |step| eprintln!("capacity {}: {:.0} deliveries/s", step.capacity, step.throughput),
//! )
//! .await?;
//! println!("{tuning}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use crate::bus::Bus;
use crate::config::Overflow;
use crate::errors::{BuildError, SubscribeError};
use crate::event::Event;

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuneError {
    /// The event type's topic is invalid (a hand-written [`Event`] impl).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A step's subscription was refused.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

/// The workload to size for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Publishing tasks.
    pub publishers: usize,
    /// Subscriptions, each a `.sync()` handler running your handler.
    pub subscribers: usize,
    /// Events per step, across all publishers.
    pub events: u64,
    /// Events per second across all publishers; `None` publishes as fast as
    /// the bus takes them.
    pub rate: Option<u64>,
    /// The subscriptions' overflow policy.
    pub policy: Overflow,
    /// The publish latency (p99) the recommendation must meet.
    pub p99_target: Duration,
}

/// What one capacity gave.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Step {
    /// The subscriptions' capacity.
    pub capacity: usize,
    /// Deliveries per second (events × subscriptions, over the time from the
    /// first publish until every queue drained).
    pub throughput: f64,
    /// Publish call latency, median.
    pub publish_p50: Duration,
    /// Publish call latency, 99th percentile.
    pub publish_p99: Duration,
    /// Publish call latency, 99.9th percentile.
    pub publish_p999: Duration,
    /// Events delivered, over all subscriptions.
    pub delivered: u64,
    /// Events lost to a lossy policy, over all subscriptions.
    pub dropped: u64,
    /// The most events queued at once in one subscription.
    pub peak_queued: usize,
    /// An estimate of the memory those queued events held: `peak_queued`
    /// times the size of an event and its envelope (events are shared, not
    /// copied, between subscriptions).
    pub peak_bytes: usize,
}

impl Step {
    /// Whether some subscription's queue was ever full. When none was, the
    /// capacity never came into play: the step measured the handlers and
    /// the publishers, and a larger capacity would measure the same.
    pub fn filled(&self) -> bool {
        self.peak_queued >= self.capacity
    }
}

/// The sweep's steps and its recommendation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Tuning {
    /// One per capacity that was run, in sweep order.
    pub steps: Vec<Step>,
    /// Capacities that were not run: a subscription receives
    /// [`Workload::events`] events in a step, so a queue that holds that
    /// many can never fill, and its step would only repeat the largest one
    /// that can.
    pub unfillable: Vec<usize>,
    /// The smallest capacity within 5% of the best throughput whose publish
    /// p99 meets the target, if any does.
    pub recommended: Option<usize>,
    /// The target the recommendation had to meet.
    pub p99_target: Duration,
}

/// `from`, `2·from`, … up to `to` inclusive.
pub fn powers_of_two(from: usize, to: usize) -> Vec<usize> {
    std::iter::successors(Some(from.max(1)), |c| c.checked_mul(2))
        .take_while(|&c| c <= to)
        .collect()
}

/// Runs `workload` once per capacity in `capacities`, with `handler` as
/// every subscription's (sync) handler and `make_event(i)` as the i-th event,
/// and calls `on_step` after each. Capacities of [`Workload::events`] or
/// more are not run (a queue that large cannot fill in a step) but listed
/// in [`Tuning::unfillable`]. Needs a multi-thread tokio runtime.
///
/// # Errors
/// [`TuneError::Build`] if `E`'s topic is invalid (a hand-written
/// [`Event`]).
pub async fn sweep<E, G, H>(
    workload: &Workload,
    capacities: impl IntoIterator<Item = usize>,
    make_event: G,
    handler: H,
    mut on_step: impl FnMut(&Step),
) -> Result<Tuning, TuneError>
where
    E: Event,
    G: Fn(u64) -> E + Send + Sync + Clone + 'static,
    H: Fn(&E) + Send + Sync + Clone + 'static,
{
    let mut steps = Vec::new();
    let mut unfillable = Vec::new();
    for capacity in capacities {
        let capacity = capacity.max(1);
        if u64::try_from(capacity).map_or(true, |c| c >= workload.events.max(1)) {
            unfillable.push(capacity);
            continue;
        }
        let step = run_step(workload, capacity, make_event.clone(), handler.clone()).await?;
        on_step(&step);
        steps.push(step);
    }
    let best = steps.iter().map(|s| s.throughput).fold(0.0, f64::max);
    let recommended = steps
        .iter()
        .filter(|s| s.throughput >= 0.95 * best && s.publish_p99 <= workload.p99_target)
        .map(|s| s.capacity)
        .min();
    Ok(Tuning {
        steps,
        unfillable,
        recommended,
        p99_target: workload.p99_target,
    })
}

async fn run_step<E, G, H>(
    workload: &Workload,
    capacity: usize,
    make_event: G,
    handler: H,
) -> Result<Step, TuneError>
where
    E: Event,
    G: Fn(u64) -> E + Send + Sync + Clone + 'static,
    H: Fn(&E) + Send + Sync + Clone + 'static,
{
    let bus = Bus::builder().topic::<E>().build()?;
    let subs = (0..workload.subscribers.max(1))
        .map(|i| {
            let handler = handler.clone();
            bus.subscribe::<E>()
                .name(format!("tune-{i}"))
                .capacity(capacity)
                .overflow(workload.policy)
                .sync(move |e| handler(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let publishers = workload.publishers.max(1) as u64;
    let per_publisher = workload.events / publishers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let bus = bus.clone();
            let make_event = make_event.clone();
            // Each publisher's share of the rate, in bursts every millisecond.
            let per_ms = workload.rate.map(|r| (r / publishers / 1000).max(1));
            tokio::spawn(async move {
                let mut latency =
                    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).ok();
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                for i in 0..per_publisher {
                    if let Some(per_ms) = per_ms {
                        if i % per_ms == 0 {
                            tick.tick().await;
                        }
                    }
                    let at = Instant::now();
                    if bus
                        .publish(make_event(p * per_publisher + i))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if let Some(h) = &mut latency {
                        h.saturating_record(at.elapsed().as_nanos() as u64);
                    }
                }
                latency
            })
        })
        .collect();
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).ok();
    for t in tasks {
        if let (Ok(Some(h)), Some(all)) = (t.await, &mut latency) {
            let _ = all.add(h);
        }
    }
    let report = bus.shutdown(Duration::from_secs(3600)).await;
    let elapsed = start.elapsed();
    drop(subs);
    let delivered: u64 = report.subscriptions().map(|s| s.delivered).sum();
    let dropped: u64 = report.subscriptions().map(|s| s.dropped()).sum();
    let peak_queued = report
        .subscriptions()
        .map(|s| s.high_water)
        .max()
        .unwrap_or(0);
    let q = |quantile: f64| {
        Duration::from_nanos(
            latency
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(quantile)),
        )
    };
    Ok(Step {
        capacity,
        throughput: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        publish_p50: q(0.5),
        publish_p99: q(0.99),
        publish_p999: q(0.999),
        delivered,
        dropped,
        peak_queued,
        peak_bytes: peak_queued * (std::mem::size_of::<E>() + ENVELOPE_BYTES),
    })
}

/// What an event costs beside itself: its `Arc` counts, id, sequence
/// number and timestamp.
const ENVELOPE_BYTES: usize = 2 * 8 + 8 + 8 + 16;

impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| capacity | deliveries/s | publish p50 | p99 | p99.9 | dropped | peak queued | peak memory |"
        )?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for s in &self.steps {
            writeln!(
                f,
                "| {} | {:.0} | {:?} | {:?} | {:?} | {} | {}{} | {} KiB |",
                s.capacity,
                s.throughput,
                s.publish_p50,
                s.publish_p99,
                s.publish_p999,
                s.dropped,
                s.peak_queued,
                if s.filled() { "" } else { " (never full)" },
                s.peak_bytes.div_ceil(1024)
            )?;
        }
        if !self.steps.iter().all(Step::filled) {
            write!(
                f,
                "\n(never full): no queue filled at that capacity, so the capacity did not matter there; a larger one measures the same."
            )?;
        }
        if let (Some(first), Some(last)) = (self.unfillable.first(), self.unfillable.last()) {
            write!(
                f,
                "\nnot run: capacities {first} to {last}, which a step's events cannot fill; raise the events per step to measure them."
            )?;
        }
        match self.recommended {
            Some(c) => write!(
                f,
                "\nrecommended capacity: {c} (the smallest within 5% of the best throughput with publish p99 ≤ {:?})",
                self.p99_target
            ),
            None => write!(
                f,
                "\nno capacity met publish p99 ≤ {:?} within 5% of the best throughput: the handlers cannot keep up with this rate; add subscribers' concurrency, lower the rate or raise the target",
                self.p99_target
            ),
        }
    }
}
