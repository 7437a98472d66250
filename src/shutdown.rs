//! Graceful shutdown: draining every queue within a deadline, and the
//! [`ShutdownReport`] that says what happened to every event.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::ErasedQueue;
use crate::stats::{BusStats, SubscriptionStats};

/// Waits until every queue is closed, drained and idle, or `deadline` passes;
/// then cuts off what is left. Returns the time taken and whether the
/// deadline cut anything.
pub(crate) async fn drain(queues: &[Arc<dyn ErasedQueue>], deadline: Duration) -> (Duration, bool) {
    let start = Instant::now();
    let all_idle =
        futures::future::join_all(queues.iter().map(|q| poll_fn(move |cx| q.poll_idle(cx))));
    let deadline_hit = tokio::time::timeout(deadline, all_idle).await.is_err();
    if deadline_hit {
        for q in queues {
            q.cut_off();
        }
    }
    (start.elapsed(), deadline_hit)
}

/// What [`Bus::shutdown`](crate::Bus::shutdown) did: for every subscription,
/// what was delivered, dropped, and cut off by the deadline.
///
/// ```
/// # use std::time::Duration;
/// # use tidings::{Bus, Event};
/// # #[derive(Event)] #[event(topic = "jobs")] struct Job(u64);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<Job>().build()?;
/// let _idle = bus.subscribe::<Job>().name("never-read").stream()?;
/// bus.publish(Job(1)).await?;
/// let report = bus.shutdown(Duration::from_millis(10)).await;
/// assert!(!report.is_clean());
/// assert_eq!(report.cut_off(), 1, "{report}"); // listed, not lost silently
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ShutdownReport {
    /// How long the shutdown took.
    pub elapsed: Duration,
    /// Whether the deadline passed before every queue drained.
    pub deadline_hit: bool,
    /// The bus's numbers once shut down.
    pub stats: BusStats,
}

impl ShutdownReport {
    pub(crate) fn new(elapsed: Duration, deadline_hit: bool, stats: BusStats) -> Self {
        ShutdownReport {
            elapsed,
            deadline_hit,
            stats,
        }
    }

    /// Every subscription's final numbers.
    pub fn subscriptions(&self) -> impl Iterator<Item = &SubscriptionStats> {
        self.stats.subscriptions()
    }

    /// Events the deadline cut off: queued, never delivered.
    pub fn cut_off(&self) -> u64 {
        self.subscriptions().map(|s| s.cut_off).sum()
    }

    /// Handler runs still going when the deadline passed: async ones were
    /// cancelled, sync ones could not be and may still finish.
    pub fn in_flight(&self) -> usize {
        self.subscriptions().map(|s| s.in_flight).sum()
    }

    /// Events given up as dead letters (their handlers' attempts used up),
    /// during the run and the drain.
    pub fn dead_lettered(&self) -> u64 {
        self.subscriptions().map(|s| s.dead_lettered).sum()
    }

    /// Everything queued was delivered and every handler finished in time.
    pub fn is_clean(&self) -> bool {
        !self.deadline_hit && self.cut_off() == 0 && self.in_flight() == 0
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dead = self.dead_lettered();
        writeln!(
            f,
            "shutdown in {:?}: {}{}",
            self.elapsed,
            if self.is_clean() {
                "clean, every queue drained".to_owned()
            } else {
                format!(
                    "deadline hit, {} event(s) cut off, {} handler run(s) unfinished",
                    self.cut_off(),
                    self.in_flight()
                )
            },
            if dead > 0 {
                format!("; {dead} event(s) dead-lettered in all")
            } else {
                String::new()
            }
        )?;
        write!(f, "{}", self.stats)
    }
}
