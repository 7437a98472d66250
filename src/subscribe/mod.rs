//! Subscribing: the builders, the stream [`Subscription`], the
//! [`SubscriptionHandle`] of handler subscriptions, and wildcard
//! subscriptions over many topics.

mod builder;
mod handle;
mod handlers;
mod pattern;
mod stream;

use std::sync::Arc;

pub use builder::{SubscribeBuilder, MAX_CONCURRENCY};
pub use handle::SubscriptionHandle;
pub use handlers::HandlerBuilder;
pub(crate) use pattern::{part, Matched, PartFn};
pub use pattern::{PatternBuilder, PatternSubscription};
pub use stream::Subscription;

use crate::event::Event;
use crate::info::SubInfo;
use crate::resume::Started;
use crate::stats::SubscriptionStats;
use crate::topic::{ErasedQueue, SubscriptionState, TopicState};

/// A queue attached to its topic.
pub(crate) struct Attachment<E> {
    pub(crate) topic: Arc<TopicState<E>>,
    pub(crate) subscription: Arc<SubscriptionState<E>>,
}

impl<E: Event> Attachment<E> {
    pub(crate) fn new(topic: Arc<TopicState<E>>, subscription: Arc<SubscriptionState<E>>) -> Self {
        Attachment {
            topic,
            subscription,
        }
    }

    pub(crate) fn detach(&self, discard: bool) {
        self.topic.detach(&self.subscription, discard);
    }

    /// Takes back a subscription that was never handed to the application.
    pub(crate) fn withdraw(&self) {
        self.topic.withdraw(&self.subscription);
    }

    pub(crate) fn stats(&self) -> SubscriptionStats {
        self.topic.sub_stats(&self.subscription)
    }
}

/// What a [`SubscriptionHandle`] needs without knowing the event type.
pub(crate) trait Detach: Send + Sync {
    fn detach(&self, discard: bool);
    fn stats(&self) -> SubscriptionStats;
    fn subscription(&self) -> &dyn ErasedQueue;
    fn info(&self) -> &SubInfo;
    fn started(&self) -> &Started;
}

impl<E: Event> Detach for Attachment<E> {
    fn detach(&self, discard: bool) {
        Attachment::detach(self, discard);
    }
    fn stats(&self) -> SubscriptionStats {
        Attachment::stats(self)
    }
    fn subscription(&self) -> &dyn ErasedQueue {
        &*self.subscription
    }
    fn info(&self) -> &SubInfo {
        &self.subscription.info
    }
    fn started(&self) -> &Started {
        &self.subscription.start
    }
}
