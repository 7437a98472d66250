//! What the bus tells the outside world as it works: `tracing` spans and
//! warnings (feature `tracing`) and `metrics` counters, gauges and histograms
//! (feature `metrics`). With a feature off its half compiles to nothing.
//!
//! Metric handles are registered once, when a topic or subscription is made,
//! so the hot path never builds a key or allocates: install the metrics
//! recorder before building the bus. Labels are the topic, the subscription
//! name and the policy, never anything per event, so their number stays
//! bounded.

use std::time::Duration;

use crate::info::SubInfo;
use crate::outcome::Outcome;
use crate::stats::BreakerState;
use crate::watch::{Due, FindingKind};

/// A span, or nothing when the `tracing` feature is off.
#[cfg(feature = "tracing")]
pub(crate) type Span = tracing::Span;

/// A span, or nothing when the `tracing` feature is off.
#[cfg(not(feature = "tracing"))]
#[derive(Clone, Debug)]
pub(crate) struct Span;

/// The span of one publish; the receipt is recorded into it on success.
#[inline]
pub(crate) fn publish_span(topic: &'static str) -> Span {
    #[cfg(feature = "tracing")]
    {
        tracing::debug_span!(
            "tidings.publish",
            topic,
            event_id = tracing::field::Empty,
            seq = tracing::field::Empty,
            enqueued = tracing::field::Empty,
            evicted_oldest = tracing::field::Empty,
            dropped_newest = tracing::field::Empty,
        )
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = topic;
        Span
    }
}

#[inline]
pub(crate) fn record_receipt(span: &Span, receipt: &crate::receipt::PublishReceipt) {
    #[cfg(feature = "tracing")]
    if !span.is_disabled() {
        span.record("event_id", receipt.id.get());
        span.record("seq", receipt.seq);
        span.record("enqueued", receipt.enqueued);
        span.record("evicted_oldest", receipt.evicted_oldest);
        span.record("dropped_newest", receipt.dropped_newest);
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (span, receipt);
}

/// The OpenTelemetry span context of the current `tracing` span, if it has
/// a valid one (an OpenTelemetry layer is installed and the span is
/// recorded).
#[cfg(feature = "opentelemetry")]
pub(crate) fn trace_parent() -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let current = tracing::Span::current();
    if current.is_disabled() {
        return None;
    }
    let context = current.context();
    let span = context.span();
    let parent = span.span_context();
    parent.is_valid().then(|| parent.clone())
}

/// The span of one handler run.
#[inline]
pub(crate) fn handler_span(
    info: &SubInfo,
    event_id: u64,
    seq: u64,
    attempt: u32,
    meta: Option<&crate::event::Meta>,
) -> Span {
    let cause = meta.and_then(|m| m.cause.as_ref());
    #[cfg(feature = "tracing")]
    {
        let span = tracing::debug_span!(
            "tidings.handle",
            subscription = &*info.name,
            topic = info.topic,
            kind = %info.kind,
            event_id,
            seq,
            attempt,
            caused_by = tracing::field::Empty,
            correlation = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        if let Some(cause) = cause.filter(|_| !span.is_disabled()) {
            span.record("caused_by", tracing::field::display(&cause.caused_by));
            span.record("correlation", tracing::field::display(&cause.correlation));
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(parent) = meta.and_then(|m| m.parent.as_ref()) {
            use opentelemetry::trace::TraceContextExt;
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            if !span.is_disabled() {
                // The handler's span joins the publisher's trace.
                let context =
                    opentelemetry::Context::new().with_remote_span_context(parent.clone());
                let _ = span.set_parent(context);
            }
        }
        span
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = (info, event_id, seq, attempt, cause);
        Span
    }
}

#[inline]
pub(crate) fn record_run(span: &Span, outcome: &Outcome, took: Duration) {
    #[cfg(feature = "tracing")]
    if !span.is_disabled() {
        span.record("outcome", outcome.label());
        span.record("duration_us", took.as_micros() as u64);
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (span, outcome, took);
}

/// Whether anything will use a handler run's duration: the metrics, or an
/// enabled span. Without either, no clock is read for it.
#[inline]
pub(crate) fn wants_duration(span: &Span) -> bool {
    #[cfg(feature = "tracing")]
    let traced = !span.is_disabled();
    #[cfg(not(feature = "tracing"))]
    let traced = {
        let _ = span;
        false
    };
    traced || cfg!(feature = "metrics")
}

/// Runs `f` inside `span`; a disabled span costs nothing.
#[inline]
pub(crate) fn in_span<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "tracing")]
    if !span.is_disabled() {
        return span.in_scope(f);
    }
    let _ = span;
    f()
}

pub(crate) fn warn_failure(info: &SubInfo, event_id: u64, error: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        event_id,
        error,
        "tidings: handler failed"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, event_id, error);
}

pub(crate) fn warn_panic(info: &SubInfo, event_id: u64, message: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        event_id,
        panic = message,
        "tidings: handler panicked; the subscription goes on"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, event_id, message);
}

pub(crate) fn warn_timeout(info: &SubInfo, event_id: u64, took: Duration, cancelled: bool) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        event_id,
        took_ms = took.as_secs_f64() * 1e3,
        cancelled,
        "tidings: handler overran its timeout"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, event_id, took, cancelled);
}

pub(crate) fn warn_runner_failed(info: &SubInfo, event_id: Option<u64>, error: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        event_id,
        error,
        "tidings: the handler runner failed; the event it held was dead-lettered and the runner goes on"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, event_id, error);
}

pub(crate) fn warn_unheard_dead_letter(info: &SubInfo, event_id: u64, error: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        event_id,
        error,
        "tidings: event dead-lettered with nobody subscribed to dead letters; counted in stats as dead_letters_unheard (logged once per subscription)"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, event_id, error);
}

pub(crate) fn breaker_changed(info: &SubInfo, to: BreakerState, consecutive: u32) {
    #[cfg(feature = "tracing")]
    match to {
        BreakerState::Open => tracing::warn!(
            subscription = &*info.name,
            topic = info.topic,
            consecutive_failures = consecutive,
            "tidings: circuit breaker opened; events wait in the queue"
        ),
        other => tracing::info!(
            subscription = &*info.name,
            topic = info.topic,
            state = %other,
            "tidings: circuit breaker state changed"
        ),
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (info, to, consecutive);
}

pub(crate) fn warn_drops(info: &SubInfo, dropped: u64) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        policy = %info.policy,
        dropped,
        capacity = info.capacity,
        "tidings: subscription is full and dropping events"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, dropped);
}

pub(crate) fn warn_finding(info: &SubInfo, due: &Due) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        subscription = &*info.name,
        topic = info.topic,
        finding = %due.kind,
        count = due.count,
        worst_ms = due.worst.as_secs_f64() * 1e3,
        advice = due.kind.advice(),
        "tidings: {} in subscription `{}` ({:?} worst)",
        due.kind,
        info.name,
        due.worst,
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (info, due);
}

/// A subscription's metric handles.
pub(crate) struct SubMetrics {
    #[cfg(feature = "metrics")]
    m: metrics_impl::Sub,
}

impl SubMetrics {
    pub(crate) fn new(info: &SubInfo) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = info;
        SubMetrics {
            #[cfg(feature = "metrics")]
            m: metrics_impl::Sub::new(info),
        }
    }

    /// One event handed out; `depth` is asked for only when metrics are on.
    #[inline]
    pub(crate) fn delivered(&self, depth: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        {
            self.m.delivered.increment(1);
            self.m.depth.set(depth() as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = depth;
    }

    #[inline]
    pub(crate) fn enqueued(&self, depth: usize) {
        #[cfg(feature = "metrics")]
        self.m.depth.set(depth as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = depth;
    }

    #[inline]
    pub(crate) fn dropped(&self) {
        #[cfg(feature = "metrics")]
        if let Some(dropped) = &self.m.dropped {
            dropped.increment(1);
        }
    }

    pub(crate) fn discarded(&self, n: u64) {
        #[cfg(feature = "metrics")]
        if n > 0 {
            self.m.discarded.increment(n);
            self.m.depth.set(0.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    #[inline]
    pub(crate) fn handled(&self, outcome: &Outcome, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.m.duration.record(took.as_secs_f64());
            match outcome {
                Outcome::Ok => {}
                Outcome::Failed(_) => self.m.failures.increment(1),
                Outcome::Panicked(_) => self.m.panics.increment(1),
                Outcome::TimedOut(_) => self.m.timeouts.increment(1),
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (outcome, took);
    }

    /// A failed event will be tried again.
    pub(crate) fn retried(&self) {
        #[cfg(feature = "metrics")]
        self.m.retried.increment(1);
    }

    /// An event's attempts were used up.
    pub(crate) fn dead_lettered(&self) {
        #[cfg(feature = "metrics")]
        self.m.dead_lettered.increment(1);
    }

    /// A runner waited `took` for a worker of its pool.
    pub(crate) fn worker_wait(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.m.worker_wait {
            h.record(took.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    /// A finding occurred; `worst` is the worst of its kind so far.
    pub(crate) fn finding(&self, kind: FindingKind, worst: Duration) {
        #[cfg(feature = "metrics")]
        self.m.finding(kind, worst);
        #[cfg(not(feature = "metrics"))]
        let _ = (kind, worst);
    }
}

/// A topic's metric handles.
pub(crate) struct TopicMetrics {
    #[cfg(feature = "metrics")]
    m: metrics_impl::Topic,
}

impl TopicMetrics {
    pub(crate) fn new(topic: &'static str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = topic;
        TopicMetrics {
            #[cfg(feature = "metrics")]
            m: metrics_impl::Topic::new(topic),
        }
    }

    #[inline]
    pub(crate) fn published(&self) {
        #[cfg(feature = "metrics")]
        self.m.published.increment(1);
    }

    pub(crate) fn waited(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.m.publish_wait.record(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    pub(crate) fn subscriptions(&self, n: usize) {
        #[cfg(feature = "metrics")]
        self.m.subscriptions.set(n as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

/// The count of a topic's events caused by events of one topic: the row of
/// [`TopicStats::caused_by`](crate::TopicStats::caused_by) and, with the
/// `metrics` feature, `tidings_caused_total{topic, caused_by}`, registered
/// when the pair is first seen.
pub(crate) struct CauseCount {
    pub(crate) row: crate::stats::CausedBy,
    #[cfg(feature = "metrics")]
    counter: metrics::Counter,
}

impl CauseCount {
    pub(crate) fn new(topic: &'static str, caused_by: Option<&'static str>) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = topic;
        CauseCount {
            row: crate::stats::CausedBy {
                topic: caused_by,
                events: 0,
            },
            #[cfg(feature = "metrics")]
            counter: metrics::counter!(
                "tidings_caused_total",
                "topic" => topic,
                "caused_by" => caused_by.unwrap_or(crate::stats::BY_ID_ONLY),
            ),
        }
    }

    pub(crate) fn count(&mut self) {
        self.row.events = self.row.events.saturating_add(1);
        #[cfg(feature = "metrics")]
        self.counter.increment(1);
    }
}

#[cfg(feature = "metrics")]
mod metrics_impl {
    use std::time::Duration;

    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    use crate::config::Overflow;
    use crate::info::{SubInfo, SubscriberKind};
    use crate::watch::FindingKind;

    pub(super) struct Sub {
        pub(super) delivered: Counter,
        /// Only for the lossy policies.
        pub(super) dropped: Option<Counter>,
        pub(super) discarded: Counter,
        pub(super) failures: Counter,
        pub(super) panics: Counter,
        pub(super) timeouts: Counter,
        pub(super) retried: Counter,
        pub(super) dead_lettered: Counter,
        pub(super) depth: Gauge,
        pub(super) duration: Histogram,
        /// Only for the findings this kind of subscription can have.
        findings: [Option<(Counter, Gauge)>; 4],
        /// Only for the kinds run on a worker pool.
        pub(super) worker_wait: Option<Histogram>,
    }

    impl Sub {
        pub(super) fn new(info: &SubInfo) -> Self {
            let topic = info.topic;
            let sub = info.name.to_string();
            let labels = || vec![("topic", topic.to_string()), ("subscription", sub.clone())];
            let with = |key: &'static str, value: String| {
                let mut l = labels();
                l.push((key, value));
                l
            };
            let dropped =
                matches!(info.policy, Overflow::DropOldest | Overflow::DropNewest).then(|| {
                    counter!(
                        "tidings_dropped_total",
                        &with("policy", info.policy.to_string())
                    )
                });
            let finding = |kind: FindingKind, applies: bool| {
                applies.then(|| {
                    let l = with("finding", kind.metric_name().to_string());
                    (
                        counter!("tidings_findings_total", &l),
                        gauge!("tidings_finding_worst_seconds", &l),
                    )
                })
            };
            Sub {
                delivered: counter!("tidings_delivered_total", &labels()),
                dropped,
                discarded: counter!("tidings_discarded_total", &labels()),
                failures: counter!("tidings_handler_failures_total", &labels()),
                panics: counter!("tidings_handler_panics_total", &labels()),
                timeouts: counter!("tidings_handler_timeouts_total", &labels()),
                retried: counter!("tidings_retries_total", &labels()),
                dead_lettered: counter!("tidings_dead_letters_total", &labels()),
                depth: gauge!("tidings_queue_depth", &labels()),
                duration: histogram!("tidings_handler_duration_seconds", &labels()),
                findings: [
                    finding(FindingKind::SlowPoll, info.kind == SubscriberKind::Async),
                    finding(FindingKind::SyncOverBudget, info.kind.pool().is_some()),
                    finding(
                        FindingKind::PublisherBlocked,
                        info.policy == Overflow::Block,
                    ),
                    finding(
                        FindingKind::RunnerFailed,
                        info.kind != SubscriberKind::Stream,
                    ),
                ],
                worker_wait: info
                    .kind
                    .pool()
                    .is_some()
                    .then(|| histogram!("tidings_worker_wait_seconds", &labels())),
            }
        }

        pub(super) fn finding(&self, kind: FindingKind, worst: Duration) {
            let i = match kind {
                FindingKind::SlowPoll => 0,
                FindingKind::SyncOverBudget => 1,
                FindingKind::PublisherBlocked => 2,
                FindingKind::RunnerFailed => 3,
            };
            if let Some((count, worst_gauge)) = &self.findings[i] {
                count.increment(1);
                worst_gauge.set(worst.as_secs_f64());
            }
        }
    }

    pub(super) struct Topic {
        pub(super) published: Counter,
        pub(super) publish_wait: Histogram,
        pub(super) subscriptions: Gauge,
    }

    impl Topic {
        pub(super) fn new(topic: &'static str) -> Self {
            let labels = [("topic", topic)];
            Topic {
                published: counter!("tidings_published_total", &labels),
                publish_wait: histogram!("tidings_publish_wait_seconds", &labels),
                subscriptions: gauge!("tidings_subscriptions", &labels),
            }
        }
    }
}

/// Runs `fut` inside `span` (each poll enters it); a disabled span costs
/// nothing.
#[inline]
pub(crate) async fn instrument<F: std::future::Future>(fut: F, span: &Span) -> F::Output {
    #[cfg(feature = "tracing")]
    if !span.is_disabled() {
        return tracing::Instrument::instrument(fut, span.clone()).await;
    }
    let _ = span;
    fut.await
}
