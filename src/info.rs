//! What kind of consumer a subscription has, and its fixed facts.

use std::fmt;
use std::sync::Arc;

use crate::config::Overflow;
use crate::id::SubscriptionId;

/// How a subscription consumes its queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum SubscriberKind {
    /// A [`Subscription`](crate::Subscription) read by the application.
    Stream,
    /// An async handler run as tokio tasks.
    Async,
    /// A CPU-heavy handler run on the bus's CPU worker pool
    /// ([`HandlerBuilder::sync`](crate::HandlerBuilder::sync)).
    Sync,
    /// A handler that blocks on I/O, run on the bus's I/O worker pool
    /// ([`HandlerBuilder::blocking`](crate::HandlerBuilder::blocking)).
    Blocking,
}

impl SubscriberKind {
    /// The worker pool its handler runs on, for the kinds that run on one.
    pub fn pool(self) -> Option<crate::config::WorkerPool> {
        match self {
            SubscriberKind::Sync => Some(crate::config::WorkerPool::Cpu),
            SubscriberKind::Blocking => Some(crate::config::WorkerPool::Io),
            SubscriberKind::Stream | SubscriberKind::Async => None,
        }
    }
}

impl fmt::Display for SubscriberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            SubscriberKind::Stream => "stream",
            SubscriberKind::Async => "async",
            SubscriberKind::Sync => "sync",
            SubscriberKind::Blocking => "blocking",
        })
    }
}

/// The fixed facts of a subscription.
#[derive(Debug)]
pub(crate) struct SubInfo {
    pub(crate) id: SubscriptionId,
    pub(crate) name: Arc<str>,
    pub(crate) topic: &'static str,
    pub(crate) kind: SubscriberKind,
    pub(crate) policy: Overflow,
    pub(crate) capacity: usize,
}

/// What a bus knows of one registered topic, by name
/// ([`Bus::topic_info`](crate::Bus::topic_info)).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic.
    pub name: &'static str,
    /// The Rust type registered for it, as `std::any::type_name` gives it.
    pub type_name: &'static str,
    /// Whether that type (de)serializes by topic name (`#[event(serde)]`).
    pub serializable: bool,
    /// How many accepted events it retains
    /// ([`TopicConfig::retain`](crate::TopicConfig::retain)).
    pub retain: usize,
    /// The storage layer that feeds it, if one does
    /// ([`TopicConfig::fed_by`](crate::TopicConfig::fed_by)).
    pub fed_by: Option<&'static str>,
}
