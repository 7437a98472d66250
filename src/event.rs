//! The [`Event`] trait and what subscribers receive: [`Envelope`].

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::id::{Cause, EventId, EventRef};
use crate::watch::{Callback, CallbackLog};

/// A type that can travel on a [`Bus`](crate::Bus): it has exactly one topic.
///
/// Implement it with `#[derive(Event)]`; the derive checks the topic at
/// compile time. A hand-written impl is checked when the topic is registered
/// ([`BusBuilder::build`](crate::BusBuilder::build) fails with
/// [`BuildError::InvalidTopic`](crate::error::BuildError::InvalidTopic)).
///
/// ```
/// use tidings::Event;
///
/// #[derive(Event)]
/// #[event(topic = "orders.created")]
/// struct OrderCreated { id: u64 }
///
/// #[derive(Event)] // no attribute: the topic is the type name in snake_case
/// struct PaymentFailed { order: u64 }
///
/// assert_eq!(<OrderCreated as Event>::TOPIC, "orders.created");
/// assert_eq!(<PaymentFailed as Event>::TOPIC, "payment_failed");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tidings event",
    note = "add #[derive(tidings::Event)] to `{Self}`"
)]
pub trait Event: Send + Sync + 'static {
    /// The topic of this type, e.g. `orders.created`. See [`Topic`](crate::Topic)
    /// for the grammar.
    const TOPIC: &'static str;

    /// How the type is serialized and deserialized by topic name; `None`
    /// unless the derive says `#[event(serde)]`. Not meant to be written by
    /// hand.
    #[doc(hidden)]
    fn __codec() -> Option<crate::codec::Codec> {
        None
    }
}

/// One accepted event and its metadata, shared by every subscription that
/// received it (fan-out clones the `Arc`, never the event).
pub(crate) struct Published<E> {
    pub(crate) event: E,
    pub(crate) id: EventId,
    pub(crate) seq: u64,
    pub(crate) at: SystemTime,
    /// The idempotency key and origin, for the few events published with
    /// either: boxed, so that the others stay small.
    pub(crate) meta: Option<Box<Meta>>,
}

/// What a publish said about an event beyond the event itself.
pub(crate) struct Meta {
    pub(crate) key: Option<Arc<str>>,
    pub(crate) origin: Option<Arc<str>>,
    /// Run once every subscription that took the event is done with it.
    pub(crate) done: Option<Arc<Done>>,
    /// What caused it, when published from a handler (or said).
    pub(crate) cause: Option<Cause>,
    /// Its id in the process it came from (a bridge's wire id).
    pub(crate) remote: Option<Arc<str>>,
    /// The OpenTelemetry span it was published in.
    #[cfg(feature = "opentelemetry")]
    pub(crate) parent: Option<opentelemetry::trace::SpanContext>,
    /// Fed again by a storage layer after a restart: this subscription may
    /// have had it before ([`Envelope::redelivered`]).
    pub(crate) redelivered: bool,
}

impl Drop for Meta {
    fn drop(&mut self) {
        // A last resort: every path that lets go of a subscription's copy
        // releases its hold, so `on_done` has normally run by now.
        if let Some(done) = self.done.take() {
            done.run();
        }
    }
}

/// The `on_done` of one accepted event and the holds on it: one per
/// subscription that queued it, one per envelope handed out (a clone is
/// one more), and the publisher's own while it enqueues. A copy kept by a
/// log (a topic's retained events, a dead letter) holds nothing: it is not
/// a subscription. The last hold released runs `on_done`.
pub(crate) struct Done {
    on_done: Arc<crate::config::OnDone>,
    /// Its topic's log, which catches and counts a panic in `on_done`.
    log: Arc<CallbackLog>,
    holds: AtomicUsize,
    /// How its subscription settled it (`Settled::code`, 0: not settled);
    /// read by the `on_done` of a fed event.
    settled: AtomicU8,
    /// Why a handler gave up on it, when it did.
    error: parking_lot::Mutex<Option<String>>,
}

impl Done {
    /// Held by the publisher until it has enqueued the event everywhere.
    pub(crate) fn new(on_done: Arc<crate::config::OnDone>, log: Arc<CallbackLog>) -> Self {
        Done {
            on_done,
            log,
            holds: AtomicUsize::new(1),
            settled: AtomicU8::new(0),
            error: parking_lot::Mutex::new(None),
        }
    }

    /// Marks it dead-lettered for `error`, before its last hold goes.
    pub(crate) fn dead_lettered(&self, error: String) {
        *self.error.lock() = Some(error);
        self.settle(crate::config::Settled::DeadLettered);
    }

    /// Marks how the event was settled, before its last hold goes.
    pub(crate) fn settle(&self, how: crate::config::Settled) {
        self.settled.store(how.code(), Ordering::Release);
    }

    /// `n` more holds. Taken before whoever holds them can release them,
    /// while a hold of the caller's own keeps the count above zero.
    pub(crate) fn hold(&self, n: usize) {
        // Relaxed: the count only has to reach zero once, after every
        // release; the release below orders what came before it.
        self.holds.fetch_add(n, Ordering::Relaxed);
    }

    /// Releases one hold; the last runs `on_done`. Never under a lock of
    /// the bus.
    pub(crate) fn release(&self) {
        let last = self
            .holds
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            == Ok(1);
        if last {
            self.run();
        }
    }

    /// Runs `on_done`, if nobody has yet; a panic in it is caught.
    fn run(&self) {
        let settled = crate::config::Settled::from_code(self.settled.load(Ordering::Acquire));
        let error = self.error.lock().take();
        self.log
            .run(Callback::OnDone, || self.on_done.run(settled, error));
    }
}

impl<E> Published<E> {
    /// Its `on_done` and holds, if it was published with one.
    #[inline]
    pub(crate) fn done(&self) -> Option<&Arc<Done>> {
        self.meta.as_ref()?.done.as_ref()
    }

    /// One more hold on it (a subscription's queued copy, an envelope).
    #[inline]
    pub(crate) fn hold(&self) {
        if let Some(done) = self.done() {
            done.hold(1);
        }
    }

    /// Marks how its subscription settled it (fed events: see
    /// [`Settled`](crate::config::Settled)).
    #[inline]
    pub(crate) fn settle(&self, how: crate::config::Settled) {
        if let Some(done) = self.done() {
            done.settle(how);
        }
    }

    /// Marks it dead-lettered for `error` (fed events: see
    /// [`Settlement`](crate::config::Settlement)).
    pub(crate) fn dead_lettered(&self, error: &str) {
        if let Some(done) = self.done() {
            done.dead_lettered(error.to_owned());
        }
    }

    /// Whether a storage layer fed it again after a restart.
    pub(crate) fn redelivered(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.redelivered)
    }

    /// Releases one hold. Never under a lock of the bus.
    #[inline]
    pub(crate) fn release(&self) {
        if let Some(done) = self.done() {
            done.release();
        }
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.meta.as_ref()?.key.as_deref()
    }

    pub(crate) fn origin(&self) -> Option<&str> {
        self.meta.as_ref()?.origin.as_deref()
    }

    pub(crate) fn cause(&self) -> Option<&Cause> {
        self.meta.as_ref()?.cause.as_ref()
    }

    /// How events it causes name it.
    pub(crate) fn reference(&self) -> EventRef {
        match self.meta.as_ref().and_then(|m| m.remote.as_ref()) {
            Some(remote) => EventRef::Remote(Arc::clone(remote)),
            None => EventRef::Local(self.id),
        }
    }

    /// The OpenTelemetry span it was published in.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn trace_parent(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.meta.as_ref()?.parent.as_ref()
    }
}

impl<E: Event> Published<E> {
    /// The cause of what a handler of this event publishes, as the handler
    /// runners hold it (cheap for the usual event: no metadata).
    #[inline]
    pub(crate) fn held_cause(&self) -> crate::context::Held {
        match &self.meta {
            None => crate::context::Held::root(self.id, E::TOPIC),
            Some(_) => crate::context::Held::new(self.cause_of_follow_ups()),
        }
    }

    /// The cause of an event published while handling this one.
    pub(crate) fn cause_of_follow_ups(&self) -> Cause {
        let caused_by = self.reference();
        let correlation = self
            .cause()
            .map_or_else(|| caused_by.clone(), |c| c.correlation.clone());
        Cause {
            caused_by,
            correlation,
            topic: Some(E::TOPIC),
        }
    }
}

/// What a subscriber receives: the event (shared, never cloned) and its
/// metadata.
///
/// `Envelope<E>` dereferences to `E`, so a handler written for `&E` takes
/// `&envelope` as it is.
///
/// ```
/// # use tidings::{Bus, Event};
/// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// fn total(order: &OrderCreated) -> u64 { order.id * 100 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut orders = bus.subscribe::<OrderCreated>().stream()?;
/// let receipt = bus.publish(OrderCreated { id: 7 }).await?;
/// let e = orders.recv().await.expect("subscribed");
/// assert_eq!(total(&e), 700); // derefs to &OrderCreated
/// assert_eq!((e.id(), e.seq(), e.topic(), e.missed()), (receipt.id, 1, "orders.created", 0));
/// # Ok(()) }
/// ```
///
/// # Missed events
/// Under the lossy policies ([`Overflow::DropOldest`](crate::Overflow::DropOldest),
/// [`Overflow::DropNewest`](crate::Overflow::DropNewest)) a subscription can lose
/// events. [`missed`](Envelope::missed) says how many this subscription lost
/// between the previous envelope it received and this one, so a plain
/// `while let Some(e) = sub.next().await` loop sees every loss without ever
/// being cut short by it.
pub struct Envelope<E> {
    pub(crate) inner: Arc<Published<E>>,
    pub(crate) missed: u64,
    pub(crate) attempt: u32,
}

impl<E> Envelope<E> {
    /// The envelope of an event a subscription delivers: it takes over the
    /// subscription's hold on the event.
    #[inline]
    pub(crate) fn delivered(inner: Arc<Published<E>>, missed: u64) -> Self {
        Envelope {
            inner,
            missed,
            attempt: 1,
        }
    }

    /// An envelope of its own, with a hold of its own.
    pub(crate) fn new(inner: Arc<Published<E>>, missed: u64) -> Self {
        inner.hold();
        Envelope::delivered(inner, missed)
    }

    /// The same envelope for handler attempt `attempt` (one more hold).
    pub(crate) fn for_attempt(&self, attempt: u32) -> Self {
        self.inner.hold();
        Envelope {
            inner: Arc::clone(&self.inner),
            missed: self.missed,
            attempt,
        }
    }
}

/// An envelope is a hold on its event: the last one dropped, once no
/// subscription queues the event any more, runs its `on_done`.
impl<E> Drop for Envelope<E> {
    #[inline]
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl<E: Event> Envelope<E> {
    /// The event.
    pub fn event(&self) -> &E {
        &self.inner.event
    }

    /// The event's process-wide unique id.
    pub fn id(&self) -> EventId {
        self.inner.id
    }

    /// The event's sequence number on its topic: 1 for the first event
    /// published on the topic, then increasing by one per accepted publish.
    pub fn seq(&self) -> u64 {
        self.inner.seq
    }

    /// When the event was accepted by the bus, as its topic's
    /// [`Clock`](crate::Clock) read it (by default the precise wall clock).
    pub fn published_at(&self) -> SystemTime {
        self.inner.at
    }

    /// The event's topic (`E::TOPIC`).
    pub fn topic(&self) -> &'static str {
        E::TOPIC
    }

    /// Whether this event was fed to this subscription again after a
    /// restart by a storage layer (a durable topic): the subscription may
    /// have had it, and may have started handling it, before. Always
    /// `false` on an in-memory topic.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered()
    }

    /// The idempotency key the event was published with
    /// ([`PublishOptions::idempotency_key`](crate::PublishOptions::idempotency_key)),
    /// if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.inner.key()
    }

    /// Where the event came from, if its publisher said
    /// ([`PublishOptions::origin`](crate::PublishOptions::origin)); a bridge
    /// marks the events it imports.
    pub fn origin(&self) -> Option<&str> {
        self.inner.origin()
    }

    /// The event whose handler published this one, if it was published
    /// from a handler of this bus (set automatically), with
    /// [`PublishOptions::follows`](crate::PublishOptions::follows), or
    /// carried across a bridge. `None` for an event nothing caused.
    pub fn caused_by(&self) -> Option<&EventRef> {
        self.inner.cause().map(|c| &c.caused_by)
    }

    /// The root of the chain of events that led to this one: the
    /// `caused_by` of the first event published with no cause. `None` for
    /// a root itself.
    pub fn correlation(&self) -> Option<&EventRef> {
        self.inner.cause().map(|c| &c.correlation)
    }

    /// How events caused by this one name it: its [`EventId`], or the id it
    /// came with from another process.
    pub fn reference(&self) -> EventRef {
        self.inner.reference()
    }

    /// The OpenTelemetry span the event was published in (in this process
    /// or, carried by a bridge, another), if it was published in one. Its
    /// handlers' spans are children of it.
    #[cfg(feature = "opentelemetry")]
    pub fn trace_parent(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.inner.trace_parent()
    }

    /// Which handler attempt this is: 1 for the first run, 2 for the first
    /// retry under a [`RetryPolicy`](crate::RetryPolicy), and so on. Always 1
    /// for a stream subscription.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many events this subscription lost (to its overflow policy) since
    /// the envelope it received before this one. Always 0 under
    /// [`Overflow::Block`](crate::Overflow::Block) and
    /// [`Overflow::Fail`](crate::Overflow::Fail).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The event shared behind its `Arc`, for keeping it beyond the envelope
    /// without cloning `E`.
    pub fn shared(&self) -> SharedEvent<E> {
        SharedEvent(Arc::clone(&self.inner))
    }
}

impl<E> Clone for Envelope<E> {
    fn clone(&self) -> Self {
        self.for_attempt(self.attempt)
    }
}

impl<E> Deref for Envelope<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.inner.event
    }
}

impl<E: fmt::Debug> fmt::Debug for Envelope<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.inner.id)
            .field("seq", &self.inner.seq)
            .field("missed", &self.missed)
            .field("attempt", &self.attempt)
            .field("event", &self.inner.event)
            .finish()
    }
}

/// An event kept beyond its [`Envelope`], still shared rather than cloned.
/// Dereferences to `E`.
pub struct SharedEvent<E>(Arc<Published<E>>);

impl<E> Clone for SharedEvent<E> {
    fn clone(&self) -> Self {
        SharedEvent(Arc::clone(&self.0))
    }
}

impl<E> Deref for SharedEvent<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.0.event
    }
}

impl<E: fmt::Debug> fmt::Debug for SharedEvent<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.event, f)
    }
}
