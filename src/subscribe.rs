//! Subscribing: [`SubscribeBuilder`], the stream [`Subscription`] and the
//! [`SubscriptionHandle`] of handler subscriptions.

use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::SelectAll;
use futures::Stream;

use crate::erased::{AnyEvent, Pattern};
use crate::error::{SubscribeError, TryRecvError};
use crate::event::Envelope;
use crate::handler::{self, HandlerResult};
use crate::publish::{SubName, SubRequest, TopicState};
use crate::queue::{ErasedQueue, Overflow, Queue, SubInfo};
use crate::replay::{Start, StartAt};
use crate::retry::{
    Breaker, CircuitBreaker, DeadLetter, Reliability, RetryPolicy, DEAD_LETTER_TOPIC,
};
use crate::stats::SubscriptionStats;
use crate::{Bus, Event};

/// A process-wide unique identifier of a subscription.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    pub(crate) fn next() -> Self {
        // Only uniqueness is needed: `Relaxed` suffices.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SubscriptionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How a subscription consumes its queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum SubscriberKind {
    /// A [`Subscription`] read by the application.
    Stream,
    /// An async handler run as tokio tasks.
    Async,
    /// A blocking handler run on threads owned by the bus.
    Sync,
}

impl fmt::Display for SubscriberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            SubscriberKind::Stream => "stream",
            SubscriberKind::Async => "async",
            SubscriberKind::Sync => "sync",
        })
    }
}

/// Sets up one subscription; made by [`Bus::subscribe`]. Finish it with
/// [`stream`](SubscribeBuilder::stream), [`handler`](SubscribeBuilder::handler)
/// or [`sync`](SubscribeBuilder::sync).
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
pub struct SubscribeBuilder<'a, E> {
    bus: &'a Bus,
    name: Option<String>,
    capacity: Option<usize>,
    overflow: Option<Overflow>,
    concurrency: usize,
    start: StartAt,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    breaker: Option<CircuitBreaker>,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<'a, E: Event> SubscribeBuilder<'a, E> {
    pub(crate) fn new(bus: &'a Bus) -> Self {
        SubscribeBuilder {
            bus,
            name: None,
            capacity: None,
            overflow: None,
            concurrency: 1,
            start: StartAt::Latest,
            retry: RetryPolicy::none(),
            timeout: None,
            breaker: None,
            _event: std::marker::PhantomData,
        }
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

    /// How many events a handler works on at once (default 1). With 1,
    /// events are handled one at a time in queue order. Applies to
    /// [`handler`](SubscribeBuilder::handler) (tasks) and
    /// [`sync`](SubscribeBuilder::sync) (threads); a stream has one reader.
    /// 0 is refused with [`SubscribeError::ZeroConcurrency`], more than
    /// [`MAX_CONCURRENCY`] with [`SubscribeError::ConcurrencyTooHigh`].
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Where to start reading the topic (default [`StartAt::Latest`]: live
    /// events only). Starting earlier needs a topic that retains events
    /// ([`TopicConfig::retain`](crate::TopicConfig::retain)); the retained
    /// events come first, then live ones, with no gap and no duplicate at the
    /// hand-over. What was asked for but is no longer retained is reported
    /// in [`Subscription::start`].
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

    /// Tries a failed handler run again under `policy` (default
    /// [`RetryPolicy::none`]). An error, a panic or a
    /// [timeout](SubscribeBuilder::timeout) is a failed attempt; when the
    /// attempts are used up the event becomes a [`DeadLetter`](crate::DeadLetter).
    /// The runner keeps the event while it waits to retry: with concurrency 1
    /// the next event waits (order holds); other subscriptions never do.
    /// Handlers only: a stream is refused with
    /// [`SubscribeError::NotAHandler`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Limits each handler attempt to `limit`. An async handler still running
    /// then is cancelled (dropped at its next `.await`) and the attempt
    /// counts as failed (retried or dead-lettered). A sync handler cannot be
    /// cancelled: an overrun is counted in `timeouts` and logged, and its
    /// result stands. Handlers only.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Stops calling the handler while its dependency looks down: see
    /// [`CircuitBreaker`]. Handlers only.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Subscribes as a [`Subscription`]: a `Stream` the application reads.
    ///
    /// # Errors
    /// [`SubscribeError::UnknownTopic`], [`SubscribeError::ZeroCapacity`],
    /// [`SubscribeError::Closed`], and for [`from`](SubscribeBuilder::from)
    /// [`SubscribeError::NotRetained`] and [`SubscribeError::SeqAhead`].
    #[track_caller]
    pub fn stream(self) -> Result<Subscription<E>, SubscribeError> {
        self.stream_at(Location::caller())
    }

    pub(crate) fn stream_at(
        self,
        caller: &'static Location<'static>,
    ) -> Result<Subscription<E>, SubscribeError> {
        let what = if self.retry != RetryPolicy::none() {
            Some("a retry policy")
        } else if self.timeout.is_some() {
            Some("a timeout")
        } else if self.breaker.is_some() {
            Some("a circuit breaker")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(SubscribeError::NotAHandler {
                topic: E::TOPIC,
                what,
            });
        }
        let (attachment, _) = self.attach(SubscriberKind::Stream, 1, caller)?;
        Ok(Subscription {
            attachment,
            detached: false,
        })
    }

    /// Subscribes an async handler, run as tokio tasks
    /// ([`concurrency`](SubscribeBuilder::concurrency) of them) on the runtime
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
    /// As [`stream`](SubscribeBuilder::stream), and
    /// [`SubscribeError::ZeroConcurrency`], [`SubscribeError::NoRuntime`].
    #[track_caller]
    pub fn handler<F, Fut>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| SubscribeError::NoRuntime { topic: E::TOPIC })?;
        let concurrency = self.concurrency;
        let (attachment, runner) =
            self.attach(SubscriberKind::Async, concurrency, Location::caller())?;
        handler::spawn_async(&runtime, &attachment.queue, concurrency, runner, f);
        Ok(SubscriptionHandle::new(attachment))
    }

    /// Subscribes a blocking handler, run on threads owned by the bus
    /// ([`concurrency`](SubscribeBuilder::concurrency) of them), never on the
    /// async runtime's worker threads: CPU-heavy or blocking work here does
    /// not stall the runtime.
    ///
    /// The handler returns `()` or `Result<(), Err>`; errors and panics are
    /// caught and counted, and the subscription goes on.
    ///
    /// Each sync subscription owns its threads, named `tidings:<name>`; they
    /// end when the subscription is dropped, unsubscribed or shut down and its
    /// queue is drained. Publishing from inside a sync handler: use
    /// [`Bus::try_publish`], which never waits.
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
    /// As [`stream`](SubscribeBuilder::stream), and
    /// [`SubscribeError::ZeroConcurrency`], [`SubscribeError::Spawn`].
    #[track_caller]
    pub fn sync<F, R>(self, f: F) -> Result<SubscriptionHandle, SubscribeError>
    where
        F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
        R: HandlerResult,
    {
        let concurrency = self.concurrency;
        let (attachment, runner) =
            self.attach(SubscriberKind::Sync, concurrency, Location::caller())?;
        if let Err(source) = handler::spawn_sync(&attachment.queue, concurrency, runner, f) {
            attachment.detach(true);
            return Err(SubscribeError::Spawn {
                topic: E::TOPIC,
                source,
            });
        }
        Ok(SubscriptionHandle::new(attachment))
    }

    fn attach(
        self,
        kind: SubscriberKind,
        consumers: usize,
        caller: &'static Location<'static>,
    ) -> Result<(Attachment<E>, Runner), SubscribeError> {
        let topic = E::TOPIC;
        if self.retry.attempts() == 0 {
            return Err(SubscribeError::ZeroAttempts { topic });
        }
        if self.breaker.is_some_and(|b| b.threshold() == 0) {
            return Err(SubscribeError::ZeroBreakerThreshold { topic });
        }
        let state = self
            .bus
            .registry()
            .state_arc::<E>()
            .ok_or(SubscribeError::UnknownTopic { topic })?;
        let capacity = self.capacity.unwrap_or(state.config.default_capacity());
        if capacity == 0 {
            return Err(SubscribeError::ZeroCapacity { topic });
        }
        if consumers == 0 {
            return Err(SubscribeError::ZeroConcurrency { topic });
        }
        if consumers > MAX_CONCURRENCY {
            return Err(SubscribeError::ConcurrencyTooHigh {
                topic,
                concurrency: consumers,
                max: MAX_CONCURRENCY,
            });
        }
        let name = match self.name {
            Some(name) => SubName::Given(name),
            // The call site, not the id: names label metrics, and a name per
            // call site keeps their number bounded however often a
            // subscription is made again.
            None => SubName::Default(format!("{topic}@{}:{}", caller.file(), caller.line())),
        };
        let breaker = self.breaker.map(|b| Arc::new(Breaker::new(b)));
        let queue = state.attach(SubRequest {
            name,
            kind,
            policy: self.overflow.unwrap_or(state.config.default_overflow()),
            capacity,
            consumers,
            breaker: breaker.clone(),
            start: self.start,
        })?;
        let runner = Runner {
            bus: self.bus.registry().bus,
            reliability: Reliability {
                retry: self.retry,
                timeout: self.timeout,
                breaker,
            },
            // Dead letters of dead letters would loop: they are counted.
            dead_letters: if topic == DEAD_LETTER_TOPIC {
                None
            } else {
                self.bus.registry().state_arc::<DeadLetter>()
            },
        };
        Ok((
            Attachment {
                topic: state,
                queue,
            },
            runner,
        ))
    }
}

/// The most runners a handler subscription may have
/// ([`SubscribeBuilder::concurrency`]): each is a task or a thread.
pub const MAX_CONCURRENCY: usize = 65_536;

impl<E: Event> fmt::Debug for SubscribeBuilder<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeBuilder")
            .field("topic", &E::TOPIC)
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("overflow", &self.overflow)
            .field("concurrency", &self.concurrency)
            .field("start", &self.start)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// A queue attached to its topic.
pub(crate) struct Attachment<E> {
    topic: Arc<TopicState<E>>,
    pub(crate) queue: Arc<Queue<E>>,
}

impl<E: Event> Attachment<E> {
    fn detach(&self, discard: bool) {
        self.topic.detach(&self.queue, discard);
    }

    fn stats(&self) -> SubscriptionStats {
        self.topic.sub_stats(&self.queue)
    }
}

/// What a [`SubscriptionHandle`] needs without knowing the event type.
trait Detach: Send + Sync {
    fn detach(&self, discard: bool);
    fn stats(&self) -> SubscriptionStats;
    fn queue(&self) -> &dyn ErasedQueue;
    fn info(&self) -> &SubInfo;
    fn start(&self) -> &Start;
}

impl<E: Event> Detach for Attachment<E> {
    fn detach(&self, discard: bool) {
        Attachment::detach(self, discard);
    }
    fn stats(&self) -> SubscriptionStats {
        Attachment::stats(self)
    }
    fn queue(&self) -> &dyn ErasedQueue {
        &*self.queue
    }
    fn info(&self) -> &SubInfo {
        &self.queue.info
    }
    fn start(&self) -> &Start {
        &self.queue.start
    }
}

/// A stream subscription: read it with [`recv`](Subscription::recv),
/// [`try_recv`](Subscription::try_recv) or as a [`futures::Stream`] (so
/// `tokio_stream::StreamExt` and `futures::StreamExt` combinators work).
///
/// The stream ends (`None`) once the subscription is closed and its queue is
/// drained: after [`close`](Subscription::close) or a bus shutdown. Dropping
/// it unsubscribes and discards what it still holds (counted in the topic's
/// stats as `discarded_on_unsubscribe`).
///
/// ```
/// # use tidings::{Bus, Event};
/// use futures::StreamExt;
/// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut orders = bus.subscribe::<OrderCreated>().stream()?;
/// bus.publish(OrderCreated { id: 1 }).await?;
/// bus.publish(OrderCreated { id: 2 }).await?;
/// orders.close(); // no more events; what is queued still comes
/// let ids: Vec<u64> = orders.map(|e| e.id).collect().await;
/// assert_eq!(ids, [1, 2]);
/// # Ok(()) }
/// ```
#[must_use = "dropping the subscription unsubscribes"]
pub struct Subscription<E: Event> {
    attachment: Attachment<E>,
    detached: bool,
}

impl<E: Event> Subscription<E> {
    /// Waits for the next event; `None` once the subscription is closed and
    /// drained.
    ///
    /// Cancel safe: if the future is dropped before it completes (in a
    /// `tokio::select!`, say), no event is taken from the queue.
    pub async fn recv(&mut self) -> Option<Envelope<E>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is queued.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is queued,
    /// [`TryRecvError::Closed`] when nothing ever will be.
    pub fn try_recv(&mut self) -> Result<Envelope<E>, TryRecvError> {
        self.attachment.queue.try_pop()
    }

    /// Polls for the next event (what `recv` and the `Stream` impl use).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<E>>> {
        self.attachment.queue.poll_pop(cx, 0)
    }

    /// Stops receiving new events; what is already queued can still be
    /// read, then the stream ends.
    pub fn close(&mut self) {
        self.attachment.detach(false);
    }

    /// Unsubscribes now, discarding what is still queued, and returns the
    /// subscription's final numbers.
    pub fn unsubscribe(mut self) -> SubscriptionStats {
        self.detached = true;
        self.attachment.detach(true);
        self.attachment.stats()
    }

    /// The subscription's numbers now.
    pub fn stats(&self) -> SubscriptionStats {
        self.attachment.stats()
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.attachment.queue.info.id
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.attachment.queue.info.name
    }

    /// Where it started ([`SubscribeBuilder::from`]): how many retained
    /// events it was given and which ones it asked for are gone.
    pub fn start(&self) -> &Start {
        &self.attachment.queue.start
    }
}

impl<E: Event> Stream for Subscription<E> {
    type Item = Envelope<E>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope<E>>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<E: Event> Drop for Subscription<E> {
    fn drop(&mut self) {
        if !self.detached {
            self.attachment.detach(true);
        }
    }
}

impl<E: Event> fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.attachment.queue.info;
        f.debug_struct("Subscription")
            .field("id", &info.id)
            .field("name", &info.name)
            .field("topic", &info.topic)
            .finish()
    }
}

/// The handle of a handler subscription ([`SubscribeBuilder::handler`],
/// [`SubscribeBuilder::sync`]). Dropping it unsubscribes: the handler
/// finishes the event it is on, and what is still queued is discarded (and
/// counted). [`unsubscribe`](SubscriptionHandle::unsubscribe) drains first.
///
/// The handle does not name its event type, so handles of many topics fit in
/// one `Vec`.
#[must_use = "dropping the handle unsubscribes"]
pub struct SubscriptionHandle {
    attachment: Box<dyn Detach>,
    detached: bool,
}

impl SubscriptionHandle {
    fn new<E: Event>(attachment: Attachment<E>) -> Self {
        SubscriptionHandle {
            attachment: Box::new(attachment),
            detached: false,
        }
    }

    /// Unsubscribes, waits until the handler has handled everything that was
    /// queued, and returns the subscription's final numbers. If this future
    /// is dropped early, the handler still drains the queue in the
    /// background, and [`Bus::shutdown`](crate::Bus::shutdown) waits for it.
    ///
    /// Called from inside the subscription's own handler, it cannot wait for
    /// that handler: it stops the subscription taking new events and returns
    /// at once; what is queued is still handled once the handler returns.
    pub async fn unsubscribe(mut self) -> SubscriptionStats {
        self.detached = true;
        self.attachment.detach(false);
        let own = crate::context::current().is_some_and(|r| r.subscription == self.id());
        if !own {
            poll_fn(|cx| self.attachment.queue().poll_idle(cx)).await;
        }
        self.attachment.stats()
    }

    /// The subscription's numbers now.
    pub fn stats(&self) -> SubscriptionStats {
        self.attachment.stats()
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.attachment.info().id
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.attachment.info().name
    }

    /// Where it started ([`SubscribeBuilder::from`]).
    pub fn start(&self) -> &Start {
        self.attachment.start()
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if !self.detached {
            self.attachment.detach(true);
        }
    }
}

impl fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.attachment.info();
        f.debug_struct("SubscriptionHandle")
            .field("id", &info.id)
            .field("name", &info.name)
            .field("topic", &info.topic)
            .field("kind", &info.kind)
            .finish()
    }
}

/// How a handler subscription's runners retry, time out and dead-letter.
pub(crate) struct Runner {
    /// The bus it belongs to: its runners work in its context.
    pub(crate) bus: crate::context::BusId,
    pub(crate) reliability: Reliability,
    /// Where its dead letters go (`None` for the dead-letter topic itself).
    pub(crate) dead_letters: Option<Arc<TopicState<DeadLetter>>>,
}

/// One topic's part of a wildcard subscription.
pub(crate) type AnyStream = Box<dyn AnyPart>;

/// A subscription whose events come out type-erased.
pub(crate) trait AnyPart: Stream<Item = AnyEvent> + Send + Unpin {
    /// Stops taking new events; what is queued still comes.
    fn close(&mut self);
}

impl<E: Event> AnyPart for Erased<E> {
    fn close(&mut self) {
        self.0.close();
    }
}

/// A typed subscription read as [`AnyEvent`]s.
pub(crate) struct Erased<E: Event>(pub(crate) Subscription<E>);

impl<E: Event> Stream for Erased<E> {
    type Item = AnyEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AnyEvent>> {
        self.get_mut().0.poll_recv(cx).map(|e| e.map(|e| e.erase()))
    }
}

/// The settings a wildcard subscription applies to each matching topic.
pub(crate) struct AnyOptions {
    name: String,
    capacity: Option<usize>,
    overflow: Option<Overflow>,
    caller: &'static Location<'static>,
}

impl AnyOptions {
    pub(crate) fn apply<E: Event>(
        &self,
        builder: SubscribeBuilder<'_, E>,
    ) -> Result<Subscription<E>, SubscribeError> {
        let mut builder = builder.name(self.name.clone());
        if let Some(capacity) = self.capacity {
            builder = builder.capacity(capacity);
        }
        if let Some(overflow) = self.overflow {
            builder = builder.overflow(overflow);
        }
        builder.stream_at(self.caller)
    }
}

/// Sets up a wildcard subscription; made by [`Bus::subscribe_pattern`].
/// Finish it with [`stream`](PatternBuilder::stream).
#[must_use = "a pattern builder does nothing until finished with .stream()"]
#[derive(Debug)]
pub struct PatternBuilder<'a> {
    bus: &'a Bus,
    pattern: String,
    name: Option<String>,
    capacity: Option<usize>,
    overflow: Option<Overflow>,
}

impl<'a> PatternBuilder<'a> {
    pub(crate) fn new(bus: &'a Bus, pattern: String) -> Self {
        PatternBuilder {
            bus,
            pattern,
            name: None,
            capacity: None,
            overflow: None,
        }
    }

    /// Names the subscription (each matching topic's part carries the
    /// name). Default: the pattern and the call site.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The queue capacity of each matching topic's part (default: each
    /// topic's own).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The overflow policy of each matching topic's part (default: each
    /// topic's own).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = Some(overflow);
        self
    }

    /// Subscribes to every registered topic the pattern matches, checked now
    /// against the allow-list.
    ///
    /// # Errors
    /// [`SubscribeError::Pattern`] for a malformed pattern,
    /// [`SubscribeError::NoMatch`] when it matches no registered topic, and
    /// what [`SubscribeBuilder::stream`] can return for any matching topic.
    #[track_caller]
    pub fn stream(self) -> Result<PatternSubscription, SubscribeError> {
        let caller = Location::caller();
        let pattern = Pattern::parse(&self.pattern)?;
        let registry = self.bus.registry();
        let matching: Vec<_> = registry.matching(&pattern).collect();
        if matching.is_empty() {
            return Err(SubscribeError::NoMatch {
                pattern: self.pattern,
                registered: registry
                    .entries()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let options = AnyOptions {
            name: self
                .name
                .unwrap_or_else(|| format!("{}@{}:{}", self.pattern, caller.file(), caller.line())),
            capacity: self.capacity,
            overflow: self.overflow,
            caller,
        };
        let mut parts = SelectAll::new();
        let mut topics = Vec::with_capacity(matching.len());
        for entry in matching {
            // On an error, the parts made so far are dropped: unsubscribed.
            parts.push(entry.erased.subscribe_any(self.bus, &options)?);
            topics.push(entry.name);
        }
        Ok(PatternSubscription {
            pattern,
            topics,
            parts,
        })
    }
}

/// A wildcard subscription: type-erased events ([`AnyEvent`]) from every
/// registered topic its pattern matched when it subscribed. Each topic's
/// events keep their order; across topics, they interleave.
///
/// It is one [`Subscription`] per matching topic under the hood, with the
/// same guarantees and stats (each listed under the subscription's name).
/// Dropping it unsubscribes from all of them.
#[must_use = "dropping the subscription unsubscribes"]
pub struct PatternSubscription {
    pattern: Pattern,
    topics: Vec<&'static str>,
    parts: SelectAll<AnyStream>,
}

impl PatternSubscription {
    /// Waits for the next event of any matching topic; `None` once every
    /// part is closed and drained.
    pub async fn recv(&mut self) -> Option<AnyEvent> {
        futures::StreamExt::next(&mut self.parts).await
    }

    /// Stops receiving new events on every matching topic; what is already
    /// queued can still be read, then the stream ends.
    pub fn close(&mut self) {
        for part in self.parts.iter_mut() {
            part.close();
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The topics it matched, in name order.
    pub fn topics(&self) -> &[&'static str] {
        &self.topics
    }
}

impl Stream for PatternSubscription {
    type Item = AnyEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AnyEvent>> {
        Pin::new(&mut self.get_mut().parts).poll_next(cx)
    }
}

impl fmt::Debug for PatternSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatternSubscription")
            .field("pattern", &self.pattern)
            .field("topics", &self.topics)
            .finish()
    }
}
