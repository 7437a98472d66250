//! Error types, one per operation. Each names what went wrong (topic,
//! subscription, capacity); an error for an event that was not published
//! hands the event back ([`PublishError::into_inner`]). Re-exported as
//! `tidings::error`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Overflow;
use crate::id::SubscriptionId;

/// A topic name that breaks the grammar (see [`Topic`](crate::Topic)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_TOPIC_LEN`](crate::MAX_TOPIC_LEN) bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Two dots in a row, or a dot at either end.
    EmptySegment {
        /// The name.
        topic: String,
        /// Which segment is empty, counting from 1.
        segment: usize,
    },
    /// A character outside `a-z`, `0-9`, `_`, `-` and `.`.
    BadChar {
        /// The name.
        topic: String,
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl TopicError {
    pub(crate) fn of(topic: &str, violation: tidings_grammar::Violation) -> Self {
        use tidings_grammar::Violation as V;
        match violation {
            V::Empty => TopicError::Empty,
            V::TooLong { len } => TopicError::TooLong { len },
            V::EmptySegment { segment } => TopicError::EmptySegment {
                topic: topic.to_owned(),
                segment,
            },
            V::BadChar { ch, at } => TopicError::BadChar {
                topic: topic.to_owned(),
                ch,
                at,
            },
        }
    }

    fn violation(&self) -> (&str, tidings_grammar::Violation) {
        use tidings_grammar::Violation as V;
        match self {
            TopicError::Empty => ("", V::Empty),
            TopicError::TooLong { len } => ("", V::TooLong { len: *len }),
            TopicError::EmptySegment { topic, segment } => {
                (topic, V::EmptySegment { segment: *segment })
            }
            TopicError::BadChar { topic, ch, at } => (topic, V::BadChar { ch: *ch, at: *at }),
        }
    }
}

/// The grammar's own words: the same message the derive gives at compile
/// time.
impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (topic, violation) = self.violation();
        write!(f, "{}", violation.describe(topic))
    }
}

impl std::error::Error for TopicError {}

/// Why [`BusBuilder::build`](crate::BusBuilder::build) refused the allow-list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two Rust types claim the same topic.
    #[error("topic `{topic}` is claimed by two types: `{first}` and `{second}`")]
    TopicConflict {
        /// The topic.
        topic: &'static str,
        /// The type registered first.
        first: &'static str,
        /// The type registered second.
        second: &'static str,
    },
    /// One type registered twice with different [`TopicConfig`](crate::TopicConfig)s.
    #[error("topic `{topic}` is registered twice with different configurations")]
    ConfigConflict {
        /// The topic.
        topic: &'static str,
    },
    /// A hand-written [`Event`](crate::Event) impl has a topic that breaks the grammar.
    #[error("type `{type_name}` has an invalid topic: {source}")]
    InvalidTopic {
        /// The Rust type.
        type_name: &'static str,
        /// What is wrong with the topic.
        #[source]
        source: TopicError,
    },
    /// A [`TopicConfig`](crate::TopicConfig) with capacity 0.
    #[error(
        "topic `{topic}` is configured with capacity 0; a queue needs room for at least one event"
    )]
    ZeroCapacity {
        /// The topic.
        topic: &'static str,
    },
    /// A worker pool was given 0 workers, or more than
    /// [`MAX_WORKERS`](crate::MAX_WORKERS).
    #[error("the {pool} worker pool was given {workers} workers; it takes 1 to {max}")]
    Workers {
        /// The pool.
        pool: crate::config::WorkerPool,
        /// What it was given.
        workers: usize,
        /// The most it takes.
        max: usize,
    },
    /// [`BusBuilder::cpu_worker_nice`](crate::BusBuilder::cpu_worker_nice)
    /// above [`MAX_NICE`](crate::MAX_NICE).
    #[error("the CPU pool's workers were given nice {nice}; it takes 0 to {max}")]
    WorkerNice {
        /// What it was given.
        nice: u8,
        /// The most it takes.
        max: u8,
    },
}

/// Why an event was not published, with the event handed back
/// ([`into_inner`](PublishError::into_inner)), as tokio's `SendError<T>`
/// hands back its value. The reason is a [`Refusal`].
///
/// `Debug` does not need `E: Debug`.
///
/// ```
/// # use tidings::{Bus, Event, Overflow};
/// # use tidings::error::Refusal;
/// # #[derive(Event)] #[event(topic = "ticks")] struct Tick(u64);
/// let bus = Bus::builder().topic::<Tick>().build()?;
/// let _strict = bus.subscribe::<Tick>().name("strict").capacity(1).overflow(Overflow::Fail).stream()?;
/// bus.try_publish(Tick(1))?;
/// let err = bus.try_publish(Tick(2)).unwrap_err();
/// assert!(matches!(err.reason(), Refusal::Full { subscription, .. } if &**subscription == "strict"));
/// assert_eq!(err.to_string(), "subscription `strict` on topic `ticks` is full (1 events, policy fail); nothing was enqueued");
/// let retry_later: Tick = err.into_inner(); // nothing is lost
/// assert_eq!(retry_later.0, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PublishError<E> {
    reason: Refusal,
    event: E,
}

/// Why a publish was refused: the reason of a [`PublishError`]. Nothing
/// was enqueued anywhere in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The event's topic is not on this bus's allow-list.
    #[error("topic `{topic}` is not registered on this bus")]
    UnknownTopic {
        /// The topic.
        topic: &'static str,
    },
    /// The bus is shut down (or shutting down, and the publish was not made
    /// by one of its handlers).
    #[error("the bus is shut down; the event on topic `{topic}` was not published")]
    Closed {
        /// The topic.
        topic: &'static str,
    },
    /// A subscription had no room and publishing could not wait: its policy is
    /// [`Overflow::Fail`], or it is [`Overflow::Block`] and the call was
    /// [`try_publish`](crate::Bus::try_publish).
    #[error("subscription `{subscription}` on topic `{topic}` is full ({capacity} events, policy {policy}); nothing was enqueued")]
    Full {
        /// The topic.
        topic: &'static str,
        /// The full subscription's name.
        subscription: Arc<str>,
        /// The full subscription's id.
        id: SubscriptionId,
        /// Its capacity.
        capacity: usize,
        /// Its overflow policy.
        policy: Overflow,
    },
    /// [`publish_timeout`](crate::Bus::publish_timeout) waited its whole
    /// time for room.
    #[error("timed out after {waited:?} waiting for room in subscription `{subscription}` on topic `{topic}` ({capacity} events); nothing was enqueued")]
    Timeout {
        /// The topic.
        topic: &'static str,
        /// The subscription that was still full.
        subscription: Arc<str>,
        /// Its id.
        id: SubscriptionId,
        /// Its capacity.
        capacity: usize,
        /// How long the call waited.
        waited: Duration,
    },
    /// The idempotency key (or its scope) is empty, too long for the
    /// topic's [`DedupWindow`](crate::DedupWindow), or holds a control
    /// character.
    #[error("{problem} (topic `{topic}`, key \"{key}\"); nothing was enqueued")]
    InvalidKey {
        /// The topic.
        topic: &'static str,
        /// The key, its first 64 characters, escaped.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The topic is fed by a storage layer
    /// ([`TopicConfig::fed_by`](crate::TopicConfig::fed_by)): its events
    /// are published through that layer (a durable topic's store), never
    /// through the bus directly.
    #[error("topic `{topic}` is fed by {owner}: publish through it, not through the bus; nothing was enqueued")]
    Fed {
        /// The topic.
        topic: &'static str,
        /// The storage layer that owns it.
        owner: &'static str,
    },
}

impl Refusal {
    /// The topic the event was for.
    pub fn topic(&self) -> &'static str {
        match self {
            Refusal::UnknownTopic { topic }
            | Refusal::Closed { topic }
            | Refusal::Full { topic, .. }
            | Refusal::Timeout { topic, .. }
            | Refusal::InvalidKey { topic, .. }
            | Refusal::Fed { topic, .. } => topic,
        }
    }
}

impl<E> PublishError<E> {
    pub(crate) fn new(reason: Refusal, event: E) -> Self {
        PublishError { reason, event }
    }

    /// Why it was refused.
    pub fn reason(&self) -> &Refusal {
        &self.reason
    }

    /// The event that was not published.
    pub fn into_inner(self) -> E {
        self.event
    }

    /// The reason and the event.
    pub fn into_parts(self) -> (Refusal, E) {
        (self.reason, self.event)
    }

    /// A reference to the event that was not published.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The topic the event was for.
    pub fn topic(&self) -> &'static str {
        self.reason.topic()
    }

    /// The same error with the event passed through `f` (to hand back a
    /// type-erased event, say).
    pub fn map_event<F>(self, f: impl FnOnce(E) -> F) -> PublishError<F> {
        PublishError {
            reason: self.reason,
            event: f(self.event),
        }
    }
}

impl<E> fmt::Display for PublishError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reason, f)
    }
}

impl<E> fmt::Debug for PublishError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishError")
            .field("reason", &self.reason)
            .field("event", &format_args!("<{}>", std::any::type_name::<E>()))
            .finish()
    }
}

/// Its `Display` is the reason's, so it has no source of its own.
impl<E> std::error::Error for PublishError<E> {}

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The event's topic is not on this bus's allow-list.
    #[error("topic `{topic}` is not registered on this bus")]
    UnknownTopic {
        /// The topic.
        topic: &'static str,
    },
    /// A wildcard pattern matches no topic on the allow-list: the
    /// subscription would never receive anything.
    #[error(
        "pattern `{pattern}` matches no topic registered on this bus (registered: {registered})"
    )]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// The registered topics, comma-separated.
        registered: String,
    },
    /// A wildcard pattern is not well formed.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The subscription asked to start before the live end
    /// ([`StartAt`](crate::StartAt)) on a topic that retains nothing.
    #[error("topic `{topic}` retains no events, so a subscription cannot start at {start}; configure TopicConfig::retain")]
    NotRetained {
        /// The topic.
        topic: &'static str,
        /// Where the subscription asked to start.
        start: crate::config::StartAt,
    },
    /// The subscription asked to start at a sequence number the topic has
    /// not reached.
    #[error("subscription to topic `{topic}` asked to start at seq {requested}, but the next event will be seq {next}")]
    SeqAhead {
        /// The topic.
        topic: &'static str,
        /// The sequence number asked for.
        requested: u64,
        /// The sequence number the next event will get.
        next: u64,
    },
    /// A retry policy allows no attempt at all.
    #[error("subscription to topic `{topic}` has a retry policy of 0 attempts; the handler must run at least once")]
    ZeroAttempts {
        /// The topic.
        topic: &'static str,
    },
    /// A circuit breaker that opens after 0 failures would never close.
    #[error("subscription to topic `{topic}` has a circuit breaker that opens after 0 failures")]
    ZeroBreakerThreshold {
        /// The topic.
        topic: &'static str,
    },
    /// `capacity(0)`: a queue needs room for at least one event.
    #[error("subscription to topic `{topic}` asked for capacity 0; a queue needs room for at least one event")]
    ZeroCapacity {
        /// The topic.
        topic: &'static str,
    },
    /// `concurrency(0)`: a handler needs at least one runner.
    #[error("subscription to topic `{topic}` asked for concurrency 0; a handler needs at least one runner")]
    ZeroConcurrency {
        /// The topic.
        topic: &'static str,
    },
    /// `concurrency(n)` beyond [`MAX_CONCURRENCY`](crate::MAX_CONCURRENCY).
    #[error("subscription to topic `{topic}` asked for concurrency {concurrency}; the most is {max} runners")]
    ConcurrencyTooHigh {
        /// The topic.
        topic: &'static str,
        /// The concurrency asked for.
        concurrency: usize,
        /// The most allowed.
        max: usize,
    },
    /// Another subscription of the topic (current, or unsubscribed and still
    /// draining) has this name: their stats and metric labels would merge.
    #[error(
        "topic `{topic}` already has a subscription named `{name}`; names are unique per topic"
    )]
    NameTaken {
        /// The topic.
        topic: &'static str,
        /// The name.
        name: String,
    },
    /// The topic is fed by a storage layer
    /// ([`TopicConfig::fed_by`](crate::TopicConfig::fed_by)): only that
    /// layer subscribes to it (a durable topic: subscribe through its
    /// store, so that the subscription has a cursor).
    #[error("topic `{topic}` is fed by {owner}: subscribe through it, not through the bus")]
    Fed {
        /// The topic.
        topic: &'static str,
        /// The storage layer that owns it.
        owner: &'static str,
    },
    /// A storage layer tried to feed a subscription of a topic it was not
    /// handed ([`TopicConfig::fed_by`](crate::TopicConfig::fed_by)).
    #[error(
        "topic `{topic}` is not fed by a storage layer; a fed subscription cannot attach to it"
    )]
    NotFed {
        /// The topic.
        topic: &'static str,
    },
    /// The bus is shut down (or shutting down).
    #[error("the bus is shut down; cannot subscribe to topic `{topic}`")]
    Closed {
        /// The topic.
        topic: &'static str,
    },
    /// An async handler was subscribed outside a tokio runtime.
    #[error(
        "an async handler for topic `{topic}` needs a tokio runtime; subscribe from within one"
    )]
    NoRuntime {
        /// The topic.
        topic: &'static str,
    },
    /// The operating system refused a thread for a sync handler.
    #[error("could not start a handler thread for topic `{topic}`: {source}")]
    Spawn {
        /// The topic.
        topic: &'static str,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// `E`'s topic is not on the bus's allow-list; returned by [`Bus::publisher`](crate::Bus::publisher).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic `{topic}` is not registered on this bus")]
pub struct UnknownTopic {
    /// The topic.
    pub topic: &'static str,
}

/// Why [`Subscription::try_recv`](crate::Subscription::try_recv) returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// The queue is empty for now.
    #[error("the subscription's queue is empty")]
    Empty,
    /// The subscription is closed and its queue is drained: no event will come.
    #[error("the subscription is closed and drained")]
    Closed,
}

/// A malformed topic pattern (see [`Pattern`](crate::Pattern)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A segment breaks the topic grammar.
    #[error("pattern `{pattern}` is invalid: {source}")]
    Grammar {
        /// The pattern.
        pattern: String,
        /// What is wrong, as for a topic.
        source: TopicError,
    },
    /// `>` stands for the rest of a topic, so it can only be the last segment.
    #[error("pattern `{pattern}` has `>` before its last segment; `>` matches the rest of a topic and must come last")]
    TailNotLast {
        /// The pattern.
        pattern: String,
    },
}

/// Why bytes could not be turned into an event
/// ([`Bus::deserialize_event`](crate::Bus::deserialize_event)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The topic is not on this bus's allow-list.
    #[error("topic `{topic}` is not registered on this bus")]
    UnknownTopic {
        /// The topic as received.
        topic: String,
    },
    /// The topic's event type has no codec (it is not marked
    /// `#[event(serde)]`).
    #[error("topic `{topic}` (type `{type_name}`) is not deserializable: derive Serialize and Deserialize and add #[event(serde)]")]
    NoCodec {
        /// The topic.
        topic: &'static str,
        /// Its event type.
        type_name: &'static str,
    },
    /// The payload does not deserialize as the topic's type.
    #[error("payload for topic `{topic}` does not deserialize as `{type_name}`: {message}")]
    Payload {
        /// The topic.
        topic: &'static str,
        /// Its event type.
        type_name: &'static str,
        /// The format's error message.
        message: String,
    },
}
