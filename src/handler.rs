//! Running handlers: async handlers as tokio tasks, sync handlers on threads
//! owned by the bus. Both run the same loop ([`run`]): wait for the circuit
//! breaker, take an event, attempt it, retry it after the policy's delay or
//! give it up as a dead letter. What differs, how the handler is called and
//! how a runner waits, is the [`Invoke`] trait: [`AsyncHandler`] awaits the
//! handler's future (timed for the blocked-runtime watch, cancelled by a
//! timeout), [`SyncHandler`] calls it on the runner's own thread, which
//! drives the loop with a minimal blocking executor.
//!
//! Nothing the runner holds is lost to a panic. The handler's panics (and
//! those of its error's `Display`) are a failed attempt like an error. A
//! panic in the runner's own code while it holds an event makes that event a
//! dead letter naming the failure; the runner counts it, reports it as a
//! finding, and goes on with the next event.

use std::any::Any;
use std::error::Error;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::context::{InRunner, RunnerOf};
use crate::event::Envelope;
use crate::queue::{Final, Outcome, Queue};
use crate::retry::{Breaker, DeadLetter, Permit};
use crate::subscribe::Runner;
use crate::telemetry::{self, Span};
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
        queue: &'a Queue<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &'a Span,
    ) -> impl Future<Output = (Outcome, Duration)> + Send + 'a;

    /// Waits `delay`. `false` when the shutdown deadline cut the queue off
    /// meanwhile: the runner stops.
    fn sleep<'a>(
        &'a self,
        queue: &'a Queue<E>,
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
        queue: &Queue<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &Span,
    ) -> (Outcome, Duration) {
        let f = &self.0;
        // The call to `f` runs inside the first poll, so a handler that
        // blocks before returning its future is timed and its panic
        // caught like any other.
        let run = AssertUnwindSafe(async move { verdict(f(env).await) }).catch_unwind();
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
        _queue: &'a Queue<E>,
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
        queue: &'a Queue<E>,
        limit: Option<Duration>,
        env: Envelope<E>,
        span: &'a Span,
    ) -> impl Future<Output = (Outcome, Duration)> + Send + 'a {
        let budget = queue.watch.sync_budget_threshold();
        let timed = budget.is_some() || limit.is_some() || telemetry::wants_duration(span);
        let start = timed.then(Instant::now);
        let event_id = env.id().get();
        let result = telemetry::in_span(span, || {
            catch_unwind(AssertUnwindSafe(|| verdict((self.0)(env))))
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
        queue: &'a Queue<E>,
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

/// What comes after an attempt.
enum Next {
    Handled,
    /// Try again after this delay.
    Retry(Duration),
    /// The attempts are used up: publish this and count the event given up.
    GiveUp(DeadLetter),
}

/// Books an attempt's outcome: breaker, counters, and what comes next.
fn after_attempt<E: Event>(
    queue: &Queue<E>,
    runner: &Runner,
    env: &Envelope<E>,
    probe: bool,
    outcome: Outcome,
    took: Duration,
    span: &Span,
) -> Next {
    #[cfg(test)]
    fault::hit(&queue.info.name);
    let ok = matches!(outcome, Outcome::Ok);
    if let Some(breaker) = &runner.reliability.breaker {
        queue.breaker_changed(breaker.record(probe, ok));
    }
    let attempt = env.attempt();
    let (run, error) = queue.attempted(env.id().get(), outcome, took);
    telemetry::record_run(span, run, took);
    let Some(error) = error else {
        return Next::Handled;
    };
    let policy = &runner.reliability.retry;
    if attempt < policy.attempts() {
        queue.retrying();
        let seed =
            env.id().get() ^ (u64::from(attempt) << 48) ^ queue.info.id.get().rotate_left(24);
        return Next::Retry(policy.wait_after(attempt, seed));
    }
    Next::GiveUp(dead_letter(queue, env, error))
}

fn dead_letter<E: Event>(queue: &Queue<E>, env: &Envelope<E>, error: String) -> DeadLetter {
    DeadLetter {
        topic: E::TOPIC,
        event_id: env.id(),
        seq: env.seq(),
        subscription: queue.info.name.to_string(),
        subscription_id: queue.info.id,
        attempts: env.attempt(),
        error,
        event: env.erase(),
    }
}

/// Publishes a dead letter on the bus's dead-letter topic; whether it was
/// heard (reached a subscription, or is retained). One that was not is
/// logged once per subscription, and counted when the event is done.
async fn send_dead_letter<E>(queue: &Queue<E>, runner: &Runner, letter: DeadLetter) -> bool {
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
    heard
}

/// Waits until the breaker (if any) lets an attempt run: `Some(true)` if it
/// is the probe, `None` if the queue was cut off meanwhile.
async fn permit<E, K: Invoke<E>>(
    queue: &Queue<E>,
    breaker: Option<&Breaker>,
    kind: &K,
) -> Option<bool> {
    let Some(breaker) = breaker else {
        return Some(false);
    };
    loop {
        let (permit, change) = poll_fn(|cx| breaker.poll_permit(cx)).await;
        queue.breaker_changed(change);
        match permit {
            Permit::Go => return Some(false),
            Permit::Probe => return Some(true),
            Permit::WaitUntil(until) => {
                let wait = until.saturating_duration_since(tokio::time::Instant::now());
                if !kind.sleep(queue, wait).await {
                    return None;
                }
            }
            Permit::WaitProbe => {}
        }
    }
}

/// The event a runner works on, as far as a panic needs to know.
struct Holding {
    probe: bool,
    /// `done` was called: the event is accounted for.
    finished: bool,
}

/// Every attempt at one event: `false` if the queue was cut off while it
/// waited to retry (the runner stops, the run is left unfinished).
async fn attempts<E: Event, K: Invoke<E>>(
    queue: &Queue<E>,
    runner: &Runner,
    kind: &K,
    mut env: Envelope<E>,
    holding: &mut Holding,
) -> bool {
    let limit = runner.reliability.timeout;
    let breaker = runner.reliability.breaker.as_deref();
    loop {
        let span = telemetry::handler_span(&queue.info, env.id().get(), env.seq(), env.attempt());
        let (outcome, took) = kind.invoke(queue, limit, env.clone(), &span).await;
        let next = after_attempt(queue, runner, &env, holding.probe, outcome, took, &span);
        // The run's span closes before the run counts as done, so whoever
        // waits for the subscription to drain sees it closed.
        drop(span);
        match next {
            Next::Handled => {
                queue.done(Final::Handled);
                holding.finished = true;
                return true;
            }
            Next::GiveUp(letter) => {
                let heard = send_dead_letter(queue, runner, letter).await;
                queue.done(Final::DeadLettered { heard });
                holding.finished = true;
                return true;
            }
            Next::Retry(delay) => {
                if !kind.sleep(queue, delay).await {
                    return false;
                }
                match permit(queue, breaker, kind).await {
                    Some(probe) => holding.probe = probe,
                    None => return false,
                }
                env = env.for_attempt(env.attempt().saturating_add(1));
            }
        }
    }
}

/// The runner's own code failed while it held `env`: the event becomes a
/// dead letter naming the failure, and is done.
async fn give_up<E: Event>(
    queue: &Queue<E>,
    runner: &Runner,
    env: &Envelope<E>,
    probe: bool,
    message: &str,
) {
    queue.runner_failed(Some(env.id().get()), message);
    if probe {
        if let Some(breaker) = &runner.reliability.breaker {
            queue.breaker_changed(breaker.record(true, false));
        }
    }
    let letter = dead_letter(queue, env, format!("runner failed: {message}"));
    let heard = AssertUnwindSafe(send_dead_letter(queue, runner, letter))
        .catch_unwind()
        .await
        .unwrap_or(false);
    queue.done(Final::DeadLettered { heard });
}

/// One runner: takes events from `queue` until it is closed and drained.
async fn run<E: Event, K: Invoke<E>>(
    queue: Arc<Queue<E>>,
    runner: Arc<Runner>,
    kind: Arc<K>,
    consumer: usize,
) {
    let breaker = runner.reliability.breaker.as_deref();
    loop {
        let taken = AssertUnwindSafe(async {
            let probe = permit(&queue, breaker, &*kind).await?;
            let Some(env) = poll_fn(|cx| queue.poll_pop(cx, consumer)).await else {
                if probe {
                    breaker.inspect(|b| b.release_probe());
                }
                return None;
            };
            Some((env, probe))
        })
        .catch_unwind()
        .await;
        let (env, probe) = match taken {
            Ok(Some(taken)) => taken,
            Ok(None) => return,
            Err(panic) => {
                // Between events: nothing is held. Count it, and do not spin
                // if it keeps failing.
                queue.runner_failed(None, &panic_message(&*panic));
                if !kind.sleep(&queue, Duration::from_millis(10)).await {
                    return;
                }
                continue;
            }
        };
        let mut holding = Holding {
            probe,
            finished: false,
        };
        let went = AssertUnwindSafe(attempts(&queue, &runner, &*kind, env.clone(), &mut holding))
            .catch_unwind()
            .await;
        match went {
            Ok(true) => {}
            Ok(false) => return,
            Err(panic) => {
                let message = panic_message(&*panic);
                if holding.finished {
                    queue.runner_failed(Some(env.id().get()), &message);
                } else {
                    give_up(&queue, &runner, &env, holding.probe, &message).await;
                }
            }
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
    let kind = Arc::new(AsyncHandler(f));
    let of = RunnerOf {
        bus: runner.bus,
        subscription: queue.info.id,
    };
    let runner = Arc::new(runner);
    for consumer in 0..concurrency {
        let task = runtime.spawn(InRunner::new(
            of,
            run(
                Arc::clone(queue),
                Arc::clone(&runner),
                Arc::clone(&kind),
                consumer,
            ),
        ));
        queue.add_task(task);
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
    let kind = Arc::new(SyncHandler(f));
    let of = RunnerOf {
        bus: runner.bus,
        subscription: queue.info.id,
    };
    let runner = Arc::new(runner);
    for consumer in 0..concurrency {
        let work = run(
            Arc::clone(queue),
            Arc::clone(&runner),
            Arc::clone(&kind),
            consumer,
        );
        std::thread::Builder::new()
            .name(format!("tidings:{}", queue.info.name).replace('\0', " "))
            .spawn(move || block_on(InRunner::new(of, work)))?;
    }
    Ok(())
}

/// Drives `fut` to completion on this thread, parking it while the future
/// waits. Unlike `futures::executor::block_on` it does not mark the thread
/// as inside an executor, so a sync handler may still call `block_on` of
/// its own.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Fault injection for the crate's own tests: makes the runner's code panic
/// after an attempt, as a bug in it would.
#[cfg(test)]
pub(crate) mod fault {
    use std::sync::Mutex;

    static ARMED: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

    /// The next `times` attempts of `subscription` end in a runner panic.
    pub(crate) fn arm(subscription: &str, times: u32) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        armed.push((subscription.to_owned(), times));
    }

    pub(crate) fn hit(subscription: &str) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, times)) = armed
            .iter_mut()
            .find(|(name, times)| name == subscription && *times > 0)
        {
            *times -= 1;
            drop(armed);
            panic!("injected runner fault");
        }
    }
}

#[cfg(all(test, feature = "derive"))]
mod tests {
    use std::time::Duration;

    use crate::{Bus, Event, FindingKind, RetryPolicy};

    #[derive(Debug, Event)]
    #[event(topic = "unit.jobs")]
    struct Job(#[allow(dead_code)] u64);

    /// A panic in the runner's own code while it holds an event: the event
    /// becomes a dead letter naming the failure, the subscription reports it
    /// in its stats and in the bus's health, and the runner goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runner_failure_dead_letters_the_event_and_the_runner_goes_on() {
        let bus = Bus::builder().topic::<Job>().build().expect("valid");
        let mut dead = bus.dead_letters().stream().expect("subscribed");
        super::fault::arm("faulty-async", 1);
        super::fault::arm("faulty-sync", 1);
        let handles = [
            bus.subscribe::<Job>()
                .name("faulty-async")
                .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(3))
                .handler(|_| async {}),
            bus.subscribe::<Job>()
                .name("faulty-sync")
                .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(3))
                .sync(|_| ()),
        ]
        .map(|h| h.expect("subscribed"));
        for i in 0..3 {
            bus.publish(Job(i)).await.expect("published");
        }
        for handle in handles {
            let stats = handle.unsubscribe().await;
            assert_eq!(
                (stats.handled, stats.dead_lettered, stats.runner_failures),
                (2, 1, 1),
                "{stats}"
            );
            assert_eq!(stats.in_flight, 0);
            assert_eq!(
                stats.last_error.as_deref(),
                Some("runner failed: injected runner fault")
            );
        }
        let mut errors = Vec::new();
        for _ in 0..2 {
            let letter = dead.recv().await.expect("a dead letter");
            assert_eq!(letter.seq, 1, "the first event was the one held");
            errors.push(letter.error.clone());
        }
        assert_eq!(errors, ["runner failed: injected runner fault"; 2]);
        let health = bus.health();
        assert!(!health.is_healthy(), "{health}");
        let mut failed: Vec<_> = health
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::RunnerFailed)
            .map(|f| f.subscription.as_str())
            .collect();
        failed.sort_unstable();
        assert_eq!(failed, ["faulty-async", "faulty-sync"]);
    }
}
