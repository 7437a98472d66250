//! Subscriptions fed by a storage layer instead of by the bus's publishes:
//! what durable topics (the `tidings-durable` crate) are built on.
//!
//! A storage layer hands a topic over with
//! [`TopicConfig::fed_by`](crate::TopicConfig::fed_by); from then on
//! publishes through the bus are refused and only fed subscriptions attach.
//! It subscribes with [`SubscribeBuilder::fed`](crate::SubscribeBuilder::fed),
//! finishing the builder as any other (`.stream()`, `.handler(..)`,
//! `.sync(..)`, with every setting of a handler), and gets a [`Feed`]: the
//! subscription's queue, which it fills one event at a time at its own
//! pace, waiting for room. Each event it offers carries a callback told how
//! the subscription settled it ([`Settled`]): handled, dead-lettered, read
//! by a stream, or not at all (cut off at a shutdown deadline, discarded,
//! a run cancelled), which is what the layer commits.
//!
//! A fed subscription keeps every guarantee of an ordinary one (stats,
//! retries, dead letters, breaker, shutdown drain), and the accounting
//! identities hold with `accepted` counting what was offered.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::OnDone;
pub use crate::config::{Settled, Settlement};
use crate::event::{Done, Event, Meta, Published};
use crate::id::{EventId, SubscriptionId};
use crate::stats::SubscriptionStats;
use crate::topic::{Offered, SubscriptionState, TopicState};

/// Where a fed subscription's [`Feed`] goes once it attaches: given to
/// [`SubscribeBuilder::fed`](crate::SubscribeBuilder::fed).
pub struct FeedSlot<E: Event> {
    tx: tokio::sync::oneshot::Sender<Feed<E>>,
}

/// The other end of a [`FeedSlot`]: yields the [`Feed`] once the
/// subscription attached, or `None` if it never did (refused, or the
/// builder dropped).
pub struct PendingFeed<E: Event> {
    rx: tokio::sync::oneshot::Receiver<Feed<E>>,
}

/// A new slot and its pending feed.
pub fn slot<E: Event>() -> (FeedSlot<E>, PendingFeed<E>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (FeedSlot { tx }, PendingFeed { rx })
}

impl<E: Event> FeedSlot<E> {
    pub(crate) fn fill(self, topic: Arc<TopicState<E>>, subscription: Arc<SubscriptionState<E>>) {
        // The feeder gave up waiting: the subscription simply gets nothing.
        let _ = self.tx.send(Feed {
            topic,
            subscription,
        });
    }
}

impl<E: Event> PendingFeed<E> {
    /// The feed, once the subscription attached; `None` if it never will.
    pub async fn attached(self) -> Option<Feed<E>> {
        self.rx.await.ok()
    }

    /// The feed if the subscription attached already.
    pub fn try_attached(&mut self) -> Option<Feed<E>> {
        self.rx.try_recv().ok()
    }
}

/// One event offered to a fed subscription, with its sequence number in
/// the store, its publish time and key, and the callback that learns how
/// the subscription settled it.
pub struct Fed<E> {
    event: E,
    seq: u64,
    at: SystemTime,
    key: Option<Arc<str>>,
    redelivered: bool,
    on_done: Option<Box<dyn FnOnce(Settlement) + Send>>,
}

impl<E> Fed<E> {
    /// `event`, number `seq` in its store, published at `at`.
    pub fn new(event: E, seq: u64, at: SystemTime) -> Self {
        Fed {
            event,
            seq,
            at,
            key: None,
            redelivered: false,
            on_done: None,
        }
    }

    /// The idempotency key it was published with.
    pub fn key(mut self, key: Option<Arc<str>>) -> Self {
        self.key = key;
        self
    }

    /// Marks it as fed again after a restart
    /// ([`Envelope::redelivered`](crate::Envelope::redelivered)).
    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// Runs `f` once the subscription is done with the event: with how it
    /// settled it ([`Settlement::how`]; `None` if it let go of it
    /// unsettled) and, for a dead letter, why. Runs outside
    /// every lock of the bus; a panic in it is caught and counted
    /// ([`TopicStats::callback_panics`](crate::TopicStats::callback_panics)).
    pub fn on_done(mut self, f: impl FnOnce(Settlement) + Send + 'static) -> Self {
        self.on_done = Some(Box::new(f));
        self
    }
}

/// The queue of one fed subscription, for its storage layer to fill.
pub struct Feed<E: Event> {
    topic: Arc<TopicState<E>>,
    subscription: Arc<SubscriptionState<E>>,
}

/// Why an offer was not taken: the subscription left, or the bus drains or
/// is shut down. The event's `on_done` ran with `how: None`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the fed subscription `{subscription}` on topic `{topic}` takes no more events")]
pub struct FeedClosed {
    /// The topic.
    pub topic: &'static str,
    /// The subscription's id.
    pub subscription: SubscriptionId,
}

impl<E: Event> Feed<E> {
    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.subscription.info.name
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.subscription.info.id
    }

    /// The subscription's queue capacity.
    pub fn capacity(&self) -> usize {
        self.subscription.info.capacity
    }

    /// The subscription's numbers.
    pub fn stats(&self) -> SubscriptionStats {
        self.topic.sub_stats(&self.subscription)
    }

    /// Queues `fed` for the subscription, waiting while its queue is full.
    /// Cancel safe in the sense that matters: dropping the future before it
    /// completes queues nothing (and runs the event's `on_done` with
    /// `None`).
    ///
    /// # Errors
    /// [`FeedClosed`] when the subscription takes no more events.
    pub async fn offer(&self, fed: Fed<E>) -> Result<(), FeedClosed> {
        let Fed {
            event,
            seq,
            at,
            key,
            redelivered,
            on_done,
        } = fed;
        let done = on_done.map(|f| {
            Arc::new(Done::new(
                Arc::new(OnDone::settled(f)),
                Arc::clone(self.topic.callbacks()),
            ))
        });
        let published = Arc::new(Published {
            event,
            id: EventId::next(),
            seq,
            at,
            meta: Some(Box::new(Meta {
                key,
                origin: None,
                done,
                cause: None,
                remote: None,
                #[cfg(feature = "opentelemetry")]
                parent: None,
                redelivered,
            })),
        });
        // The feeder's own hold, released whatever happens (so that an
        // event never taken is told `None`).
        let release = Release(&published);
        let offered = poll_fn(|cx| self.topic.poll_offer(&self.subscription, &published, cx)).await;
        drop(release);
        match offered {
            Offered::Queued => Ok(()),
            Offered::Closed => Err(FeedClosed {
                topic: E::TOPIC,
                subscription: self.subscription.info.id,
            }),
        }
    }
}

/// Releases the feeder's hold on an offered event when dropped.
struct Release<'a, E>(&'a Arc<Published<E>>);

impl<E> Drop for Release<'_, E> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<E: Event> std::fmt::Debug for Feed<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("topic", &E::TOPIC)
            .field("subscription", &self.subscription.info.name)
            .finish()
    }
}

impl<E: Event> std::fmt::Debug for FeedSlot<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSlot")
            .field("topic", &E::TOPIC)
            .finish()
    }
}

impl<E: Event> std::fmt::Debug for PendingFeed<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFeed")
            .field("topic", &E::TOPIC)
            .finish()
    }
}

impl<E> std::fmt::Debug for Fed<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fed")
            .field("seq", &self.seq)
            .field("key", &self.key)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}
