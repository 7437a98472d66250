//! What a bridge's tasks share, and the helpers they use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::conn::{self, Conn};
use super::stats::Counters;
use super::text::{panic_message, warn};
use super::wire::{Format, Ids};
use super::Durable;
use tidings::{Bus, Pattern};

/// What a bridge's tasks share.
pub(crate) struct Ctx {
    pub(crate) name: String,
    pub(crate) ids: Ids,
    pub(crate) bus: Bus,
    pub(crate) conn: Conn,
    pub(crate) durable: Option<Durable>,
    pub(crate) prefix: Option<String>,
    pub(crate) imports: Vec<Pattern>,
    pub(crate) format: Arc<dyn Format>,
    pub(crate) max_payload: usize,
    pub(crate) raw_limit: usize,
    pub(crate) share_keys: bool,
    /// The origin imported events carry, shared by all of them.
    pub(crate) shared_origin: Arc<str>,
    /// The scope of imported idempotency keys: `bridge:<name>`.
    pub(crate) key_scope: Arc<str>,
    pub(crate) queue_group: Option<String>,
    pub(crate) counters: Counters,
    /// Events an exporter holds between its subscription and the server.
    pub(crate) in_hand: AtomicU64,
    /// Stored messages handed to the bus whose handling has not finished:
    /// acknowledged when it has.
    pub(crate) unacked: Arc<AtomicU64>,
    pub(crate) last_restart: parking_lot::Mutex<Option<Instant>>,
    /// When a pull last went unanswered, and when that was last logged.
    pub(crate) unanswered: parking_lot::Mutex<(Option<Instant>, Option<Instant>)>,
    /// When a durable consumer was last made again.
    pub(crate) last_recreated: parking_lot::Mutex<Option<Instant>>,
    /// When a pull was last refused, and when that was last logged.
    pub(crate) refused_pulls: parking_lot::Mutex<(Option<Instant>, Option<Instant>)>,
    pub(crate) max_held: usize,
    /// When a rejection was last logged, and how many since were not.
    pub(crate) rejection_log: parking_lot::Mutex<(Option<Instant>, u64)>,
}

impl Ctx {
    pub(crate) fn origin(&self) -> &str {
        self.ids.origin()
    }

    pub(crate) fn subject(&self, topic: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}.{topic}"),
            None => topic.to_owned(),
        }
    }

    pub(crate) fn topic_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        match &self.prefix {
            Some(prefix) => subject.strip_prefix(prefix.as_str())?.strip_prefix('.'),
            None => Some(subject),
        }
    }

    /// The bytes of deliveries that may wait for the importer.
    pub(crate) fn conn_budget(&self) -> usize {
        self.max_held
    }

    /// Whether to log a rejection now (at most one line a second): then
    /// `Some` of how many were not logged since the last line.
    pub(crate) fn log_rejection(&self) -> Option<u64> {
        let mut log = self.rejection_log.lock();
        let now = Instant::now();
        match log.0 {
            Some(at) if now.duration_since(at) < Duration::from_secs(1) => {
                log.1 += 1;
                None
            }
            _ => {
                log.0 = Some(now);
                Some(std::mem::take(&mut log.1))
            }
        }
    }

    /// A pull from a durable consumer went unanswered: counted, reported
    /// in the bridge's health, and logged (at most once a minute: a stuck
    /// consumer leaves every pull unanswered).
    pub(crate) fn pull_unanswered(&self, stream: &str, consumer: &str) {
        self.count(
            &self.counters.pulls_unanswered,
            "tidings_bridge_pulls_unanswered_total",
        );
        if !seen_now(&self.unanswered) {
            return;
        }
        warn(
            &self.name,
            stream,
            &format!(
                "consumer `{consumer}` of stream `{stream}` answered no pull, not even \
                 when it expired: the broker's consumer is stuck (nats-server before \
                 2.9.15 can do this to a consumer created by several replicas at the \
                 same moment), though it exists; restarting the broker clears it"
            ),
        );
    }

    /// The server refused a pull from a durable consumer (409): counted,
    /// reported in the bridge's health, and logged (at most once a
    /// minute).
    pub(crate) fn pull_refused(&self, stream: &str, consumer: &str, why: &str) {
        self.count(
            &self.counters.pulls_refused,
            "tidings_bridge_pulls_refused_total",
        );
        if seen_now(&self.refused_pulls) {
            warn(
                &self.name,
                stream,
                &format!("the server refused a pull from consumer `{consumer}`: {why}"),
            );
        }
    }

    /// A durable consumer was gone and was made again: counted, reported
    /// in the bridge's health, logged. What it had delivered and not had
    /// acknowledged is delivered again by the new one (from the start of
    /// what the stream holds: handled once more only if no longer in the
    /// topic's dedup window).
    pub(crate) fn consumer_recreated(&self, stream: &str, consumer: &str) {
        self.count(
            &self.counters.consumers_recreated,
            "tidings_bridge_consumers_recreated_total",
        );
        *self.last_recreated.lock() = Some(Instant::now());
        warn(
            &self.name,
            stream,
            &format!("consumer `{consumer}` of stream `{stream}` was gone (deleted?): made again"),
        );
    }

    /// A task of the bridge failed and goes on: counted, reported.
    pub(crate) fn restarted(&self, topic: &str, message: &str) {
        self.count(&self.counters.restarts, "tidings_bridge_restarts_total");
        *self.last_restart.lock() = Some(Instant::now());
        warn(&self.name, topic, message);
    }

    pub(crate) fn count(&self, counter: &AtomicU64, metric: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(metric, "bridge" => self.name.clone()).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = metric;
    }
}

/// Runs `work` again whenever it fails (a panic in the bridge's own code),
/// counting and reporting each restart; returns once it finishes.
pub(crate) async fn supervised<F, Fut>(ctx: Arc<Ctx>, what: &'static str, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        match std::panic::AssertUnwindSafe(work()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                ctx.restarted(
                    what,
                    &format!(
                        "the {what} task failed ({}); starting it again",
                        panic_message(&*panic)
                    ),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A name unique to this bridge in this process run.
pub(crate) fn origin_id(name: &str) -> String {
    format!("{name}.{}", conn::random_token())
}

/// Records that a kind of trouble was seen now (`.0`, for the health
/// report); whether to log it, at most once a minute (`.1`: when it was
/// last logged).
fn seen_now(seen: &parking_lot::Mutex<(Option<Instant>, Option<Instant>)>) -> bool {
    let now = Instant::now();
    let mut seen = seen.lock();
    seen.0 = Some(now);
    let log = !seen
        .1
        .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
    if log {
        seen.1 = Some(now);
    }
    log
}

/// Ready once the bridge is told to stop.
pub(crate) async fn stopping(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
