//! [`HandlerBuilder`]: the settings only handler subscriptions have, and
//! the three kinds of handler it ends in (async, CPU-heavy, blocking on
//! I/O).

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use super::builder::{SubscribeBuilder, MAX_CONCURRENCY};
use super::{Attachment, SubscriptionHandle};
use crate::config::{BreakerPolicy, Overflow, RetryPolicy, StartAt};
use crate::dead_letter::DEAD_LETTER_TOPIC;
use crate::errors::SubscribeError;
use crate::event::Envelope;
use crate::event::Event;
use crate::handler::{self, HandlerPlan, HandlerResult};
use crate::info::SubscriberKind;
use crate::topic::Breaker;

/// Sets up a handler subscription: a [`SubscribeBuilder`] with the
/// settings only handlers have. Finish it with
/// [`handler`](HandlerBuilder::handler), [`sync`](HandlerBuilder::sync) or
/// [`blocking`](HandlerBuilder::blocking).
///
/// ```
/// # use std::time::Duration;
/// # use tidings::{BreakerPolicy, Bus, Event, RetryPolicy};
/// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # async fn send_email(id: u64) -> Result<(), std::io::Error> { Ok(()) }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mailer = bus
///     .subscribe::<OrderCreated>()
///     .name("mailer")
///     .concurrency(4)
///     .retry(RetryPolicy::exponential(Duration::from_millis(10)))
///     .timeout(Duration::from_secs(5))
///     .circuit_breaker(BreakerPolicy::new(10, Duration::from_secs(30)))
///     .handler(|e| async move { send_email(e.id).await })?;
/// # drop(mailer);
/// # Ok(()) }
/// ```
#[must_use = "a handler builder does nothing until finished with .handler(), .sync() or .blocking()"]
pub struct HandlerBuilder<E: Event> {
    base: SubscribeBuilder<E>,
    concurrency: usize,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    breaker: Option<BreakerPolicy>,
}

impl<E: Event> HandlerBuilder<E> {
    pub(super) fn new(base: SubscribeBuilder<E>) -> Self {
        HandlerBuilder {
            base,
            concurrency: 1,
            retry: RetryPolicy::none(),
            timeout: None,
            breaker: None,
        }
    }

    /// As [`SubscribeBuilder::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.base = self.base.name(name);
        self
    }

    /// As [`SubscribeBuilder::capacity`].
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.base = self.base.capacity(capacity);
        self
    }

    /// As [`SubscribeBuilder::overflow`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.base = self.base.overflow(overflow);
        self
    }

    /// As [`SubscribeBuilder::from`].
    pub fn from(mut self, start: StartAt) -> Self {
        self.base = self.base.from(start);
        self
    }

    /// How many events the handler works on at once (default 1): tasks for
    /// [`handler`](HandlerBuilder::handler), threads for
    /// [`sync`](HandlerBuilder::sync). With 1, events are handled one at a
    /// time in queue order. 0 is refused with
    /// [`SubscribeError::ZeroConcurrency`], more than [`MAX_CONCURRENCY`]
    /// with [`SubscribeError::ConcurrencyTooHigh`].
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Tries a failed handler run again under `policy` (default
    /// [`RetryPolicy::none`]). An error, a panic or a
    /// [timeout](HandlerBuilder::timeout) is a failed attempt; when the
    /// attempts are used up the event becomes a [`DeadLetter`](crate::DeadLetter).
    /// The runner keeps the event while it waits to retry: with concurrency 1
    /// the next event waits (order holds); other subscriptions never do.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Limits each handler attempt to `limit`. An async handler still running
    /// then is cancelled (dropped at its next `.await`) and the attempt
    /// counts as failed (retried or dead-lettered). A sync handler cannot be
    /// cancelled: an overrun is counted in `timeouts` and logged, and its
    /// result stands.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Stops calling the handler while its dependency looks down: see
    /// [`BreakerPolicy`].
    pub fn circuit_breaker(mut self, breaker: BreakerPolicy) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Subscribes an async handler, run as tokio tasks
    /// ([`concurrency`](HandlerBuilder::concurrency) of them) on the runtime
    /// this is called from.
    ///
    /// The handler returns `()` or `Result<(), Err>` with
    /// `Err: Into<Box<dyn Error + Send + Sync>>`. Errors and panics are caught,
    /// counted in the subscription's stats, and the subscription goes on.
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
    /// # async fn send_email(id: u64) -> Result<(), std::io::Error> { Ok(()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderCreated>().build()?;
    /// let mailer = bus
    ///     .subscribe::<OrderCreated>()
    ///     .concurrency(4)
    ///     .handler(|e| async move { send_email(e.id).await })?;
    /// bus.publish(OrderCreated { id: 1 }).await?;
    /// let stats = mailer.unsubscribe().await; // drains first
    /// assert_eq!(stats.handled, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`SubscribeBuilder::stream`], and [`SubscribeError::ZeroAttempts`],
    /// [`SubscribeError::ZeroBreakerThreshold`],
    /// [`SubscribeError::ZeroConcurrency`],
    /// [`SubscribeError::ConcurrencyTooHigh`], [`SubscribeError::NoRuntime`].
    #[track_caller]
    pub fn handler<F, Fut>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        self.handler_at(f, Location::caller())
    }

    pub(super) fn handler_at<F, Fut>(
        self,
        f: F,
        caller: &'static Location<'static>,
    ) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| SubscribeError::NoRuntime { topic: E::TOPIC })?;
        let concurrency = self.concurrency;
        let (attachment, plan) = self.attach(SubscriberKind::Async, caller)?;
        handler::spawn_async(&runtime, &attachment.subscription, concurrency, plan, f);
        Ok(SubscriptionHandle::new(attachment))
    }

    /// Subscribes a CPU-heavy handler (parsing, hashing, compressing,
    /// rendering), run on the bus's CPU worker pool, never on the async
    /// runtime's worker threads: CPU-heavy or blocking work here does not
    /// stall the runtime. For handlers that mostly *wait* (a synchronous
    /// database driver, a blocking SDK), use
    /// [`blocking`](HandlerBuilder::blocking).
    ///
    /// The handler returns `()` or `Result<(), Err>`; errors and panics are
    /// caught and counted, and the subscription goes on.
    ///
    /// The pool is the bus's, shared by all its `.sync()` subscriptions:
    /// [`BusBuilder::cpu_workers`](crate::BusBuilder::cpu_workers) threads at
    /// most (default: one per core), named `tidings-cpu-<n>`, started when
    /// there is work. [`concurrency`](HandlerBuilder::concurrency) is how
    /// many of its workers this subscription may hold at once; a
    /// subscription with many events gives its worker up after each run
    /// while others wait, so one that floods the pool cannot starve the
    /// rest (see [`WorkerPool`](crate::WorkerPool)). A run cannot be
    /// stopped: one longer than
    /// [`WatchConfig::sync_budget`](crate::WatchConfig::sync_budget) is
    /// named in [`Bus::health`](crate::Bus::health) while it runs, and so
    /// is a pool whose every worker stays busy.
    ///
    /// Publishing from inside it: use [`Bus::try_publish`](crate::Bus::try_publish),
    /// which never waits. A handler that waits for room in a full `Block`
    /// subscription served by the same pool holds a worker that
    /// subscription may need.
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
    /// fn charge(order: &OrderCreated) { /* heavy CPU */ }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderCreated>().build()?;
    /// let billing = bus.subscribe::<OrderCreated>().name("billing").sync(|e| charge(&e))?;
    /// bus.publish(OrderCreated { id: 1 }).await?;
    /// assert_eq!(billing.unsubscribe().await.handled, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`handler`](HandlerBuilder::handler) (but for `NoRuntime`), and
    /// [`SubscribeError::Spawn`] when the pool has no worker and none can be
    /// started.
    #[track_caller]
    pub fn sync<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        self.pooled(SubscriberKind::Sync, f, Location::caller())
    }

    /// Subscribes a handler that blocks on I/O (a synchronous database
    /// driver, a blocking HTTP SDK, file I/O), run on the bus's I/O worker
    /// pool: [`BusBuilder::io_workers`](crate::BusBuilder::io_workers)
    /// threads at most (default 64, since they mostly wait), named
    /// `tidings-io-<n>`, kept apart from the CPU pool so that waiting
    /// handlers never hold the workers CPU-heavy ones need. Everything else
    /// is as for [`sync`](HandlerBuilder::sync).
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
    /// fn save(order: &OrderCreated) -> std::io::Result<()> { /* a blocking driver */ Ok(()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderCreated>().io_workers(16).build()?;
    /// let ledger = bus
    ///     .subscribe::<OrderCreated>()
    ///     .name("ledger")
    ///     .concurrency(8)
    ///     .blocking(|e| save(&e))?;
    /// bus.publish(OrderCreated { id: 1 }).await?;
    /// assert_eq!(ledger.unsubscribe().await.handled, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`sync`](HandlerBuilder::sync).
    #[track_caller]
    pub fn blocking<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        self.pooled(SubscriberKind::Blocking, f, Location::caller())
    }

    pub(super) fn pooled<F, R>(
        self,
        kind: SubscriberKind,
        f: F,
        caller: &'static Location<'static>,
    ) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        let concurrency = self.concurrency;
        let topic = E::TOPIC;
        let pools = self
            .base
            .topic
            .as_ref()
            .map(|t| crate::pool::current(t.pools()));
        let pools = pools.ok_or(SubscribeError::UnknownTopic { topic })?;
        let pool = pools.get(kind.pool().unwrap_or(crate::config::WorkerPool::Cpu));
        let (attachment, plan) = self.attach(kind, caller)?;
        if let Err(source) =
            handler::spawn_pooled(pool, &attachment.subscription, concurrency, plan, f)
        {
            attachment.detach(true);
            return Err(SubscribeError::Spawn { topic, source });
        }
        Ok(SubscriptionHandle::new(attachment))
    }

    /// Checks the handler's settings, attaches, and makes its plan.
    fn attach(
        self,
        kind: SubscriberKind,
        caller: &'static Location<'static>,
    ) -> Result<(Attachment<E>, HandlerPlan), SubscribeError> {
        let topic = E::TOPIC;
        if self.retry.attempts() == 0 {
            return Err(SubscribeError::ZeroAttempts { topic });
        }
        if self.breaker.is_some_and(|b| b.threshold() == 0) {
            return Err(SubscribeError::ZeroBreakerThreshold { topic });
        }
        if self.concurrency == 0 {
            return Err(SubscribeError::ZeroConcurrency { topic });
        }
        if self.concurrency > MAX_CONCURRENCY {
            return Err(SubscribeError::ConcurrencyTooHigh {
                topic,
                concurrency: self.concurrency,
                max: MAX_CONCURRENCY,
            });
        }
        let breaker = self.breaker.map(|b| Arc::new(Breaker::new(b)));
        // Dead letters of dead letters would loop: they are counted.
        let dead_letters = if topic == DEAD_LETTER_TOPIC {
            None
        } else {
            self.base.dead_letters.clone()
        };
        let attachment = self
            .base
            .attach(kind, self.concurrency, breaker.clone(), caller)?;
        let plan = HandlerPlan {
            retry: self.retry,
            timeout: self.timeout,
            breaker,
            dead_letters,
            bus: attachment.topic.bus(),
        };
        Ok((attachment, plan))
    }
}

impl<E: Event> fmt::Debug for HandlerBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerBuilder")
            .field("base", &self.base)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish()
    }
}
