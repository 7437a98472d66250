//! Setting a subscription up: [`SubscribeBuilder`] for what every
//! subscription has; what only handlers have (concurrency, retries, a time
//! limit, a circuit breaker) is on [`HandlerBuilder`] (`handlers.rs`), so
//! that a stream with a retry policy does not compile.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use super::{Attachment, HandlerBuilder, Subscription, SubscriptionHandle};
use crate::config::{BreakerPolicy, Overflow, RetryPolicy, StartAt};
use crate::dead_letter::DeadLetter;
use crate::errors::SubscribeError;
use crate::event::Envelope;
use crate::event::Event;
use crate::handler::HandlerResult;
use crate::info::SubscriberKind;
use crate::topic::{Breaker, SubName, SubRequest, TopicState};

/// The most runners a handler subscription may have
/// ([`HandlerBuilder::concurrency`]): each is a task, on the runtime or
/// on a worker pool.
pub const MAX_CONCURRENCY: usize = 65_536;

/// Sets up one subscription; made by [`Bus::subscribe`](crate::Bus::subscribe).
/// Finish it with [`stream`](SubscribeBuilder::stream),
/// [`handler`](SubscribeBuilder::handler), [`sync`](SubscribeBuilder::sync) or
/// [`blocking`](SubscribeBuilder::blocking).
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
#[must_use = "a subscribe builder does nothing until finished with .stream(), .handler(), .sync() or .blocking()"]
pub struct SubscribeBuilder<E: Event> {
    /// The topic, or `None` when it is not registered (refused when the
    /// subscription is made).
    pub(super) topic: Option<Arc<TopicState<E>>>,
    /// Where handlers' dead letters go.
    pub(super) dead_letters: Option<Arc<TopicState<DeadLetter>>>,
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

    /// Subscribes a CPU-heavy handler, run on the bus's CPU worker pool:
    /// see [`HandlerBuilder::sync`].
    ///
    /// # Errors
    /// As [`HandlerBuilder::sync`].
    #[track_caller]
    pub fn sync<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        HandlerBuilder::new(self).pooled(SubscriberKind::Sync, f, Location::caller())
    }

    /// Subscribes a handler that blocks on I/O, run on the bus's I/O worker
    /// pool: see [`HandlerBuilder::blocking`].
    ///
    /// # Errors
    /// As [`HandlerBuilder::sync`].
    #[track_caller]
    pub fn blocking<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        HandlerBuilder::new(self).pooled(SubscriberKind::Blocking, f, Location::caller())
    }

    /// Checks every setting, then attaches the subscription to its topic;
    /// nothing shared changes unless all of it is accepted.
    pub(super) fn attach(
        self,
        kind: SubscriberKind,
        consumers: usize,
        breaker: Option<Arc<Breaker>>,
        caller: &'static Location<'static>,
    ) -> Result<Attachment<E>, SubscribeError> {
        let topic = E::TOPIC;
        let state = self.topic.ok_or(SubscribeError::UnknownTopic { topic })?;
        let capacity = self.capacity.unwrap_or(state.config().default_capacity());
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
        let subscription = state.attach(SubRequest {
            name,
            kind,
            policy: self.overflow.unwrap_or(state.config().default_overflow()),
            capacity,
            consumers,
            breaker,
            start: self.start,
            fed: self.feed.is_some(),
        })?;
        if let Some(slot) = self.feed {
            slot.fill(Arc::clone(&state), Arc::clone(&subscription));
        }
        Ok(Attachment::new(state, subscription))
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
