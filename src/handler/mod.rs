//! Running handlers: async handlers as tokio tasks, blocking handlers as
//! runners on one of the bus's worker pools (`crate::pool`). Both run the
//! same loop ([`run`]): wait for the circuit breaker, take an event, attempt
//! it, retry it after the policy's delay or give it up as a dead letter.
//! What differs, how the handler is called, how a runner waits and when it
//! gives its thread up, is the [`Invoke`] trait: [`AsyncHandler`] awaits the
//! handler's future (timed for the blocked-runtime watch, cancelled by a
//! timeout), [`SyncHandler`] calls it on the worker polling the runner and
//! waits on the pool's timers.
//!
//! Nothing the runner holds is lost to a panic. The handler's panics (and
//! those of its error's `Display`) are a failed attempt like an error. A
//! panic in the runner's own code while it holds an event makes that event a
//! dead letter naming the failure; the runner counts it, reports it as a
//! finding, and goes on with the next event.

mod invoke;
mod run;

use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use invoke::{AsyncHandler, SyncHandler};
use run::run;

use crate::config::RetryPolicy;
use crate::context::{InRunner, RunnerOf};
use crate::dead_letter::DeadLetter;
use crate::event::Envelope;
use crate::event::Event;
use crate::id::BusId;
use crate::pool;
use crate::topic::{Breaker, SubscriptionState, TopicState};

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

/// How a handler subscription's runners retry, time out and dead-letter:
/// its plan, fixed when it subscribes.
pub(crate) struct HandlerPlan {
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Where its dead letters go (`None` for the dead-letter topic itself).
    pub(crate) dead_letters: Option<Arc<TopicState<DeadLetter>>>,
    /// The bus it belongs to: its runners work in its context.
    pub(crate) bus: BusId,
}

/// Starts `concurrency` tokio tasks that feed `subscription` to `f`.
pub(crate) fn spawn_async<E, F, Fut>(
    runtime: &tokio::runtime::Handle,
    subscription: &Arc<SubscriptionState<E>>,
    concurrency: usize,
    plan: HandlerPlan,
    f: F,
) where
    E: Event,
    F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    let kind = Arc::new(AsyncHandler(f));
    let of = RunnerOf {
        bus: plan.bus,
        subscription: subscription.info.id,
        topic: E::TOPIC,
    };
    let plan = Arc::new(plan);
    for consumer in 0..concurrency {
        let task = runtime.spawn(InRunner::new(
            of,
            run(
                Arc::clone(subscription),
                Arc::clone(&plan),
                Arc::clone(&kind),
                consumer,
            ),
        ));
        subscription.add_task(task);
    }
}

/// Starts `concurrency` runners that feed `subscription` to `f` on `pool`'s
/// workers.
///
/// # Errors
/// The pool had no worker and none could be started; the runners already
/// started end when the queue is closed.
pub(crate) fn spawn_pooled<E, F, R>(
    pool: &Arc<pool::Shared>,
    subscription: &Arc<SubscriptionState<E>>,
    concurrency: usize,
    plan: HandlerPlan,
    f: F,
) -> std::io::Result<()>
where
    E: Event,
    F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
    R: HandlerResult,
{
    let client: Arc<dyn pool::Client> = Arc::clone(subscription) as _;
    let flow = pool::Flow::new(&client);
    let kind = Arc::new(SyncHandler {
        f,
        pool: Arc::clone(pool),
    });
    let of = RunnerOf {
        bus: plan.bus,
        subscription: subscription.info.id,
        topic: E::TOPIC,
    };
    let plan = Arc::new(plan);
    for consumer in 0..concurrency {
        let (queue_, plan, kind) = (
            Arc::clone(subscription),
            Arc::clone(&plan),
            Arc::clone(&kind),
        );
        let make = Box::new(move || -> pool::BoxFuture {
            let work = run(
                Arc::clone(&queue_),
                Arc::clone(&plan),
                Arc::clone(&kind),
                consumer,
            );
            Box::pin(InRunner::new(of, work))
        });
        subscription.add_pool_runner(pool.spawn(&flow, make)?);
    }
    Ok(())
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
        super::run::fault::arm("faulty-async", 1);
        super::run::fault::arm("faulty-sync", 1);
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

    /// A handler at concurrency 1 whose queue filled while it waited takes
    /// the whole batch on one wake-up, not one per event, in order; it
    /// yields to its worker's other tasks every tokio budget (128 events)
    /// on the way, and those yields are not waits on the queue.
    #[tokio::test(flavor = "current_thread")]
    async fn a_handler_drains_a_batch_on_one_wake_up_and_yields_on_the_way() {
        use std::sync::atomic::Ordering;
        use std::sync::{Arc, Mutex};

        const BATCH: u64 = 1_000;
        let bus = Bus::builder().topic::<Job>().build().expect("valid");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let seen = Arc::clone(&seen);
            bus.subscribe::<Job>()
                .capacity(1_024)
                .concurrency(1)
                .handler(move |e| {
                    let seen = Arc::clone(&seen);
                    async move { seen.lock().expect("not poisoned").push(e.0) }
                })
                .expect("subscribed")
        };
        let publisher = bus.publisher::<Job>().expect("registered");
        let subscription = publisher.topic.first_subscription();
        // The runner starts and finds the queue empty: its first wait.
        tokio::task::yield_now().await;
        assert_eq!(subscription.waits.load(Ordering::Relaxed), 1);
        // The whole batch is published before the runner runs again.
        for i in 0..BATCH {
            publisher.try_publish(Job(i)).expect("room");
        }
        // Meanwhile a task counts how often it gets the thread.
        let turns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = {
            let turns = Arc::clone(&turns);
            tokio::spawn(async move {
                loop {
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        while seen.lock().expect("not poisoned").len() < BATCH as usize {
            tokio::task::yield_now().await;
        }
        // The runner goes back to the queue after its last run (at most a
        // turn or two later, when its budget ran out on the last event).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        counter.abort();
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            (0..BATCH).collect::<Vec<_>>()
        );
        // Once for the empty queue at the start, once when the batch was
        // drained: not once an event.
        assert_eq!(subscription.waits.load(Ordering::Relaxed), 2);
        assert!(
            turns.load(Ordering::Relaxed) >= BATCH / 128,
            "the runner yielded to the other task on the way"
        );
        let stats = handle.unsubscribe().await;
        assert_eq!((stats.delivered, stats.handled), (BATCH, BATCH));
    }
}
