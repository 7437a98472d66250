//! Counters and snapshots: [`BusStats`], [`TopicStats`], [`SubscriptionStats`].

use std::fmt;
use std::time::Duration;

use crate::config::{Overflow, WorkerPool};
use crate::id::SubscriptionId;
use crate::info::SubscriberKind;

/// Where a subscription's circuit breaker stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BreakerState {
    /// Events flow to the handler.
    Closed,
    /// The handler is not called until the cool-down ends.
    Open,
    /// One probe attempt is (or is about to be) running.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A snapshot of every topic on the bus; made by [`Bus::stats`](crate::Bus::stats).
///
/// It prints as a table (`Display`); with the `serde` feature it serializes.
///
/// ```
/// # use tidings::{Bus, Event, Overflow};
/// # #[derive(Event)] #[event(topic = "ticks")] struct Tick(u64);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<Tick>().build()?;
/// let _ui = bus.subscribe::<Tick>().name("ui").capacity(2).overflow(Overflow::DropOldest).stream()?;
/// for i in 0..5 {
///     bus.publish(Tick(i)).await?;
/// }
/// let stats = bus.stats();
/// let ui = stats.subscriptions().find(|s| s.name == "ui").expect("subscribed");
/// assert_eq!((ui.accepted, ui.queue_depth, ui.dropped_oldest), (5, 2, 3));
/// assert_eq!(stats.topic("ticks").map(|t| t.published), Some(5));
/// println!("{stats}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BusStats {
    /// One entry per registered topic, in name order.
    pub topics: Vec<TopicStats>,
    /// The bus's worker pools for blocking handlers (CPU, then I/O).
    pub pools: Vec<PoolStats>,
}

impl BusStats {
    /// The stats of one topic.
    pub fn topic(&self, topic: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|t| t.topic == topic)
    }

    /// Every subscription across topics: the current ones, then those that
    /// unsubscribed and are still draining ([`TopicStats::draining`]).
    pub fn subscriptions(&self) -> impl Iterator<Item = &SubscriptionStats> {
        self.topics
            .iter()
            .flat_map(|t| &t.subscriptions)
            .chain(self.topics.iter().flat_map(|t| &t.draining))
    }
}

/// A snapshot of one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic.
    pub topic: &'static str,
    /// Events accepted (publishes that returned `Ok`).
    pub published: u64,
    /// Subscriptions that have unsubscribed (they no longer appear below).
    pub unsubscribed: u64,
    /// Events still queued in subscriptions that were dropped without
    /// draining, and so never delivered.
    pub discarded_on_unsubscribe: u64,
    /// Publishes refused because the bus was shutting down or shut down
    /// ([`Refusal::Closed`](crate::error::Refusal::Closed)), each
    /// event handed back to its caller.
    pub refused: u64,
    /// Panics caught in callbacks the bus ran for this topic's events
    /// (`on_done`, an event's `Drop`), outside any handler; also in
    /// [`Bus::health`](crate::Bus::health).
    pub callback_panics: u64,
    /// The accepted events that had a cause, by the topic of the event
    /// that caused them, in the order those topics were first seen: the
    /// edges of the bus's flow from this topic's side. An event has a cause
    /// when it was published from inside a handler of the bus (the event
    /// being handled), or said to
    /// ([`PublishOptions::follows`](crate::PublishOptions::follows),
    /// [`cause`](crate::PublishOptions::cause)); the others, `published`
    /// less [`caused`](TopicStats::caused), were roots. A dead letter's
    /// cause is the event that failed.
    pub caused_by: Vec<CausedBy>,
    /// The current subscriptions (and, after shutdown, the ones shut down).
    pub subscriptions: Vec<SubscriptionStats>,
    /// Subscriptions that unsubscribed
    /// ([`SubscriptionHandle::unsubscribe`](crate::SubscriptionHandle::unsubscribe),
    /// [`Subscription::close`](crate::Subscription::close)) while they still
    /// held events or ran their handler, and are still draining; listed until
    /// they finish, and kept in a shutdown report, which waits for them.
    pub draining: Vec<SubscriptionStats>,
}

/// How the printed stats and the metrics name a cause known by its id
/// only ([`CausedBy::topic`] is `None`).
pub(crate) const BY_ID_ONLY: &str = "(by id only)";

impl TopicStats {
    /// How many accepted events had a cause: the sum of
    /// [`caused_by`](TopicStats::caused_by).
    pub fn caused(&self) -> u64 {
        self.caused_by.iter().map(|c| c.events).sum()
    }
}

/// How many events of a topic the events of one topic caused: a row of
/// [`TopicStats::caused_by`].
///
/// ```
/// # use tidings::{Bus, Event};
/// # #[derive(Event)] #[event(topic = "orders.placed")] struct OrderPlaced { id: u64 }
/// # #[derive(Event)] #[event(topic = "orders.charged")] struct OrderCharged { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderPlaced>().topic::<OrderCharged>().build()?;
/// let charges = bus.publisher::<OrderCharged>()?;
/// let billing = bus.subscribe::<OrderPlaced>().handler(move |order| {
///     let charges = charges.clone();
///     async move { charges.publish(OrderCharged { id: order.id }).await.map(|_| ()) }
/// })?;
/// for id in 0..3 {
///     bus.publish(OrderPlaced { id }).await?;
/// }
/// bus.shutdown(std::time::Duration::from_secs(5)).await;
/// let stats = bus.stats();
/// let charged = stats.topic("orders.charged").expect("registered");
/// assert_eq!(charged.caused(), 3);
/// assert_eq!(charged.caused_by[0].topic, Some("orders.placed"));
/// assert_eq!(stats.topic("orders.placed").map(|t| t.caused()), Some(0)); // roots
/// # drop(billing);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CausedBy {
    /// The topic of the causing events; `None` for causes known by their
    /// id only: events of another process (through a bridge), or named with
    /// [`PublishOptions::cause`](crate::PublishOptions::cause).
    pub topic: Option<&'static str>,
    /// How many accepted events they caused.
    pub events: u64,
}

/// A snapshot of one subscription.
///
/// The numbers always add up:
/// `accepted == delivered + dropped() + discarded + cut_off + queue_depth`,
/// and for lossy policies the in-band [`Envelope::missed`](crate::Envelope::missed)
/// counts received so far plus `missed_unreported` (plus those of queued events) equal
/// `dropped()`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// The subscription's id.
    pub id: SubscriptionId,
    /// Its name (see [`SubscribeBuilder::name`](crate::SubscribeBuilder::name)).
    pub name: String,
    /// Its topic.
    pub topic: &'static str,
    /// Stream, async or sync handler.
    pub kind: SubscriberKind,
    /// Its overflow policy.
    pub policy: Overflow,
    /// Its queue capacity.
    pub capacity: usize,
    /// Whether it no longer takes events (unsubscribed or shut down).
    pub closed: bool,
    /// Events queued now.
    pub queue_depth: usize,
    /// The most events ever queued at once. Exact for subscriptions with a
    /// queue of their own (lossy policies); for lossless subscriptions, which
    /// read the topic's ring, it is sampled on every 16th event taken and
    /// whenever a publisher finds the subscription full, so it can miss a
    /// brief peak but never exceeds the real one, and a queue that filled up
    /// shows as full.
    pub high_water: usize,
    /// Events published while it was subscribed.
    pub accepted: u64,
    /// Events handed to its reader or handler.
    pub delivered: u64,
    /// Events evicted to make room ([`Overflow::DropOldest`]).
    pub dropped_oldest: u64,
    /// Events discarded because it was full ([`Overflow::DropNewest`]).
    pub dropped_newest: u64,
    /// Events dropped from its queue when it was unsubscribed without draining.
    pub discarded: u64,
    /// Events dropped from its queue when a shutdown deadline passed.
    pub cut_off: u64,
    /// Losses that no delivered envelope has reported yet (they come with
    /// the next one, if any).
    pub missed_unreported: u64,
    /// Handler runs in progress.
    pub in_flight: usize,
    /// Handler runs that never finished: async runs cancelled by a
    /// shutdown deadline, and runs whose retry wait the deadline cut. Their
    /// events were delivered and are neither handled nor dead-lettered; the
    /// shutdown report names them as unfinished.
    pub cancelled: u64,
    /// Events its handler handled successfully (on any attempt).
    pub handled: u64,
    /// Handler attempts that returned an error.
    pub failures: u64,
    /// Handler attempts that panicked.
    pub panics: u64,
    /// Handler attempts that overran the subscription's
    /// [timeout](crate::SubscribeBuilder::timeout): cancelled (async) or
    /// reported (sync).
    pub timeouts: u64,
    /// Attempts beyond the first: re-runs under its [`RetryPolicy`](crate::RetryPolicy).
    pub retried: u64,
    /// Events given up after their last failed attempt, published as
    /// [`DeadLetter`](crate::DeadLetter)s. For a handler subscription,
    /// `delivered == handled + dead_lettered + in_flight + cancelled`.
    pub dead_lettered: u64,
    /// Of those, dead letters that reached no subscription (and were not
    /// retained).
    pub dead_letters_unheard: u64,
    /// Failures of the bus's own runner code around the handler (not of the
    /// handler): each event it held became a dead letter naming the
    /// failure, and [`Bus::health`](crate::Bus::health) reports it.
    pub runner_failures: u64,
    /// Its circuit breaker's state, if it has one.
    pub breaker: Option<BreakerState>,
    /// How often its circuit breaker has opened.
    pub breaker_opened: u64,
    /// Retained events it was given when it subscribed
    /// ([`StartAt`](crate::StartAt)); included in `accepted`.
    pub replayed: u64,
    /// The message of the last failed attempt.
    pub last_error: Option<String>,
    /// Polls of an async handler longer than [`WatchConfig::slow_poll`](crate::WatchConfig::slow_poll).
    pub slow_polls: u64,
    /// The longest single poll of an async handler (zero for other kinds,
    /// or with the poll watch off).
    pub worst_poll: Duration,
    /// Sync handler runs longer than [`WatchConfig::sync_budget`](crate::WatchConfig::sync_budget).
    pub over_budget: u64,
    /// The longest of those runs.
    pub worst_run: Duration,
    /// Publishes that waited longer than [`WatchConfig::publish_wait`](crate::WatchConfig::publish_wait)
    /// for room in this subscription.
    pub publishers_blocked: u64,
    /// The longest of those waits.
    pub worst_publisher_wait: Duration,
    /// For a blocking handler ([`.sync()`](crate::HandlerBuilder::sync),
    /// [`.blocking()`](crate::HandlerBuilder::blocking)): how long its
    /// runners waited for a worker of their pool, from having an event (or
    /// their turn back) to a worker taking them up; `None` for other kinds
    /// or before any wait. Quantiles at most 25 % above the true value.
    pub worker_wait: Option<Quantiles>,
    /// For a blocking handler: how long its runs took.
    pub run_time: Option<Quantiles>,
}

/// Two quantiles of a subscription's durations; each at most 25 % above
/// the true value (the histogram keeps four buckets per power of two).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Quantiles {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

impl Quantiles {
    pub(crate) fn new(p50: Duration, p99: Duration) -> Self {
        Quantiles { p50, p99 }
    }
}

/// One of the bus's worker pools at a moment: see
/// [`WorkerPool`](crate::WorkerPool).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool.
    pub pool: WorkerPool,
    /// The most workers it runs.
    pub max_workers: usize,
    /// Workers started now (they start when there is work, and end after
    /// 10 s without any).
    pub workers: usize,
    /// Workers running a handler's runner now.
    pub busy: usize,
    /// Runners with work waiting for a worker now.
    pub queued: usize,
    /// Who holds the busy workers, most workers first.
    pub holders: Vec<PoolHolder>,
    /// How many times every worker was busy for longer than
    /// [`WatchConfig::pool_exhausted`](crate::WatchConfig::pool_exhausted).
    pub exhausted: u64,
}

/// A subscription holding workers of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PoolHolder {
    /// The subscription's topic.
    pub topic: &'static str,
    /// The subscription's name.
    pub subscription: String,
    /// The subscription's id.
    pub id: SubscriptionId,
    /// How many workers it holds.
    pub workers: usize,
    /// How long its oldest run has been going.
    pub oldest_run: Duration,
}

impl fmt::Display for PoolHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` on `{}` ({} worker(s), oldest run {:?})",
            self.subscription, self.topic, self.workers, self.oldest_run
        )
    }
}

impl SubscriptionStats {
    /// All events lost to the overflow policy.
    pub fn dropped(&self) -> u64 {
        self.dropped_oldest + self.dropped_newest
    }

    /// Handler attempts that failed: errors, panics, and async handlers
    /// cancelled by their timeout (a sync handler's overrun is reported, not
    /// failed).
    pub fn failed_attempts(&self) -> u64 {
        let cancelled = match self.kind {
            SubscriberKind::Async => self.timeouts,
            _ => 0,
        };
        self.failures + self.panics + cancelled
    }

    /// Events accepted but not delivered, for any reason.
    pub fn undelivered(&self) -> u64 {
        self.dropped() + self.discarded + self.cut_off + self.queue_depth as u64
    }
}

impl fmt::Display for SubscriptionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} {}, {}): accepted {}, delivered {}, dropped {}, discarded {}, cut off {}, queued {}/{} (high-water {}), failed {}, panicked {}",
            self.name,
            self.kind,
            self.policy,
            self.topic,
            self.accepted,
            self.delivered,
            self.dropped(),
            self.discarded,
            self.cut_off,
            self.queue_depth,
            self.capacity,
            self.high_water,
            self.failures,
            self.panics,
        )?;
        if self.timeouts > 0 {
            write!(f, ", timed out {}", self.timeouts)?;
        }
        if self.retried > 0 || self.dead_lettered > 0 {
            write!(
                f,
                ", retried {}, dead-lettered {}",
                self.retried, self.dead_lettered
            )?;
            if self.dead_letters_unheard > 0 {
                write!(f, " ({} unheard)", self.dead_letters_unheard)?;
            }
        }
        if self.cancelled > 0 {
            write!(f, ", cancelled {}", self.cancelled)?;
        }
        if let Some(breaker) = self.breaker {
            write!(f, ", breaker {breaker} (opened {}x)", self.breaker_opened)?;
        }
        if self.replayed > 0 {
            write!(f, ", replayed {}", self.replayed)?;
        }
        if self.worst_poll > Duration::ZERO {
            write!(f, ", worst poll {}", ms(self.worst_poll))?;
        }
        if let Some(err) = &self.last_error {
            write!(f, "; last error: {err}")?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    }
}

/// A table, one row per subscription, its columns named as the
/// [`SubscriptionStats`] fields and methods they show: `topic`, `name`,
/// `kind`, `policy`, `capacity`, `queue_depth`, `high_water`, `delivered`,
/// `dropped()`, `failed_attempts()`, `retried`, `dead_lettered`,
/// `worst_poll` (async handlers only), and, when there are blocking
/// handlers, `worker_wait` and `run_time` (p50/p99) followed by a line per
/// worker pool in use. A topic without subscriptions is one
/// row saying how many events it published; a subscription that left but
/// still drains is marked `(left)`. When events had causes, a second table
/// follows, a row per [`TopicStats::caused_by`] entry: `topic`,
/// `caused_by` (the causing topic, or `(by id only)`), `events`.
impl fmt::Display for BusStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The columns are named as the fields (and methods) of
        // `SubscriptionStats` they show.
        const HEAD: [&str; 15] = [
            "topic",
            "name",
            "kind",
            "policy",
            "capacity",
            "queue_depth",
            "high_water",
            "delivered",
            "dropped",
            "failed_attempts",
            "retried",
            "dead_lettered",
            "worst_poll",
            "worker_wait",
            "run_time",
        ];
        let quantiles = |q: Option<Quantiles>| {
            q.map_or("-".to_owned(), |q| format!("{}/{}", ms(q.p50), ms(q.p99)))
        };
        let mut rows: Vec<[String; 15]> = Vec::new();
        for t in &self.topics {
            if t.subscriptions.is_empty() && t.draining.is_empty() {
                let mut row: [String; 15] = Default::default();
                row[0] = t.topic.to_owned();
                row[1] = format!("(none; {} published)", t.published);
                rows.push(row);
            }
            let draining = t.draining.iter().map(|s| (s, " (left)"));
            for (s, mark) in t.subscriptions.iter().map(|s| (s, "")).chain(draining) {
                rows.push([
                    s.topic.to_owned(),
                    format!("{}{mark}", s.name),
                    s.kind.to_string(),
                    s.policy.to_string(),
                    s.capacity.to_string(),
                    s.queue_depth.to_string(),
                    s.high_water.to_string(),
                    s.delivered.to_string(),
                    s.dropped().to_string(),
                    s.failed_attempts().to_string(),
                    s.retried.to_string(),
                    s.dead_lettered.to_string(),
                    if s.kind == SubscriberKind::Async {
                        ms(s.worst_poll)
                    } else {
                        "-".to_owned()
                    },
                    quantiles(s.worker_wait),
                    quantiles(s.run_time),
                ]);
            }
        }
        // The pool columns only when there are blocking handlers.
        if self.subscriptions().any(|s| s.kind.pool().is_some()) {
            table(f, &HEAD, &rows, 4)?;
            for p in self
                .pools
                .iter()
                .filter(|p| p.workers > 0 || p.exhausted > 0)
            {
                writeln!(
                    f,
                    "pool {}: {} of {} workers started, {} busy, {} runner(s) waiting, exhausted {} time(s)",
                    p.pool, p.workers, p.max_workers, p.busy, p.queued, p.exhausted
                )?;
            }
        } else {
            let narrow =
                |row: &[String; 15]| -> [String; 13] { std::array::from_fn(|i| row[i].clone()) };
            let head: [&str; 13] = std::array::from_fn(|i| HEAD[i]);
            let rows: Vec<[String; 13]> = rows.iter().map(narrow).collect();
            table(f, &head, &rows, 4)?;
        }
        // What caused what, when anything did: one row per pair of topics.
        let causes: Vec<[String; 3]> = self
            .topics
            .iter()
            .flat_map(|t| {
                t.caused_by.iter().map(move |c| {
                    [
                        t.topic.to_owned(),
                        c.topic.unwrap_or(BY_ID_ONLY).to_owned(),
                        c.events.to_string(),
                    ]
                })
            })
            .collect();
        if !causes.is_empty() {
            writeln!(f)?;
            table(f, &["topic", "caused_by", "events"], &causes, 2)?;
        }
        Ok(())
    }
}

/// Writes `rows` under `head` in columns as wide as their widest cell: the
/// first `names` columns left-aligned, the rest (numbers) right-aligned.
fn table<const N: usize>(
    f: &mut fmt::Formatter<'_>,
    head: &[&str; N],
    rows: &[[String; N]],
    names: usize,
) -> fmt::Result {
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            use fmt::Write as _;
            if i < names {
                write!(text, "{cell:<w$}  ")?;
            } else {
                write!(text, "{cell:>w$}  ")?;
            }
        }
        writeln!(f, "{}", text.trim_end())
    };
    line(f, head)?;
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(f, &cells)?;
    }
    Ok(())
}
