//! Running handlers: async handlers as tokio tasks, sync handlers on threads
//! owned by the bus. Both catch errors and panics, count them, and go on;
//! both are timed for the blocked-runtime watch (`watch.rs`).

use std::any::Any;
use std::error::Error;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::event::Envelope;
use crate::queue::{Outcome, Queue};
use crate::telemetry;
use crate::watch::FindingKind;
use crate::Event;

/// What a handler may return: `()` or `Result<(), Err>` with
/// `Err: Into<Box<dyn Error + Send + Sync>>`. An `Err` is counted as a
/// handler failure in the subscription's stats, with its message kept as
/// `last_error`.
pub trait HandlerResult: Send + 'static {
    /// The error, if the handler failed.
    fn into_result(self) -> Result<(), Box<dyn Error + Send + Sync>>;
}

impl HandlerResult for () {
    fn into_result(self) -> Result<(), Box<dyn Error + Send + Sync>> {
        Ok(())
    }
}

impl<Err> HandlerResult for Result<(), Err>
where
    Err: Into<Box<dyn Error + Send + Sync>> + Send + 'static,
{
    fn into_result(self) -> Result<(), Box<dyn Error + Send + Sync>> {
        self.map_err(Into::into)
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn outcome<R: HandlerResult>(run: std::thread::Result<R>) -> Outcome {
    match run {
        Ok(r) => match r.into_result() {
            Ok(()) => Outcome::Ok,
            Err(err) => Outcome::Failed(err.to_string()),
        },
        Err(payload) => Outcome::Panicked(panic_message(&*payload)),
    }
}

/// Times every poll of a handler's future: a poll longer than the threshold
/// held the runtime's worker thread, and every task queued behind it waited.
/// The same two clock readings per poll also give the run's duration, from
/// the start of the first poll to the end of the last.
struct TimedPolls<'a, F, E> {
    fut: F,
    queue: &'a Queue<E>,
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

/// Starts `concurrency` tokio tasks that feed `queue` to `f`.
pub(crate) fn spawn_async<E, F, Fut>(
    runtime: &tokio::runtime::Handle,
    queue: &Arc<Queue<E>>,
    concurrency: usize,
    f: F,
) where
    E: Event,
    F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    let f = Arc::new(f);
    for consumer in 0..concurrency {
        let worker = Arc::clone(queue);
        let f = Arc::clone(&f);
        let task = runtime.spawn(async move {
            let threshold = worker.watch.slow_poll_threshold();
            while let Some(env) = poll_fn(|cx| worker.poll_pop(cx, consumer)).await {
                let (event_id, seq) = (env.id().get(), env.seq());
                let span = telemetry::handler_span(&worker.info, event_id, seq);
                // The call to `f` runs inside the first poll, so a handler
                // that blocks before returning its future is timed and its
                // panic caught like any other.
                let run = pin!(AssertUnwindSafe(async { f(env).await }).catch_unwind());
                let (result, took) = match threshold {
                    Some(threshold) => {
                        let timed = TimedPolls {
                            fut: run,
                            queue: &worker,
                            threshold,
                            first: None,
                        };
                        telemetry::instrument(timed, &span).await
                    }
                    // No watch: read the clock only if someone wants the
                    // duration.
                    None if telemetry::wants_duration(&span) => {
                        let start = Instant::now();
                        let result = telemetry::instrument(run, &span).await;
                        (result, start.elapsed())
                    }
                    None => (telemetry::instrument(run, &span).await, Duration::ZERO),
                };
                let run = worker.finish(event_id, outcome(result), took);
                telemetry::record_run(&span, run, took);
            }
        });
        queue.add_abort_handle(task.abort_handle());
    }
}

/// Starts `concurrency` threads that feed `queue` to `f`. If a thread cannot
/// be started, the ones already started end when the queue is closed.
pub(crate) fn spawn_sync<E, F, R>(
    queue: &Arc<Queue<E>>,
    concurrency: usize,
    f: F,
) -> std::io::Result<()>
where
    E: Event,
    F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
    R: HandlerResult,
{
    let f = Arc::new(f);
    for consumer in 0..concurrency {
        let queue = Arc::clone(queue);
        let f = Arc::clone(&f);
        std::thread::Builder::new()
            .name(format!("tidings:{}", queue.info.name).replace('\0', " "))
            .spawn(move || {
                let budget = queue.watch.sync_budget_threshold();
                while let Some(env) =
                    futures::executor::block_on(poll_fn(|cx| queue.poll_pop(cx, consumer)))
                {
                    let (event_id, seq) = (env.id().get(), env.seq());
                    let span = telemetry::handler_span(&queue.info, event_id, seq);
                    let start =
                        (budget.is_some() || telemetry::wants_duration(&span)).then(Instant::now);
                    let result =
                        telemetry::in_span(&span, || catch_unwind(AssertUnwindSafe(|| f(env))));
                    let took = start.map_or(Duration::ZERO, |start| start.elapsed());
                    if budget.is_some_and(|budget| took > budget) {
                        queue.finding(FindingKind::SyncOverBudget, took);
                    }
                    let run = queue.finish(event_id, outcome(result), took);
                    telemetry::record_run(&span, run, took);
                }
            })?;
    }
    Ok(())
}
