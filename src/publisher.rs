//! The typed [`Publisher`] handle: a topic resolved once.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::PublishOptions;
use crate::errors::PublishError;
use crate::event::Event;
use crate::receipt::PublishReceipt;
use crate::stats::SubscriptionStats;
use crate::topic::{ErasedTopic, TopicState};

/// A typed handle for publishing one event type, resolved once: no allow-list
/// look-up per publish. Cheap to clone; get one with
/// [`Bus::publisher`](crate::Bus::publisher).
///
/// ```
/// # use tidings::{Bus, Event};
/// # #[derive(Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut sub = bus.subscribe::<OrderCreated>().stream()?;
/// let orders = bus.publisher::<OrderCreated>()?;
/// let receipt = orders.publish(OrderCreated { id: 7 }).await?;
/// assert_eq!(receipt.enqueued, 1);
/// assert_eq!(sub.recv().await.map(|e| e.id), Some(7));
/// # Ok(()) }
/// ```
pub struct Publisher<E> {
    pub(crate) topic: Arc<TopicState<E>>,
}

impl<E: Event> Publisher<E> {
    /// Publishes `event` to every subscription of its topic, waiting for room
    /// in full [`Overflow::Block`](crate::Overflow::Block) subscriptions.
    ///
    /// All or nothing: the event is enqueued to every subscription or to none.
    /// Dropping the returned future before it completes enqueues nothing.
    ///
    /// # Errors
    /// [`Refusal::Closed`](crate::error::Refusal::Closed) after shutdown began; [`Refusal::Full`](crate::error::Refusal::Full)
    /// when an [`Overflow::Fail`](crate::Overflow::Fail) subscription is full. The event is handed
    /// back in both.
    // The topic's own future, not one wrapped around it: a layer fewer to
    // poll and to move the receipt through on every publish.
    #[allow(clippy::manual_async_fn)]
    pub fn publish(
        &self,
        event: E,
    ) -> impl Future<Output = Result<PublishReceipt, PublishError<E>>> + Send + '_ {
        self.topic.publish(event, &PublishOptions::PLAIN)
    }

    /// Publishes `event` without ever waiting.
    ///
    /// # Errors
    /// As [`publish`](Publisher::publish), and [`Refusal::Full`](crate::error::Refusal::Full) where
    /// `publish` would wait.
    pub fn try_publish(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.try_publish(event, &PublishOptions::PLAIN)
    }

    /// Publishes `event`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`publish`](Publisher::publish), and [`Refusal::Timeout`](crate::error::Refusal::Timeout) when
    /// no room appeared in time; nothing was enqueued then.
    ///
    /// # Panics
    /// Outside a tokio runtime with the time driver enabled, if it has to wait.
    pub async fn publish_timeout(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.topic
            .publish(event, &PublishOptions::waiting_at_most(timeout))
            .await
    }

    /// Publishes `event` with [`PublishOptions`]: an idempotency key, a
    /// timeout.
    ///
    /// # Errors
    /// As [`publish`](Publisher::publish), and [`Refusal::Timeout`](crate::error::Refusal::Timeout) with
    /// a timeout.
    pub async fn publish_with(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.publish(event, &options).await
    }

    /// Publishes `event` with an idempotency key, without ever waiting (the
    /// options' timeout does not apply).
    ///
    /// # Errors
    /// As [`try_publish`](Publisher::try_publish).
    pub fn try_publish_with(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.try_publish(event, &options)
    }

    /// The topic this handle publishes to.
    pub fn topic(&self) -> &'static str {
        E::TOPIC
    }

    /// The numbers of the topic's current subscriptions.
    pub fn subscription_stats(&self) -> Vec<SubscriptionStats> {
        self.topic.stats().subscriptions
    }
}

impl<E> Clone for Publisher<E> {
    fn clone(&self) -> Self {
        Publisher {
            topic: Arc::clone(&self.topic),
        }
    }
}

impl<E: Event> fmt::Debug for Publisher<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &E::TOPIC)
            .finish()
    }
}
