//! How each kind of handler is called, and how its runner waits: an async
//! handler's future awaited on a tokio task (timed for the blocked-runtime
//! watch, cancelled by a timeout), a sync handler called on its runner's
//! own thread.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::HandlerResult;
use crate::event::Envelope;
use crate::event::Event;
use crate::outcome::Outcome;
use crate::telemetry::{self, Span};
use crate::topic::SubscriptionState;
use crate::watch::FindingKind;

pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// What a handler's return value says. Run inside the attempt's
/// `catch_unwind`: the error's `Display` is user code too.
fn verdict<R: HandlerResult>(r: R) -> Outcome {
    match r.into_result() {
        Ok(()) => Outcome::Ok,
        Err(err) => Outcome::Failed(err.to_string()),
    }
}

fn caught(run: std::thread::Result<Outcome>) -> Outcome {
    run.unwrap_or_else(|payload| Outcome::Panicked(panic_message(&*payload)))
}

/// How one kind of handler is called, and how its runner waits.
pub(crate) trait Invoke<E>: Send + Sync + 'static {
    /// Runs the handler once on `env` inside `span`, within `limit`: how it
    /// ended and how long it took (zero when nobody needs the duration).
    fn invoke<'a>(
        &'a self,
        queue: &'a SubscriptionState<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &'a Span,
    ) -> impl Future<Output = (Outcome, Duration)> + Send + 'a;

    /// Waits `delay`. `false` when the shutdown deadline cut the queue off
    /// meanwhile: the runner stops.
    fn sleep<'a>(
        &'a self,
        queue: &'a SubscriptionState<E>,
        delay: Duration,
    ) -> impl Future<Output = bool> + Send + 'a;
}

/// An async handler: its future, awaited on a tokio task.
pub(crate) struct AsyncHandler<F>(pub(crate) F);

impl<E, F, Fut> Invoke<E> for AsyncHandler<F>
where
    E: Event,
    F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    async fn invoke(
        &self,
        queue: &SubscriptionState<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &Span,
    ) -> (Outcome, Duration) {
        let f = &self.0;
        // What it publishes is caused by `env`.
        let cause = env.inner.held_cause();
        // The call to `f` runs inside the first poll, so a handler that
        // blocks before returning its future is timed and its panic
        // caught like any other.
        let run = crate::context::Caused::new(
            cause,
            AssertUnwindSafe(async move { verdict(f(env).await) }).catch_unwind(),
        );
        let limited = pin!(async {
            match limit {
                Some(limit) => tokio::time::timeout(limit, run).await.map_err(|_| limit),
                None => Ok(run.await),
            }
        });
        let (result, took) = match queue.watch.slow_poll_threshold() {
            Some(threshold) => {
                let timed = TimedPolls {
                    fut: limited,
                    queue,
                    threshold,
                    first: None,
                };
                telemetry::instrument(timed, span).await
            }
            // No watch: read the clock only if someone wants the
            // duration.
            None if telemetry::wants_duration(span) => {
                let start = Instant::now();
                let result = telemetry::instrument(limited, span).await;
                (result, start.elapsed())
            }
            None => (telemetry::instrument(limited, span).await, Duration::ZERO),
        };
        let outcome = match result {
            Ok(run) => caught(run),
            Err(limit) => Outcome::TimedOut(limit),
        };
        (outcome, took)
    }

    fn sleep<'a>(
        &'a self,
        _queue: &'a SubscriptionState<E>,
        delay: Duration,
    ) -> impl Future<Output = bool> + Send + 'a {
        // A cut-off queue aborts its tasks, so this sleep never outlives it.
        tokio::time::sleep(delay).map(|()| true)
    }
}

/// A blocking handler, called on its runner's own thread.
pub(crate) struct SyncHandler<F>(pub(crate) F);

impl<E, F, R> Invoke<E> for SyncHandler<F>
where
    E: Event,
    F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
    R: HandlerResult,
{
    fn invoke<'a>(
        &'a self,
        queue: &'a SubscriptionState<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &'a Span,
    ) -> impl Future<Output = (Outcome, Duration)> + Send + 'a {
        let budget = queue.watch.sync_budget_threshold();
        let timed = budget.is_some() || limit.is_some() || telemetry::wants_duration(span);
        let start = timed.then(Instant::now);
        let event_id = env.id().get();
        let cause = env.inner.held_cause();
        let result = telemetry::in_span(span, || {
            crate::context::with_cause(cause, || {
                catch_unwind(AssertUnwindSafe(|| verdict((self.0)(env))))
            })
        });
        let took = start.map_or(Duration::ZERO, |start| start.elapsed());
        if budget.is_some_and(|budget| took > budget) {
            queue.finding(FindingKind::SyncOverBudget, took);
        }
        if limit.is_some_and(|limit| took > limit) {
            queue.overran(event_id, took);
        }
        std::future::ready((caught(result), took))
    }

    fn sleep<'a>(
        &'a self,
        queue: &'a SubscriptionState<E>,
        delay: Duration,
    ) -> impl Future<Output = bool> + Send + 'a {
        std::future::ready(!queue.sleep_unless_cut(delay))
    }
}

/// Times every poll of a handler's future: a poll longer than the threshold
/// held the runtime's worker thread, and every task queued behind it waited.
/// The same two clock readings per poll also give the run's duration, from
/// the start of the first poll to the end of the last.
struct TimedPolls<'a, F, E> {
    fut: F,
    queue: &'a SubscriptionState<E>,
    threshold: Duration,
    first: Option<Instant>,
}

impl<F: Future + Unpin, E> Future for TimedPolls<'_, F, E> {
    type Output = (F::Output, Duration);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let start = Instant::now();
        let first = *self.first.get_or_insert(start);
        let out = Pin::new(&mut self.fut).poll(cx);
        let end = Instant::now();
        self.queue.polled(end - start, self.threshold);
        out.map(|out| (out, end - first))
    }
}
