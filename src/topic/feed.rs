//! A subscription fed by a storage layer instead of by the topic's
//! publishes: one event at a time, waiting for room (its public face is
//! the crate's `feed` module).

use std::sync::Arc;
use std::task::{Context, Poll};

use super::deferred::Deferred;
use super::subscription::Push;
use super::{Phase, SubscriptionState, TopicState};
use crate::event::{Event, Published};

/// What became of one event offered to a fed subscription.
pub(crate) enum Offered {
    /// It is in the subscription's queue.
    Queued,
    /// The subscription is closed (it left, or the bus drains or is shut
    /// down): the event was not taken.
    Closed,
}

impl<E: Event> TopicState<E> {
    /// Offers `published` to the fed `subscription`: queued if it
    /// has room, else `Pending` with `cx` woken when room appears. The
    /// feeder's hold on the event is its own to release.
    pub(crate) fn poll_offer(
        &self,
        subscription: &Arc<SubscriptionState<E>>,
        published: &Arc<Published<E>>,
        cx: &mut Context<'_>,
    ) -> Poll<Offered> {
        // Only the topic's state says whether the bus still takes events;
        // the lock is not held while the queue is looked at (the feeder is
        // the only one who adds to it, and consumers only make room).
        if self.inner.lock().phase != Phase::Open {
            return Poll::Ready(Offered::Closed);
        }
        if !subscription.has_room(Some(cx)) {
            return Poll::Pending;
        }
        let mut dropped = Deferred::new();
        let pushed = subscription.push(published, &mut dropped);
        dropped.finish(&self.callbacks);
        match pushed {
            Push::Closed => Poll::Ready(Offered::Closed),
            Push::Enqueued | Push::EvictedOldest | Push::DroppedNewest => {
                Poll::Ready(Offered::Queued)
            }
        }
    }
}
