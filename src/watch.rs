//! Blocked-runtime detection: async handlers whose polls take too long, sync
//! handlers far over their budget, and publishers kept waiting by a full
//! subscription. Each is recorded per subscription, reported at most once per
//! interval (a `tracing` warning and a metric), shown in the stats and
//! collected by [`Bus::health`](crate::Bus::health).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::config::{WatchConfig, WorkerPool};
use crate::id::SubscriptionId;
use crate::info::SubInfo;
use crate::stats::PoolHolder;

/// What kind of trouble a [`Finding`] is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum FindingKind {
    /// An async handler held a runtime worker thread for one poll longer
    /// than [`WatchConfig::slow_poll`](crate::WatchConfig::slow_poll): it does blocking or CPU-heavy work inside
    /// `async` code.
    SlowPoll,
    /// A blocking handler run ([`.sync()`](crate::HandlerBuilder::sync),
    /// [`.blocking()`](crate::HandlerBuilder::blocking)) went on longer than
    /// [`WatchConfig::sync_budget`](crate::WatchConfig::sync_budget). Seen
    /// while the run still goes (so a run that never returns is named too)
    /// or when it ends, and counted once per run; `worst` is the longest
    /// such run that ended, or the age at which one still going was seen.
    SyncOverBudget,
    /// A publisher waited longer than [`WatchConfig::publish_wait`](crate::WatchConfig::publish_wait) for room in
    /// this (full, `Block`) subscription.
    PublisherBlocked,
    /// The bus's own runner code around the handler failed (a panic outside
    /// the handler, e.g. in the handler error's `Display` or an event's
    /// `Drop`); the event it held became a dead letter naming the failure.
    /// Always reported, whatever the [`WatchConfig`](crate::WatchConfig) settings.
    RunnerFailed,
}

impl FindingKind {
    const ALL: [FindingKind; 4] = [
        FindingKind::SlowPoll,
        FindingKind::SyncOverBudget,
        FindingKind::PublisherBlocked,
        FindingKind::RunnerFailed,
    ];

    fn index(self) -> usize {
        match self {
            FindingKind::SlowPoll => 0,
            FindingKind::SyncOverBudget => 1,
            FindingKind::PublisherBlocked => 2,
            FindingKind::RunnerFailed => 3,
        }
    }

    /// What to do about it.
    pub fn advice(self) -> &'static str {
        match self {
            FindingKind::SlowPoll => {
                "move the work off the runtime: CPU-heavy work to a `.sync()` handler, waiting on a blocking driver or SDK to a `.blocking()` one"
            }
            FindingKind::SyncOverBudget => {
                "each such run holds a worker of its pool (a thread cannot be stopped): make the work cheaper, give a blocking call a timeout of its own, move waiting work to `.blocking()`, or raise `WatchConfig::sync_budget` if this is expected"
            }
            FindingKind::PublisherBlocked => {
                "this subscription cannot keep up: raise its capacity or concurrency, or choose a lossy overflow policy"
            }
            FindingKind::RunnerFailed => {
                "code run around the handler panicked (the handler error's Display, an event's Drop, or tidings itself); the event was dead-lettered with the panic message"
            }
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn metric_name(self) -> &'static str {
        match self {
            FindingKind::SlowPoll => "slow_poll",
            FindingKind::SyncOverBudget => "sync_over_budget",
            FindingKind::PublisherBlocked => "publisher_blocked",
            FindingKind::RunnerFailed => "runner_failed",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            FindingKind::SlowPoll => "slow poll",
            FindingKind::SyncOverBudget => "sync handler over budget",
            FindingKind::PublisherBlocked => "publisher blocked",
            FindingKind::RunnerFailed => "runner failed",
        })
    }
}

/// One kind of trouble seen in one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Finding {
    /// What was seen.
    pub kind: FindingKind,
    /// The subscription's topic.
    pub topic: &'static str,
    /// The subscription's name.
    pub subscription: String,
    /// The subscription's id.
    pub id: SubscriptionId,
    /// How many times it was seen.
    pub count: u64,
    /// The worst time seen: the longest poll, run or wait.
    pub worst: Duration,
    /// When it was last seen.
    pub last_seen: SystemTime,
    /// Whether it was seen within the last report interval.
    pub recent: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in subscription `{}` on topic `{}`: {} time(s), worst {:?}{}; {}",
            self.kind,
            self.subscription,
            self.topic,
            self.count,
            self.worst,
            if self.recent { "" } else { " (not recently)" },
            self.kind.advice()
        )
    }
}

/// What [`Bus::health`](crate::Bus::health) found: every subscription that
/// blocked the runtime, overran its budget or kept publishers waiting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Health {
    /// Everything seen since the bus was built, worst first.
    pub findings: Vec<Finding>,
    /// Topics whose `on_done` callbacks or event `Drop`s panicked while the
    /// bus ran them, outside any handler.
    pub callback_panics: Vec<CallbackPanics>,
    /// Worker pools whose every worker was busy for longer than
    /// [`WatchConfig::pool_exhausted`](crate::WatchConfig::pool_exhausted).
    pub pools: Vec<PoolExhausted>,
}

impl Health {
    /// No finding was seen, no callback panicked and no pool was exhausted
    /// within the last report interval.
    pub fn is_healthy(&self) -> bool {
        !self.findings.iter().any(|f| f.recent)
            && !self.callback_panics.iter().any(|p| p.recent)
            && !self.pools.iter().any(|p| p.recent)
    }
}

/// Every worker of one of the bus's pools was busy for longer than
/// [`WatchConfig::pool_exhausted`](crate::WatchConfig::pool_exhausted): work
/// for that pool waited, whatever its subscription. Names who held the
/// workers the last time it was seen. No run is stopped: a thread cannot
/// be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PoolExhausted {
    /// The pool.
    pub pool: WorkerPool,
    /// How many workers it has (all of them were busy).
    pub workers: usize,
    /// How many times it happened (a stretch of every worker busy counts
    /// once, however long).
    pub count: u64,
    /// The longest stretch of every worker busy seen.
    pub worst: Duration,
    /// Who held the workers when it was last seen, most workers first.
    pub holders: Vec<PoolHolder>,
    /// When it was last seen.
    pub last_seen: SystemTime,
    /// Whether it was seen within the last report interval.
    pub recent: bool,
}

impl fmt::Display for PoolExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pool exhausted: all {} workers busy, {} time(s), longest {:?}{}; held by ",
            self.pool,
            self.workers,
            self.count,
            self.worst,
            if self.recent { "" } else { " (not recently)" },
        )?;
        for (i, h) in self.holders.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{h}")?;
        }
        f.write_str("; raise the pool's size on the bus builder, lower these subscriptions' concurrency, or move waiting work to the I/O pool")
    }
}

/// Panics of user code that the bus ran for one topic outside any handler:
/// an [`on_done`](crate::PublishOptions::on_done) callback, or the `Drop`
/// of an event the bus let go of (evicted, discarded, cut off, or pushed
/// out of a retained log). Each was caught: the publish or the drain that
/// ran it went on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CallbackPanics {
    /// The topic of the events concerned.
    pub topic: &'static str,
    /// How many panics were caught.
    pub count: u64,
    /// The last panic's message, naming what panicked (`on_done: …` or
    /// `drop: …`).
    pub last_message: String,
    /// When the last one was caught.
    pub last_seen: SystemTime,
    /// Whether it was within the last report interval.
    pub recent: bool,
}

impl fmt::Display for CallbackPanics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "callback panicked on topic `{}`: {} time(s), last: {}{}; \
             fix the `on_done` callback or the event's `Drop` (the bus caught the panic and went on)",
            self.topic,
            self.count,
            self.last_message,
            if self.recent { "" } else { " (not recently)" },
        )
    }
}

/// What kind of user code a [`CallbackLog`] caught panicking.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Callback {
    OnDone,
    Drop,
}

/// The panics of one topic's callbacks (`on_done`, events' `Drop`s), which
/// the bus catches wherever it runs them.
pub(crate) struct CallbackLog {
    topic: &'static str,
    last: Mutex<Caught>,
}

/// What a [`CallbackLog`] caught so far.
#[derive(Default)]
struct Caught {
    count: u64,
    message: String,
    /// When the last one was caught (wall clock and monotonic).
    at: Option<(SystemTime, Instant)>,
}

impl CallbackLog {
    pub(crate) fn new(topic: &'static str) -> Self {
        CallbackLog {
            topic,
            last: Mutex::new(Caught::default()),
        }
    }

    /// Runs `f`, catching a panic in it: counted, warned about (a panic is
    /// a bug to fix, never routine), kept for `health()`.
    #[inline]
    pub(crate) fn run(&self, what: Callback, f: impl FnOnce()) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.caught(what, payload);
        }
    }

    #[cold]
    #[inline(never)]
    fn caught(&self, what: Callback, payload: Box<dyn std::any::Any + Send>) {
        let message = match payload.downcast_ref::<&'static str>() {
            Some(s) => (*s).to_owned(),
            None => payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "non-string panic payload".to_owned()),
        };
        let message = match what {
            Callback::OnDone => format!("on_done: {message}"),
            Callback::Drop => format!("drop: {message}"),
        };
        drop(payload);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            topic = self.topic,
            error = %message,
            "tidings: a callback panicked; the bus caught it and went on"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!("tidings_callback_panics_total", "topic" => self.topic).increment(1);
        let mut last = self.last.lock();
        last.count = last.count.saturating_add(1);
        last.message = message;
        last.at = Some((SystemTime::now(), Instant::now()));
    }

    /// How many panics were caught.
    pub(crate) fn count(&self) -> u64 {
        self.last.lock().count
    }

    /// The health entry, if anything panicked.
    pub(crate) fn entry(&self, every: Duration) -> Option<CallbackPanics> {
        let last = self.last.lock();
        let (at, mono) = last.at?;
        Some(CallbackPanics {
            topic: self.topic,
            count: last.count,
            last_message: last.message.clone(),
            last_seen: at,
            recent: mono.elapsed() < every,
        })
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() && self.callback_panics.is_empty() && self.pools.is_empty() {
            return f.write_str(
                "healthy: nothing blocked the runtime, overran or kept publishers waiting",
            );
        }
        writeln!(
            f,
            "{}: {} finding(s)",
            if self.is_healthy() {
                "healthy now"
            } else {
                "unhealthy"
            },
            self.findings.len() + self.callback_panics.len() + self.pools.len()
        )?;
        for pool in &self.pools {
            writeln!(f, "- {pool}")?;
        }
        for finding in &self.findings {
            writeln!(f, "- {finding}")?;
        }
        for panics in &self.callback_panics {
            writeln!(f, "- {panics}")?;
        }
        Ok(())
    }
}

#[derive(Default, Clone, Copy)]
struct Record {
    count: u64,
    worst: Duration,
    last_seen: Option<(SystemTime, Instant)>,
    last_reported: Option<Instant>,
    /// Seen since the last report.
    pending: u64,
    pending_worst: Duration,
}

/// A report due now: how many times and how bad since the last one.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Due {
    pub(crate) kind: FindingKind,
    pub(crate) count: u64,
    pub(crate) worst: Duration,
}

/// Per-subscription findings.
#[derive(Default)]
pub(crate) struct FindingLog {
    records: Mutex<[Record; 4]>,
}

impl FindingLog {
    /// Records one occurrence; returns a report if one is due.
    pub(crate) fn record(&self, kind: FindingKind, took: Duration, every: Duration) -> Option<Due> {
        let now = Instant::now();
        let mut records = self.records.lock();
        let r = &mut records[kind.index()];
        r.count += 1;
        r.worst = r.worst.max(took);
        r.last_seen = Some((SystemTime::now(), now));
        r.pending += 1;
        r.pending_worst = r.pending_worst.max(took);
        let due = match r.last_reported {
            None => true,
            Some(last) => now.duration_since(last) >= every,
        };
        if !due {
            return None;
        }
        r.last_reported = Some(now);
        let report = Due {
            kind,
            count: std::mem::take(&mut r.pending),
            worst: std::mem::take(&mut r.pending_worst),
        };
        Some(report)
    }

    /// A run counted already (while it went on) ended, taking `took`: only
    /// the worst time may change.
    pub(crate) fn worse(&self, kind: FindingKind, took: Duration) {
        let mut records = self.records.lock();
        let r = &mut records[kind.index()];
        r.worst = r.worst.max(took);
    }

    /// (count, worst) of one kind.
    pub(crate) fn totals(&self, kind: FindingKind) -> (u64, Duration) {
        let r = self.records.lock()[kind.index()];
        (r.count, r.worst)
    }

    pub(crate) fn findings(&self, info: &SubInfo, every: Duration, out: &mut Vec<Finding>) {
        let records = *self.records.lock();
        for kind in FindingKind::ALL {
            let r = records[kind.index()];
            let Some((last_seen, at)) = r.last_seen else {
                continue;
            };
            out.push(Finding {
                kind,
                topic: info.topic,
                subscription: info.name.to_string(),
                id: info.id,
                count: r.count,
                worst: r.worst,
                last_seen,
                recent: at.elapsed() < every,
            });
        }
    }
}

/// The watch configuration shared by a bus's topics; set once the bus is built.
pub(crate) type WatchSlot = Arc<std::sync::OnceLock<Arc<WatchConfig>>>;

pub(crate) fn current(slot: &WatchSlot) -> Arc<WatchConfig> {
    slot.get().cloned().unwrap_or_default()
}
