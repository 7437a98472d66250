//! The handler runners' side of a subscription's state: how each attempt
//! ended, retries, dead letters, the breaker's changes, an event done, a
//! runner's own failure, and the watch's findings.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::queue::Wakeups;
use super::SubscriptionState;
use crate::info::SubInfo;
use crate::outcome::Outcome;
use crate::telemetry;
use crate::topic::breaker::Change;
use crate::watch::{Finding, FindingKind};

/// How an event's handling ended, after all its attempts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Final {
    Handled,
    /// Given up; `heard` when its dead letter reached a subscription (or
    /// was retained).
    DeadLettered {
        heard: bool,
    },
}

impl<E> SubscriptionState<E> {
    /// One attempt at event `event_id` ended after `took`: counted, logged,
    /// and the error of a failed attempt returned.
    pub(crate) fn attempted(
        &self,
        event_id: u64,
        outcome: &Outcome,
        took: Duration,
        retry: bool,
    ) -> Option<String> {
        match outcome {
            Outcome::Ok => {}
            Outcome::Failed(msg) => telemetry::warn_failure(&self.info, event_id, msg),
            Outcome::Panicked(msg) => telemetry::warn_panic(&self.info, event_id, msg),
            Outcome::TimedOut(_) => telemetry::warn_timeout(&self.info, event_id, took, true),
        }
        let error = outcome.error();
        if let Some(error) = &error {
            let mut s = self.state.lock();
            let c = &mut s.counters;
            match outcome {
                Outcome::Failed(_) => c.failures += 1,
                Outcome::Panicked(_) => c.panics += 1,
                Outcome::TimedOut(_) => c.timeouts += 1,
                Outcome::Ok => {}
            }
            c.last_error = Some(error.clone());
            // In the same critical section as the failure: no snapshot
            // sees a failed attempt that is to be retried and not yet
            // counted as retried.
            if retry {
                c.retried += 1;
            }
        }
        self.metrics.handled(outcome, took);
        if retry && error.is_some() {
            self.metrics.retried();
        }
        error
    }

    /// Handler side: a sync handler ran past its timeout (it could not be
    /// cancelled; its result stands).
    pub(crate) fn overran(&self, event_id: u64, took: Duration) {
        self.state.lock().counters.timeouts += 1;
        telemetry::warn_timeout(&self.info, event_id, took, false);
    }

    /// Handler side: a dead letter reached no subscription; logged once per
    /// subscription (and counted when the event is done).
    pub(crate) fn unheard(&self, event_id: u64, error: &str) {
        if !self.unheard_warned.swap(true, Ordering::Relaxed) {
            telemetry::warn_unheard_dead_letter(&self.info, event_id, error);
        }
    }

    /// Handler side: the circuit breaker changed state.
    pub(crate) fn breaker_changed(&self, change: Option<Change>) {
        if let Some(change) = change {
            telemetry::breaker_changed(&self.info, change.to, change.consecutive);
        }
    }

    /// Handler side: an event's handling is over, after all its attempts.
    /// Counted in the same critical section that ends its run, so no
    /// snapshot sees it in neither or both.
    pub(crate) fn done(&self, how: Final) {
        if let Final::DeadLettered { .. } = how {
            self.metrics.dead_lettered();
        }
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        match how {
            Final::Handled => s.counters.handled += 1,
            Final::DeadLettered { heard } => {
                s.counters.dead_lettered += 1;
                if !heard {
                    s.counters.dead_letters_unheard += 1;
                }
            }
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        s.wake_idle(&mut wakeups);
        drop(s);
        wakeups.wake();
    }

    /// Handler side: a run ends without its event being done: its task was
    /// cancelled at the shutdown deadline, or the deadline cut its wait to
    /// retry. Counted once, so that it is no longer in flight.
    pub(crate) fn cancelled(&self) {
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        s.counters.cancelled += 1;
        s.in_flight = s.in_flight.saturating_sub(1);
        s.wake_idle(&mut wakeups);
        drop(s);
        wakeups.wake();
    }

    /// Handler side: the runner itself (not the handler) failed with
    /// `message`, e.g. a panic in code the bus runs around the handler.
    /// Counted, kept as the last error, reported as a finding.
    pub(crate) fn runner_failed(&self, event_id: Option<u64>, message: &str) {
        {
            let mut s = self.state.lock();
            s.counters.runner_failures += 1;
            s.counters.last_error = Some(format!("runner failed: {message}"));
        }
        telemetry::warn_runner_failed(&self.info, event_id, message);
        self.finding(FindingKind::RunnerFailed, Duration::ZERO);
    }

    /// Blocking runner side: a runner waited `took` for a worker before a
    /// run.
    pub(crate) fn waited(&self, took: Duration) {
        if let Some(times) = &self.pool_times {
            times.wait.record(crate::pool::Shared::worker_index(), took);
        }
        self.metrics.worker_wait(took);
    }

    /// Blocking runner side: a handler run took `took`; `counted` if the
    /// pool's keeper saw it over budget while it ran.
    pub(crate) fn ran(&self, took: Duration, counted: bool) {
        if let Some(times) = &self.pool_times {
            times.run.record(crate::pool::Shared::worker_index(), took);
        }
        if self.watch.sync_budget_threshold().is_some_and(|b| took > b) {
            if counted {
                self.watcher.worse(FindingKind::SyncOverBudget, took);
            } else {
                self.finding(FindingKind::SyncOverBudget, took);
            }
        }
    }

    /// One poll of an async handler took `took`.
    pub(crate) fn polled(&self, took: Duration, threshold: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.worst_poll_ns.fetch_max(ns, Ordering::Relaxed);
        if took > threshold {
            self.finding(FindingKind::SlowPoll, took);
        }
    }

    /// One occurrence of a finding: recorded, and reported if one is due.
    pub(crate) fn finding(&self, kind: FindingKind, took: Duration) {
        if let Some(due) = self
            .watcher
            .record(kind, took, self.watch.report_interval())
        {
            telemetry::warn_finding(&self.info, &due);
        }
        self.metrics.finding(kind, self.watcher.totals(kind).1);
    }

    pub(crate) fn findings(&self, out: &mut Vec<Finding>) {
        self.watcher
            .findings(&self.info, self.watch.report_interval(), out);
    }
}

impl<E: Send + Sync + 'static> crate::pool::Client for SubscriptionState<E> {
    fn info(&self) -> &SubInfo {
        &self.info
    }

    fn long_run(&self, age: Duration) {
        self.finding(FindingKind::SyncOverBudget, age);
    }

    fn runner_restarted(&self, message: &str) {
        self.runner_failed(None, message);
    }
}
