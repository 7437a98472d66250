//! How each kind of handler is called, and how its runner waits: an async
//! handler's future awaited on a tokio task (timed for the blocked-runtime
//! watch, cancelled by a timeout), a blocking handler called on the pool
//! worker polling its runner.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::HandlerResult;
use crate::event::Envelope;
use crate::event::Event;
use crate::outcome::{panic_message, Outcome};
use crate::pool;
use crate::telemetry::{self, Span};
use crate::topic::SubscriptionState;

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
        subscription: &'a SubscriptionState<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &'a Span,
    ) -> impl Future<Output = (Outcome, Duration)> + Send + 'a;

    /// Waits `delay`. `false` when the shutdown deadline cut the queue off
    /// meanwhile: the runner stops.
    fn sleep<'a>(
        &'a self,
        subscription: &'a SubscriptionState<E>,
        delay: Duration,
    ) -> impl Future<Output = bool> + Send + 'a;

    /// Whether the runner may take another event now, or should first
    /// give its thread to others (woken again at once).
    fn poll_turn(&self, cx: &mut Context<'_>) -> Poll<()>;
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
        subscription: &SubscriptionState<E>,
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
        let (result, took) = match subscription.watch.slow_poll_threshold() {
            Some(threshold) => {
                let timed = TimedPolls {
                    fut: limited,
                    subscription,
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

    #[inline]
    fn poll_turn(&self, _cx: &mut Context<'_>) -> Poll<()> {
        // Tokio's cooperative budget does this for tasks (see `take`).
        Poll::Ready(())
    }
}

/// A blocking handler, called on a worker of its pool.
pub(crate) struct SyncHandler<F> {
    pub(crate) f: F,
    pub(crate) pool: Arc<pool::Shared>,
}

impl<E, F, R> Invoke<E> for SyncHandler<F>
where
    E: Event,
    F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
    R: HandlerResult,
{
    fn invoke<'a>(
        &'a self,
        subscription: &'a SubscriptionState<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &'a Span,
    ) -> impl Future<Output = (Outcome, Duration)> + Send + 'a {
        let event_id = env.id().get();
        let cause = env.inner.held_cause();
        let (start, waited) = self.pool.run_began();
        if let Some(waited) = waited {
            subscription.waited(waited);
        }
        let result = telemetry::in_span(span, || {
            crate::context::with_cause(cause, || {
                catch_unwind(AssertUnwindSafe(|| verdict((self.f)(env))))
            })
        });
        let took = start.elapsed();
        let counted = self.pool.run_ended(took);
        subscription.ran(took, counted);
        if limit.is_some_and(|limit| took > limit) {
            subscription.overran(event_id, took);
        }
        std::future::ready((caught(result), took))
    }

    fn sleep<'a>(
        &'a self,
        subscription: &'a SubscriptionState<E>,
        delay: Duration,
    ) -> impl Future<Output = bool> + Send + 'a {
        // A cut-off queue stops its runners, so this sleep never outlives
        // it; it holds no worker meanwhile.
        let _ = subscription;
        pool::Sleep::new(&self.pool, delay)
    }

    fn poll_turn(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.pool.poll_turn(cx)
    }
}

/// Times every poll of a handler's future: a poll longer than the threshold
/// held the runtime's worker thread, and every task queued behind it waited.
/// The same two clock readings per poll also give the run's duration, from
/// the start of the first poll to the end of the last.
struct TimedPolls<'a, F, E> {
    fut: F,
    subscription: &'a SubscriptionState<E>,
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
        self.subscription.polled(end - start, self.threshold);
        out.map(|out| (out, end - first))
    }
}
