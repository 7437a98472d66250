//! The stream [`Subscription`]: a subscription the application reads.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::Attachment;
use crate::errors::TryRecvError;
use crate::event::Envelope;
use crate::event::Event;
use crate::id::SubscriptionId;
use crate::resume::Started;
use crate::stats::SubscriptionStats;

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
    pub(crate) fn new(attachment: Attachment<E>) -> Self {
        Subscription {
            attachment,
            detached: false,
        }
    }

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
        self.attachment.subscription.try_pop().inspect(read)
    }

    /// Polls for the next event (what `recv` and the `Stream` impl use).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<E>>> {
        let next = self.attachment.subscription.poll_pop(cx, 0);
        if let Poll::Ready(Some(envelope)) = &next {
            read(envelope);
        }
        next
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

    /// Takes the subscription back as if it had never been made (a
    /// wildcard subscription refused on another topic): no topic counts it
    /// as unsubscribed.
    pub(crate) fn withdraw(mut self) {
        self.detached = true;
        self.attachment.withdraw();
    }

    /// The subscription's numbers now.
    pub fn stats(&self) -> SubscriptionStats {
        self.attachment.stats()
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.attachment.subscription.info.id
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.attachment.subscription.info.name
    }

    /// Where it started ([`SubscribeBuilder::from`](crate::SubscribeBuilder::from)):
    /// how many retained events it was given and which ones it asked for
    /// are gone.
    pub fn started(&self) -> &Started {
        &self.attachment.subscription.start
    }
}

/// A stream's reader has the event: for a fed subscription
/// ([`Feed`](crate::feed::Feed)), letting go of the envelope settles it.
#[inline]
fn read<E>(envelope: &Envelope<E>) {
    envelope.inner.settle(crate::config::Settled::Read);
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
        let info = &self.attachment.subscription.info;
        f.debug_struct("Subscription")
            .field("id", &info.id)
            .field("name", &info.name)
            .field("topic", &info.topic)
            .finish()
    }
}
