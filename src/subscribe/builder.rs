//! Setting a subscription up: [`SubscribeBuilder`] for what every
//! subscription has, and [`HandlerBuilder`] for what only handlers have
//! (concurrency, retries, a time limit, a circuit breaker), so that a
//! stream with a retry policy does not compile.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use super::{Attachment, Subscription, SubscriptionHandle};
use crate::config::{BreakerPolicy, Overflow, RetryPolicy, StartAt};
use crate::dead_letter::{DeadLetter, DEAD_LETTER_TOPIC};
use crate::errors::SubscribeError;
use crate::event::Envelope;
use crate::event::Event;
use crate::handler::{self, HandlerPlan, HandlerResult};
use crate::info::SubscriberKind;
use crate::topic::{Breaker, SubName, SubRequest, TopicState};

/// The most runners a handler subscription may have
/// ([`HandlerBuilder::concurrency`]): each is a task or a thread.
pub const MAX_CONCURRENCY: usize = 65_536;

/// Sets up one subscription; made by [`Bus::subscribe`](crate::Bus::subscribe).
/// Finish it with [`stream`](SubscribeBuilder::stream),
/// [`handler`](SubscribeBuilder::handler) or [`sync`](SubscribeBuilder::sync).
/// Settings only a handler has ([`concurrency`](SubscribeBuilder::concurrency),
/// [`retry`](SubscribeBuilder::retry), [`timeout`](SubscribeBuilder::timeout),
/// [`circuit_breaker`](SubscribeBuilder::circuit_breaker)) turn it into a
/// [`HandlerBuilder`], which cannot end in a stream.
///
/// ```
/// # use tidings::{Bus, Event, Overflow};
/// # #[derive(Debug, Event)] #[event(topic = "prices.tick")] struct Tick { cents: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<Tick>().build()?;
/// let mut latest = bus
///     .subscribe::<Tick>()
///     .name("ui")
///     .capacity(1)
///     .overflow(Overflow::DropOldest)
///     .stream()?;
/// bus.publish(Tick { cents: 100 }).await?;
/// bus.publish(Tick { cents: 101 }).await?; // evicts the first tick
/// let e = latest.recv().await.expect("open");
/// assert_eq!((e.cents, e.missed()), (101, 1));
/// # Ok(()) }
/// ```
#[must_use = "a subscribe builder does nothing until finished with .stream(), .handler() or .sync()"]
pub struct SubscribeBuilder<E: Event> {
    /// The topic, or `None` when it is not registered (refused when the
    /// subscription is made).
    topic: Option<Arc<TopicState<E>>>,
    /// Where handlers' dead letters go.
    dead_letters: Option<Arc<TopicState<DeadLetter>>>,
    name: Option<String>,
    /// The name it gets unless given one (a wildcard's pattern and call
    /// site); without, this topic and the call site.
    default_name: Option<String>,
    capacity: Option<usize>,
    overflow: Option<Overflow>,
    start: StartAt,
    /// Fed by a storage layer: where its feed goes.
    feed: Option<crate::feed::FeedSlot<E>>,
}

impl<E: Event> SubscribeBuilder<E> {
    pub(crate) fn new(
        topic: Option<Arc<TopicState<E>>>,
        dead_letters: Option<Arc<TopicState<DeadLetter>>>,
    ) -> Self {
        SubscribeBuilder {
            topic,
            dead_letters,
            name: None,
            default_name: None,
            capacity: None,
            overflow: None,
            start: StartAt::Latest,
            feed: None,
        }
    }

    /// The name it gets unless the application gives one, made unique on
    /// the topic (`#2`, `#3`, …) as a default name is.
    pub(crate) fn default_name(mut self, name: String) -> Self {
        self.default_name = Some(name);
        self
    }

    /// Names the subscription in stats, errors, reports, spans and metric
    /// labels. A name is unique on its topic: subscribing with one that a
    /// current (or still draining) subscription of the topic has is
    /// [`SubscribeError::NameTaken`]. The default is the topic and the call
    /// site that subscribed, e.g. `orders.created@src/billing.rs:42`, with
    /// `#2`, `#3`, … added when one call site subscribes more than once.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the queue capacity (default: the topic's, see
    /// [`TopicConfig::capacity`](crate::TopicConfig::capacity)). 0 is refused
    /// with [`SubscribeError::ZeroCapacity`].
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Sets the overflow policy (default: the topic's, normally
    /// [`Overflow::Block`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = Some(overflow);
        self
    }

    /// Makes it a subscription fed by a storage layer
    /// ([`feed`](crate::feed)): it attaches only to a topic handed to one
    /// ([`TopicConfig::fed_by`](crate::TopicConfig::fed_by)), gets a queue
    /// of its own (policy [`Overflow::Block`]: its feeder waits), and its
    /// [`Feed`](crate::feed::Feed) goes to `slot`'s other end. For storage
    /// layers; applications subscribe through the layer.
    pub fn fed(mut self, slot: crate::feed::FeedSlot<E>) -> Self {
        self.feed = Some(slot);
        self.overflow = Some(Overflow::Block);
        self
    }

    /// Where to start reading the topic (default [`StartAt::Latest`]: live
    /// events only). Starting earlier needs a topic that retains events
    /// ([`TopicConfig::retain`](crate::TopicConfig::retain)); the retained
    /// events come first, then live ones, with no gap and no duplicate at the
    /// hand-over. What was asked for but is no longer retained is reported
    /// in [`Subscription::started`].
    ///
    /// ```
    /// # use tidings::{Bus, Event, StartAt, TopicConfig};
    /// # #[derive(Debug, Event)] #[event(topic = "prices.eurusd")] struct Price(u64);
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder()
    ///     .topic_with::<Price>(TopicConfig::default().retain(1)) // a last-value topic
    ///     .build()?;
    /// bus.publish(Price(108)).await?;
    /// bus.publish(Price(109)).await?;
    /// let mut late = bus.subscribe::<Price>().from(StartAt::Last(1)).stream()?;
    /// assert_eq!(late.recv().await.map(|p| p.0), Some(109)); // the current value
    /// # Ok(()) }
    /// ```
    pub fn from(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// How many events a handler works on at once (default 1): see
    /// [`HandlerBuilder::concurrency`].
    pub fn concurrency(self, concurrency: usize) -> HandlerBuilder<E> {
        HandlerBuilder::new(self).concurrency(concurrency)
    }

    /// Tries a failed handler run again: see [`HandlerBuilder::retry`].
    pub fn retry(self, policy: RetryPolicy) -> HandlerBuilder<E> {
        HandlerBuilder::new(self).retry(policy)
    }

    /// Limits each handler attempt: see [`HandlerBuilder::timeout`].
    pub fn timeout(self, limit: Duration) -> HandlerBuilder<E> {
        HandlerBuilder::new(self).timeout(limit)
    }

    /// Stops calling the handler while its dependency looks down: see
    /// [`HandlerBuilder::circuit_breaker`].
    pub fn circuit_breaker(self, breaker: BreakerPolicy) -> HandlerBuilder<E> {
        HandlerBuilder::new(self).circuit_breaker(breaker)
    }

    /// Subscribes as a [`Subscription`]: a `Stream` the application reads.
    ///
    /// # Errors
    /// [`SubscribeError::UnknownTopic`], [`SubscribeError::ZeroCapacity`],
    /// [`SubscribeError::NameTaken`], [`SubscribeError::Closed`], and for
    /// [`from`](SubscribeBuilder::from) [`SubscribeError::NotRetained`] and
    /// [`SubscribeError::SeqAhead`].
    #[track_caller]
    pub fn stream(self) -> Result<Subscription<E>, SubscribeError> {
        self.stream_at(Location::caller())
    }

    pub(crate) fn stream_at(
        self,
        caller: &'static Location<'static>,
    ) -> Result<Subscription<E>, SubscribeError> {
        let attachment = self.attach(SubscriberKind::Stream, 1, None, caller)?;
        Ok(Subscription::new(attachment))
    }

    /// Subscribes an async handler, run as tokio tasks on the runtime this
    /// is called from: see [`HandlerBuilder::handler`].
    ///
    /// # Errors
    /// As [`HandlerBuilder::handler`].
    #[track_caller]
    pub fn handler<F, Fut>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        HandlerBuilder::new(self).handler_at(f, Location::caller())
    }

    /// Subscribes a blocking handler, run on threads owned by the bus: see
    /// [`HandlerBuilder::sync`].
    ///
    /// # Errors
    /// As [`HandlerBuilder::sync`].
    #[track_caller]
    pub fn sync<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        HandlerBuilder::new(self).sync_at(f, Location::caller())
    }

    /// Checks every setting, then attaches the subscription to its topic;
    /// nothing shared changes unless all of it is accepted.
    fn attach(
        self,
        kind: SubscriberKind,
        consumers: usize,
        breaker: Option<Arc<Breaker>>,
        caller: &'static Location<'static>,
    ) -> Result<Attachment<E>, SubscribeError> {
        let topic = E::TOPIC;
        let state = self.topic.ok_or(SubscribeError::UnknownTopic { topic })?;
        let capacity = self.capacity.unwrap_or(state.config.default_capacity());
        if capacity == 0 {
            return Err(SubscribeError::ZeroCapacity { topic });
        }
        let name = match (self.name, self.default_name) {
            (Some(name), _) => SubName::Given(name),
            (None, Some(name)) => SubName::Default(name),
            // The call site, not the id: names label metrics, and a name per
            // call site keeps their number bounded however often a
            // subscription is made again.
            (None, None) => {
                SubName::Default(format!("{topic}@{}:{}", caller.file(), caller.line()))
            }
        };
        let queue = state.attach(SubRequest {
            name,
            kind,
            policy: self.overflow.unwrap_or(state.config.default_overflow()),
            capacity,
            consumers,
            breaker,
            start: self.start,
            fed: self.feed.is_some(),
        })?;
        if let Some(slot) = self.feed {
            slot.fill(Arc::clone(&state), Arc::clone(&queue));
        }
        Ok(Attachment::new(state, queue))
    }
}

impl<E: Event> fmt::Debug for SubscribeBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeBuilder")
            .field("topic", &E::TOPIC)
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("overflow", &self.overflow)
            .field("start", &self.start)
            .finish()
    }
}

/// Sets up a handler subscription: a [`SubscribeBuilder`] with the
/// settings only handlers have. Finish it with
/// [`handler`](HandlerBuilder::handler) or [`sync`](HandlerBuilder::sync).
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
#[must_use = "a handler builder does nothing until finished with .handler() or .sync()"]
pub struct HandlerBuilder<E: Event> {
    base: SubscribeBuilder<E>,
    concurrency: usize,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    breaker: Option<BreakerPolicy>,
}

impl<E: Event> HandlerBuilder<E> {
    fn new(base: SubscribeBuilder<E>) -> Self {
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

    fn handler_at<F, Fut>(
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
        handler::spawn_async(&runtime, &attachment.queue, concurrency, plan, f);
        Ok(SubscriptionHandle::new(attachment))
    }

    /// Subscribes a blocking handler, run on threads owned by the bus
    /// ([`concurrency`](HandlerBuilder::concurrency) of them), never on the
    /// async runtime's worker threads: CPU-heavy or blocking work here does
    /// not stall the runtime.
    ///
    /// The handler returns `()` or `Result<(), Err>`; errors and panics are
    /// caught and counted, and the subscription goes on.
    ///
    /// Each sync subscription owns its threads, named `tidings:<name>`; they
    /// end when the subscription is dropped, unsubscribed or shut down and its
    /// queue is drained. Publishing from inside a sync handler: use
    /// [`Bus::try_publish`](crate::Bus::try_publish), which never waits (or
    /// block on `publish` with an executor of your choice).
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
    /// fn charge(order: &OrderCreated) { /* blocking I/O, heavy CPU… */ }
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
    /// [`SubscribeError::Spawn`].
    #[track_caller]
    pub fn sync<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        self.sync_at(f, Location::caller())
    }

    fn sync_at<F, R>(
        self,
        f: F,
        caller: &'static Location<'static>,
    ) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        let concurrency = self.concurrency;
        let (attachment, plan) = self.attach(SubscriberKind::Sync, caller)?;
        if let Err(source) = handler::spawn_sync(&attachment.queue, concurrency, plan, f) {
            attachment.detach(true);
            return Err(SubscribeError::Spawn {
                topic: E::TOPIC,
                source,
            });
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
            bus: attachment.topic.bus,
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
