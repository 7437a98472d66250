//! Wildcard subscriptions: [`PatternBuilder`] and [`PatternSubscription`],
//! one typed subscription per matching topic under the hood, read as
//! [`AnyEvent`]s.

use std::any::Any;
use std::fmt;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::SelectAll;
use futures::Stream;

use super::{SubscribeBuilder, Subscription};
use crate::any::AnyEvent;
use crate::config::Overflow;
use crate::errors::SubscribeError;
use crate::event::Event;
use crate::name::Pattern;
use crate::topic::TopicState;

/// One topic's part of a wildcard subscription.
pub(crate) type AnyStream = Box<dyn AnyPart>;

/// A subscription whose events come out type-erased.
pub(crate) trait AnyPart: Stream<Item = AnyEvent> + Send + Unpin {
    /// Stops taking new events; what is queued still comes.
    fn close(&mut self);
    /// Takes back a part whose wildcard subscription was refused on another
    /// topic: as if it had never been made.
    fn withdraw(self: Box<Self>);
}

impl<E: Event> AnyPart for Erased<E> {
    fn close(&mut self) {
        self.0.close();
    }

    fn withdraw(self: Box<Self>) {
        self.0.withdraw();
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

/// Makes the part of a wildcard subscription that reads one topic: stored
/// per topic when it is registered, so that the topic core never needs to
/// know about subscriptions (a hook going down, not a call going up).
pub(crate) type PartFn =
    fn(&Arc<dyn Any + Send + Sync>, &AnyOptions) -> Result<AnyStream, SubscribeError>;

/// The [`PartFn`] of `E`'s topic; `state` is its `TopicState<E>`.
pub(crate) fn part<E: Event>(
    state: &Arc<dyn Any + Send + Sync>,
    options: &AnyOptions,
) -> Result<AnyStream, SubscribeError> {
    let state = Arc::clone(state)
        .downcast::<TopicState<E>>()
        .map_err(|_| SubscribeError::UnknownTopic { topic: E::TOPIC })?;
    let sub = options.apply(SubscribeBuilder::new(Some(state), None))?;
    Ok(Box::new(Erased(sub)))
}

/// One registered topic a wildcard subscription matched.
pub(crate) struct Matched {
    pub(crate) name: &'static str,
    pub(crate) state: Arc<dyn Any + Send + Sync>,
    pub(crate) part: PartFn,
}

/// The settings a wildcard subscription applies to each matching topic.
pub(crate) struct AnyOptions {
    /// The name the application gave, if it did.
    name: Option<String>,
    /// The pattern and the call site, made unique per topic like any
    /// default name.
    default_name: String,
    capacity: Option<usize>,
    overflow: Option<Overflow>,
    caller: &'static Location<'static>,
}

impl AnyOptions {
    fn apply<E: Event>(
        &self,
        builder: SubscribeBuilder<E>,
    ) -> Result<Subscription<E>, SubscribeError> {
        let mut builder = match &self.name {
            Some(name) => builder.name(name.clone()),
            None => builder.default_name(self.default_name.clone()),
        };
        if let Some(capacity) = self.capacity {
            builder = builder.capacity(capacity);
        }
        if let Some(overflow) = self.overflow {
            builder = builder.overflow(overflow);
        }
        builder.stream_at(self.caller)
    }
}

/// Sets up a wildcard subscription; made by
/// [`Bus::subscribe_pattern`](crate::Bus::subscribe_pattern). Finish it
/// with [`stream`](PatternBuilder::stream).
#[must_use = "a pattern builder does nothing until finished with .stream()"]
pub struct PatternBuilder {
    pattern: String,
    /// The topics it matched, or why it cannot be made.
    matched: Result<(Pattern, Vec<Matched>), SubscribeError>,
    name: Option<String>,
    capacity: Option<usize>,
    overflow: Option<Overflow>,
}

impl PatternBuilder {
    pub(crate) fn new(
        pattern: String,
        matched: Result<(Pattern, Vec<Matched>), SubscribeError>,
    ) -> Self {
        PatternBuilder {
            pattern,
            matched,
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

    /// Subscribes to every registered topic the pattern matched, checked
    /// against the allow-list.
    ///
    /// # Errors
    /// [`SubscribeError::Pattern`] for a malformed pattern,
    /// [`SubscribeError::NoMatch`] when it matches no registered topic, and
    /// what [`SubscribeBuilder::stream`] can return for any matching topic.
    #[track_caller]
    pub fn stream(self) -> Result<PatternSubscription, SubscribeError> {
        let caller = Location::caller();
        let (pattern, matched) = self.matched?;
        let options = AnyOptions {
            name: self.name,
            default_name: format!("{}@{}:{}", self.pattern, caller.file(), caller.line()),
            capacity: self.capacity,
            overflow: self.overflow,
            caller,
        };
        let mut made = Vec::with_capacity(matched.len());
        let mut topics = Vec::with_capacity(matched.len());
        for topic in matched {
            match (topic.part)(&topic.state, &options) {
                Ok(part) => made.push(part),
                Err(err) => {
                    // Refused: the parts made so far are taken back, and
                    // no topic counts them as unsubscribed.
                    made.into_iter().for_each(AnyPart::withdraw);
                    return Err(err);
                }
            }
            topics.push(topic.name);
        }
        Ok(PatternSubscription {
            pattern,
            topics,
            parts: made.into_iter().collect::<SelectAll<_>>(),
        })
    }
}

impl std::fmt::Debug for PatternBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternBuilder")
            .field("pattern", &self.pattern)
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
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
