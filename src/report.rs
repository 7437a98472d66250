//! What a shutdown did: [`ShutdownReport`], every subscription's final
//! numbers and every loose end ([`Unclean`]) named.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::id::SubscriptionId;
use crate::stats::{BusStats, SubscriptionStats};

/// Something a shutdown did not finish cleanly; see [`ShutdownReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Unclean {
    /// What it is.
    pub kind: UncleanKind,
    /// The topic.
    pub topic: &'static str,
    /// The subscription, for everything but refused publishes.
    pub subscription: Option<String>,
    /// How many events, runs or publishes.
    pub count: u64,
}

/// What kind of [`Unclean`] entry it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum UncleanKind {
    /// Events still queued when the deadline passed, never delivered.
    CutOff,
    /// Handler runs still going when the deadline passed: async ones were
    /// cancelled, sync ones could not be and may still finish.
    Unfinished,
    /// Publishes refused because the bus was shutting down: made from
    /// outside the bus's handlers while it drained, or by anyone, a
    /// handler still running past the deadline included, once it was shut
    /// down. Each caller got its event back.
    Refused,
    /// Events given up as dead letters while the bus drained.
    DeadLettered,
}

impl fmt::Display for Unclean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.count;
        let sub = self.subscription.as_deref().unwrap_or("");
        match self.kind {
            UncleanKind::CutOff => write!(
                f,
                "{n} event(s) cut off in subscription `{sub}` on topic `{}`",
                self.topic
            ),
            UncleanKind::Unfinished => write!(
                f,
                "{n} handler run(s) unfinished in subscription `{sub}` on topic `{}`",
                self.topic
            ),
            UncleanKind::Refused => write!(
                f,
                "{n} publish(es) on topic `{}` refused while the bus shut down",
                self.topic
            ),
            UncleanKind::DeadLettered => write!(
                f,
                "{n} event(s) dead-lettered during the drain by subscription `{sub}` on topic `{}`",
                self.topic
            ),
        }
    }
}

/// What [`Bus::shutdown`](crate::Bus::shutdown) did: every subscription's
/// final numbers, and every loose end named.
///
/// A report is clean when every queue drained and every handler finished
/// before the deadline, no publish was refused while the bus shut down, and
/// no event became a dead letter during the drain. Anything else is listed
/// in [`unclean`](ShutdownReport::unclean), one entry per subscription or
/// topic.
///
/// ```
/// # use std::time::Duration;
/// # use tidings::{Bus, Event, UncleanKind};
/// # #[derive(Event)] #[event(topic = "jobs")] struct Job(u64);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<Job>().build()?;
/// let _idle = bus.subscribe::<Job>().name("never-read").stream()?;
/// bus.publish(Job(1)).await?;
/// let report = bus.shutdown(Duration::from_millis(10)).await;
/// assert!(!report.is_clean());
/// assert_eq!(report.cut_off(), 1, "{report}"); // listed, not lost silently
/// assert_eq!(report.unclean[0].kind, UncleanKind::CutOff);
/// assert_eq!(report.unclean[0].subscription.as_deref(), Some("never-read"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ShutdownReport {
    /// How long the shutdown took.
    pub elapsed: Duration,
    /// Whether the deadline passed before the bus was quiet.
    pub deadline_hit: bool,
    /// The bus's numbers once shut down, including subscriptions that had
    /// unsubscribed and were still draining (without the worker pools' live
    /// state, which [`Bus::stats`](crate::Bus::stats) gives).
    pub stats: BusStats,
    /// Everything that keeps the report from being clean.
    pub unclean: Vec<Unclean>,
}

impl ShutdownReport {
    /// `before` are the numbers when shutdown began (for what happened
    /// during the drain); `caller` the subscription whose handler called
    /// shutdown, whose own run is still going and is not a loose end.
    pub(crate) fn new(
        elapsed: Duration,
        deadline_hit: bool,
        before: &BusStats,
        stats: BusStats,
        caller: Option<SubscriptionId>,
    ) -> Self {
        let dead_before: HashMap<SubscriptionId, u64> = before
            .subscriptions()
            .map(|s| (s.id, s.dead_lettered))
            .collect();
        let mut unclean = Vec::new();
        let mut entry = |kind, s: &SubscriptionStats, count: u64| {
            if count > 0 {
                unclean.push(Unclean {
                    kind,
                    topic: s.topic,
                    subscription: Some(s.name.clone()),
                    count,
                });
            }
        };
        for s in stats.subscriptions() {
            let own = u64::from(caller == Some(s.id));
            entry(UncleanKind::CutOff, s, s.cut_off);
            entry(
                UncleanKind::Unfinished,
                s,
                (s.in_flight as u64)
                    .saturating_sub(own)
                    .saturating_add(s.cancelled),
            );
            let before = dead_before.get(&s.id).copied().unwrap_or(0);
            entry(
                UncleanKind::DeadLettered,
                s,
                s.dead_lettered.saturating_sub(before),
            );
        }
        for t in &stats.topics {
            if t.refused > 0 {
                unclean.push(Unclean {
                    kind: UncleanKind::Refused,
                    topic: t.topic,
                    subscription: None,
                    count: t.refused,
                });
            }
        }
        ShutdownReport {
            elapsed,
            deadline_hit,
            stats,
            unclean,
        }
    }

    /// Every subscription's final numbers.
    pub fn subscriptions(&self) -> impl Iterator<Item = &SubscriptionStats> {
        self.stats.subscriptions()
    }

    fn count(&self, kind: UncleanKind) -> u64 {
        self.unclean
            .iter()
            .filter(|u| u.kind == kind)
            .map(|u| u.count)
            .sum()
    }

    /// Events the deadline cut off: queued, never delivered.
    pub fn cut_off(&self) -> u64 {
        self.count(UncleanKind::CutOff)
    }

    /// Handler runs still going when the deadline passed: async ones were
    /// cancelled (their subscriptions count them as `cancelled`), sync ones
    /// could not be and may still finish (`in_flight`).
    pub fn in_flight(&self) -> u64 {
        self.count(UncleanKind::Unfinished)
    }

    /// Publishes refused because the bus was shutting down.
    pub fn refused(&self) -> u64 {
        self.count(UncleanKind::Refused)
    }

    /// Events given up as dead letters while the bus drained.
    pub fn dead_lettered_in_drain(&self) -> u64 {
        self.count(UncleanKind::DeadLettered)
    }

    /// Every queue drained and every handler finished in time, nothing was
    /// refused and nothing dead-lettered during the drain.
    pub fn is_clean(&self) -> bool {
        !self.deadline_hit && self.unclean.is_empty()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shutdown in {:?}: ", self.elapsed)?;
        if self.is_clean() {
            writeln!(f, "clean, every queue drained")?;
        } else {
            let mut parts = Vec::new();
            if self.deadline_hit {
                parts.push(format!(
                    "deadline hit, {} event(s) cut off, {} handler run(s) unfinished",
                    self.cut_off(),
                    self.in_flight()
                ));
            }
            let refused = self.refused();
            if refused > 0 {
                parts.push(format!("{refused} publish(es) refused"));
            }
            let dead = self.dead_lettered_in_drain();
            if dead > 0 {
                parts.push(format!("{dead} event(s) dead-lettered during the drain"));
            }
            writeln!(f, "not clean: {}", parts.join("; "))?;
            for u in &self.unclean {
                writeln!(f, "- {u}")?;
            }
        }
        write!(f, "{}", self.stats)
    }
}
