//! Type-erased events: [`AnyEvent`] (an accepted event of any topic, as
//! wildcard subscriptions and dead letters carry it) and [`DynEvent`] (an
//! event of any registered topic made from bytes, not yet published).
//!
//! Serialization is opt-in per type: `#[derive(Event, Serialize,
//! Deserialize)]` plus `#[event(serde)]` (and the crate feature `serde`).
//! The bus looks codecs up by topic name in its own allow-list, so only
//! registered topics can be decoded; any serde format works (JSON, CBOR,
//! bincode, …), through `erased-serde`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::codec::Codec;
use crate::event::Event;
use crate::event::{Envelope, Published};
use crate::id::{Cause, EventId, EventRef};

/// What type erasure needs of an accepted event.
pub(crate) trait ErasedPublished: Send + Sync {
    fn topic(&self) -> &'static str;
    fn type_name(&self) -> &'static str;
    fn id(&self) -> EventId;
    fn seq(&self) -> u64;
    fn at(&self) -> SystemTime;
    fn key(&self) -> Option<&str>;
    fn origin(&self) -> Option<&str>;
    fn cause(&self) -> Option<&Cause>;
    fn reference(&self) -> EventRef;
    fn cause_of_follow_ups(&self) -> Cause;
    #[cfg(feature = "opentelemetry")]
    fn trace_parent(&self) -> Option<&opentelemetry::trace::SpanContext>;
    fn event(&self) -> &(dyn Any + Send + Sync);
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn codec(&self) -> Option<Codec>;
    /// One more hold on the event (see `Done`).
    fn hold(&self);
    /// Releases one hold.
    fn release(&self);
}

impl<E: Event> ErasedPublished for Published<E> {
    fn topic(&self) -> &'static str {
        E::TOPIC
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<E>()
    }
    fn id(&self) -> EventId {
        self.id
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn at(&self) -> SystemTime {
        self.at
    }
    fn key(&self) -> Option<&str> {
        Published::key(self)
    }
    fn origin(&self) -> Option<&str> {
        Published::origin(self)
    }
    fn cause(&self) -> Option<&Cause> {
        Published::cause(self)
    }
    fn reference(&self) -> EventRef {
        Published::reference(self)
    }
    fn cause_of_follow_ups(&self) -> Cause {
        Published::cause_of_follow_ups(self)
    }
    #[cfg(feature = "opentelemetry")]
    fn trace_parent(&self) -> Option<&opentelemetry::trace::SpanContext> {
        Published::trace_parent(self)
    }
    fn event(&self) -> &(dyn Any + Send + Sync) {
        &self.event
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn codec(&self) -> Option<Codec> {
        E::__codec()
    }
    fn hold(&self) {
        Published::hold(self);
    }
    fn release(&self) {
        Published::release(self);
    }
}

/// An accepted event of any topic with its metadata: what
/// [wildcard subscriptions](crate::Bus::subscribe_pattern) yield and what a
/// [`DeadLetter`](crate::DeadLetter) carries. The event itself is shared,
/// never cloned; [`downcast`](AnyEvent::downcast) gives back the typed
/// [`Envelope`].
///
/// ```
/// # use tidings::{AnyEvent, Bus, Event};
/// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut orders = bus.subscribe_pattern("orders.*").stream()?;
/// bus.publish(OrderCreated { id: 7 }).await?;
/// let any: AnyEvent = orders.recv().await.expect("subscribed");
/// assert_eq!((any.topic(), any.seq()), ("orders.created", 1));
/// assert_eq!(any.downcast_ref::<OrderCreated>().map(|o| o.id), Some(7));
/// # Ok(()) }
/// ```
pub struct AnyEvent {
    inner: Arc<dyn ErasedPublished>,
    missed: u64,
    /// Whether it holds its event (see `Done`): a delivery to a wildcard
    /// subscription does, the copy a dead letter keeps does not.
    held: bool,
}

impl Clone for AnyEvent {
    fn clone(&self) -> Self {
        if self.held {
            self.inner.hold();
        }
        AnyEvent {
            inner: Arc::clone(&self.inner),
            missed: self.missed,
            held: self.held,
        }
    }
}

impl Drop for AnyEvent {
    fn drop(&mut self) {
        if self.held {
            self.inner.release();
        }
    }
}

impl AnyEvent {
    /// `held`: it took a hold on its event.
    pub(crate) fn new(inner: Arc<dyn ErasedPublished>, missed: u64, held: bool) -> Self {
        AnyEvent {
            inner,
            missed,
            held,
        }
    }

    /// The event's topic.
    pub fn topic(&self) -> &'static str {
        self.inner.topic()
    }

    /// The Rust type registered for the topic, as `std::any::type_name`
    /// gives it.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    /// The event's process-wide unique id.
    pub fn id(&self) -> EventId {
        self.inner.id()
    }

    /// The event's sequence number on its topic.
    pub fn seq(&self) -> u64 {
        self.inner.seq()
    }

    /// When the event was accepted by the bus, as its topic's
    /// [`Clock`](crate::Clock) read it.
    pub fn published_at(&self) -> SystemTime {
        self.inner.at()
    }

    /// The idempotency key it was published with, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.inner.key()
    }

    /// Where the event came from, if its publisher said.
    pub fn origin(&self) -> Option<&str> {
        self.inner.origin()
    }

    /// What caused it, as [`Envelope::caused_by`].
    pub fn caused_by(&self) -> Option<&EventRef> {
        self.inner.cause().map(|c| &c.caused_by)
    }

    /// The root of its chain, as [`Envelope::correlation`].
    pub fn correlation(&self) -> Option<&EventRef> {
        self.inner.cause().map(|c| &c.correlation)
    }

    /// How events caused by it name it, as [`Envelope::reference`].
    pub fn reference(&self) -> EventRef {
        self.inner.reference()
    }

    /// The cause of an event published because of this one.
    pub(crate) fn cause_of_follow_ups(&self) -> Cause {
        self.inner.cause_of_follow_ups()
    }

    /// The OpenTelemetry span it was published in, as
    /// [`Envelope::trace_parent`].
    #[cfg(feature = "opentelemetry")]
    pub fn trace_parent(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.inner.trace_parent()
    }

    /// Events the subscription lost just before this one, as
    /// [`Envelope::missed`].
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Whether the event is an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.inner.event().is::<E>()
    }

    /// The event as an `E`, if it is one.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        self.inner.event().downcast_ref()
    }

    /// The typed envelope, if the event is an `E`; the `AnyEvent` back if not.
    ///
    /// # Errors
    /// The `AnyEvent` itself, when the event is not an `E`.
    pub fn downcast<E: Event>(self) -> Result<Envelope<E>, AnyEvent> {
        if !self.is::<E>() {
            return Err(self);
        }
        let missed = self.missed;
        match Arc::clone(&self.inner)
            .into_any()
            .downcast::<Published<E>>()
        {
            Ok(inner) => Ok(Envelope::new(inner, missed)),
            Err(_) => Err(self),
        }
    }

    /// Whether the event's type can be serialized (it derives `Serialize`
    /// and `Deserialize` and is marked `#[event(serde)]`).
    pub fn is_serializable(&self) -> bool {
        self.inner.codec().is_some()
    }
}

impl fmt::Debug for AnyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEvent")
            .field("topic", &self.topic())
            .field("id", &self.id())
            .field("seq", &self.seq())
            .field("missed", &self.missed)
            .field("type", &self.type_name())
            .finish()
    }
}

/// Serializes the event itself (not its metadata) in any serde format.
/// Fails, naming the topic and type, for an event type without a codec.
#[cfg(feature = "serde")]
impl serde::Serialize for AnyEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let no_codec = || {
            <S::Error as serde::ser::Error>::custom(format_args!(
                "event type `{}` of topic `{}` is not serializable: derive Serialize and Deserialize and add #[event(serde)]",
                self.type_name(),
                self.topic()
            ))
        };
        let codec = self.inner.codec().ok_or_else(no_codec)?;
        let value = (codec.serialize)(self.inner.event()).ok_or_else(no_codec)?;
        erased_serde::serialize(value, serializer)
    }
}

/// An event of a registered topic that has not been published: what
/// [`Bus::deserialize_event`](crate::Bus::deserialize_event) makes from
/// bytes. Publish it with [`Bus::publish_dyn`](crate::Bus::publish_dyn) or
/// take the typed event out with [`downcast`](DynEvent::downcast).
pub struct DynEvent {
    pub(crate) topic: &'static str,
    pub(crate) type_name: &'static str,
    pub(crate) event: Box<dyn Any + Send + Sync>,
}

impl DynEvent {
    /// Wraps a typed event.
    pub fn new<E: Event>(event: E) -> Self {
        DynEvent {
            topic: E::TOPIC,
            type_name: std::any::type_name::<E>(),
            event: Box::new(event),
        }
    }

    /// The event's topic.
    pub fn topic(&self) -> &'static str {
        self.topic
    }

    /// The Rust type registered for the topic, as `std::any::type_name`
    /// gives it.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The event as an `E`, if it is one.
    ///
    /// # Errors
    /// The `DynEvent` itself, when the event is not an `E`.
    pub fn downcast<E: Event>(self) -> Result<E, DynEvent> {
        let DynEvent {
            topic,
            type_name,
            event,
        } = self;
        event.downcast::<E>().map(|e| *e).map_err(|event| DynEvent {
            topic,
            type_name,
            event,
        })
    }
}

impl fmt::Debug for DynEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynEvent")
            .field("topic", &self.topic)
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

impl<E: Event> Envelope<E> {
    /// The same event, type-erased (for code that handles many topics). It
    /// holds the event as the envelope does: `on_done` waits for it too.
    pub fn erase(&self) -> AnyEvent {
        self.inner.hold();
        AnyEvent::new(
            Arc::clone(&self.inner) as Arc<dyn ErasedPublished>,
            self.missed,
            true,
        )
    }

    /// A copy of the event for a log (a dead letter): it does not hold the
    /// event, so `on_done` does not wait for it.
    pub(crate) fn copy_for_log(&self) -> AnyEvent {
        AnyEvent::new(
            Arc::clone(&self.inner) as Arc<dyn ErasedPublished>,
            self.missed,
            false,
        )
    }
}
