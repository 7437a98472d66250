//! Running handlers: async handlers as tokio tasks, sync handlers on threads
//! owned by the bus. Both catch errors and panics, count them, and go on;
//! both are timed for the blocked-runtime watch (`watch.rs`). Both run the
//! same loop: wait for the circuit breaker, take an event, attempt it,
//! retry it after the policy's delay or give it up as a dead letter.

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
use crate::queue::{Final, Outcome, Queue};
use crate::retry::{Breaker, DeadLetter, Permit};
use crate::subscribe::Runner;
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

/// What to do after an attempt.
enum Next {
    Done(Final),
    /// Try again after this delay.
    Retry(Duration),
}

/// Books an attempt's outcome: breaker, counters, and what comes next.
/// A dead letter is returned to publish when the attempts are used up.
fn after_attempt<E: Event>(
    queue: &Queue<E>,
    runner: &Runner,
    env: &Envelope<E>,
    probe: bool,
    outcome: Outcome,
    took: Duration,
    span: &telemetry::Span,
) -> (Next, Option<DeadLetter>) {
    let ok = matches!(outcome, Outcome::Ok);
    if let Some(breaker) = &runner.reliability.breaker {
        queue.breaker_changed(breaker.record(probe, ok));
    }
    let attempt = env.attempt();
    let (run, error) = queue.attempted(env.id().get(), outcome, took);
    telemetry::record_run(span, run, took);
    let Some(error) = error else {
        return (Next::Done(Final::Handled), None);
    };
    let policy = &runner.reliability.retry;
    if attempt < policy.attempts() {
        queue.retrying();
        let seed =
            env.id().get() ^ (u64::from(attempt) << 48) ^ queue.info.id.get().rotate_left(24);
        return (Next::Retry(policy.wait_after(attempt, seed)), None);
    }
    let letter = DeadLetter {
        topic: E::TOPIC,
        event_id: env.id(),
        seq: env.seq(),
        subscription: queue.info.name.to_string(),
        subscription_id: queue.info.id,
        attempts: attempt,
        error,
        event: env.erase(),
    };
    (Next::Done(Final::DeadLettered), Some(letter))
}

/// Publishes a dead letter on the bus's dead-letter topic. One that reaches
/// no subscription (and is not retained) is counted, and logged once per
/// subscription. Sync runners block on it: it never needs a runtime.
async fn send_dead_letter<E>(queue: &Queue<E>, runner: &Runner, letter: DeadLetter) {
    let (event_id, error) = (letter.event_id.get(), letter.error.clone());
    let topic = runner.dead_letters.as_deref();
    let receipt = match topic {
        Some(topic) => topic.publish(letter).await.ok(),
        None => None,
    };
    let retained = topic.is_some_and(|t| t.config.retained() > 0);
    let heard = receipt.is_some_and(|r| r.enqueued > 0 || retained);
    if !heard {
        queue.unheard(event_id, &error);
    }
}

/// Waits (async) until the breaker lets an attempt run; `true` if it is the
/// probe.
async fn breaker_async<E>(queue: &Queue<E>, breaker: &Breaker) -> bool {
    loop {
        let (permit, change) = poll_fn(|cx| breaker.poll_permit(cx)).await;
        queue.breaker_changed(change);
        match permit {
            Permit::Go => return false,
            Permit::Probe => return true,
            Permit::WaitUntil(until) => tokio::time::sleep_until(until).await,
            Permit::WaitProbe => {}
        }
    }
}

/// Waits (blocking the thread) until the breaker lets an attempt run;
/// `true` if it is the probe.
fn breaker_blocking<E>(queue: &Queue<E>, breaker: &Breaker) -> bool {
    loop {
        let (permit, change) = futures::executor::block_on(poll_fn(|cx| breaker.poll_permit(cx)));
        queue.breaker_changed(change);
        match permit {
            Permit::Go => return false,
            Permit::Probe => return true,
            Permit::WaitUntil(until) => {
                std::thread::sleep(until.saturating_duration_since(tokio::time::Instant::now()));
            }
            Permit::WaitProbe => {}
        }
    }
}

/// Starts `concurrency` tokio tasks that feed `queue` to `f`.
pub(crate) fn spawn_async<E, F, Fut>(
    runtime: &tokio::runtime::Handle,
    queue: &Arc<Queue<E>>,
    concurrency: usize,
    runner: Runner,
    f: F,
) where
    E: Event,
    F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    let f = Arc::new(f);
    let runner = Arc::new(runner);
    for consumer in 0..concurrency {
        let worker = Arc::clone(queue);
        let f = Arc::clone(&f);
        let runner = Arc::clone(&runner);
        let task = runtime.spawn(async move {
            let threshold = worker.watch.slow_poll_threshold();
            let limit = runner.reliability.timeout;
            let breaker = runner.reliability.breaker.as_deref();
            loop {
                let mut probe = match breaker {
                    Some(b) => breaker_async(&worker, b).await,
                    None => false,
                };
                let Some(env) = poll_fn(|cx| worker.poll_pop(cx, consumer)).await else {
                    if probe {
                        breaker.inspect(|b| b.release_probe());
                    }
                    break;
                };
                let mut env = env;
                loop {
                    let span = telemetry::handler_span(
                        &worker.info,
                        env.id().get(),
                        env.seq(),
                        env.attempt(),
                    );
                    let arg = env.clone();
                    // The call to `f` runs inside the first poll, so a
                    // handler that blocks before returning its future is
                    // timed and its panic caught like any other.
                    let run = AssertUnwindSafe(async { f(arg).await }).catch_unwind();
                    let limited = pin!(async {
                        match limit {
                            Some(limit) => {
                                tokio::time::timeout(limit, run).await.map_err(|_| limit)
                            }
                            None => Ok(run.await),
                        }
                    });
                    let (result, took) = match threshold {
                        Some(threshold) => {
                            let timed = TimedPolls {
                                fut: limited,
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
                            let result = telemetry::instrument(limited, &span).await;
                            (result, start.elapsed())
                        }
                        None => (telemetry::instrument(limited, &span).await, Duration::ZERO),
                    };
                    let outcome = match result {
                        Ok(run) => outcome(run),
                        Err(limit) => Outcome::TimedOut(limit),
                    };
                    let (next, letter) =
                        after_attempt(&worker, &runner, &env, probe, outcome, took, &span);
                    if let Some(letter) = letter {
                        send_dead_letter(&worker, &runner, letter).await;
                    }
                    match next {
                        Next::Done(how) => {
                            worker.done(how);
                            break;
                        }
                        Next::Retry(delay) => {
                            tokio::time::sleep(delay).await;
                            probe = match breaker {
                                Some(b) => breaker_async(&worker, b).await,
                                None => false,
                            };
                            env = env.for_attempt(env.attempt() + 1);
                        }
                    }
                }
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
    runner: Runner,
    f: F,
) -> std::io::Result<()>
where
    E: Event,
    F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
    R: HandlerResult,
{
    let f = Arc::new(f);
    let runner = Arc::new(runner);
    for consumer in 0..concurrency {
        let queue = Arc::clone(queue);
        let f = Arc::clone(&f);
        let runner = Arc::clone(&runner);
        std::thread::Builder::new()
            .name(format!("tidings:{}", queue.info.name).replace('\0', " "))
            .spawn(move || {
                let budget = queue.watch.sync_budget_threshold();
                let limit = runner.reliability.timeout;
                let breaker = runner.reliability.breaker.as_deref();
                loop {
                    let mut probe = breaker.is_some_and(|b| breaker_blocking(&queue, b));
                    let Some(mut env) =
                        futures::executor::block_on(poll_fn(|cx| queue.poll_pop(cx, consumer)))
                    else {
                        if probe {
                            breaker.inspect(|b| b.release_probe());
                        }
                        break;
                    };
                    loop {
                        let span = telemetry::handler_span(
                            &queue.info,
                            env.id().get(),
                            env.seq(),
                            env.attempt(),
                        );
                        let timed =
                            budget.is_some() || limit.is_some() || telemetry::wants_duration(&span);
                        let start = timed.then(Instant::now);
                        let arg = env.clone();
                        let result =
                            telemetry::in_span(&span, || catch_unwind(AssertUnwindSafe(|| f(arg))));
                        let took = start.map_or(Duration::ZERO, |start| start.elapsed());
                        if budget.is_some_and(|budget| took > budget) {
                            queue.finding(FindingKind::SyncOverBudget, took);
                        }
                        if limit.is_some_and(|limit| took > limit) {
                            queue.overran(env.id().get(), took);
                        }
                        let (next, letter) = after_attempt(
                            &queue,
                            &runner,
                            &env,
                            probe,
                            outcome(result),
                            took,
                            &span,
                        );
                        if let Some(letter) = letter {
                            futures::executor::block_on(send_dead_letter(&queue, &runner, letter));
                        }
                        match next {
                            Next::Done(how) => {
                                queue.done(how);
                                break;
                            }
                            Next::Retry(delay) => {
                                std::thread::sleep(delay);
                                probe = breaker.is_some_and(|b| breaker_blocking(&queue, b));
                                env = env.for_attempt(env.attempt() + 1);
                            }
                        }
                    }
                }
            })?;
    }
    Ok(())
}
