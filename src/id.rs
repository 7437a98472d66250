//! Identifiers: of events, subscriptions and buses.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Names an event that caused another ([`Envelope::caused_by`](crate::Envelope::caused_by),
/// [`Envelope::correlation`](crate::Envelope::correlation)): one of this
/// process, by its [`EventId`], or one that came from another process, by
/// the id it crossed with (a bridge's wire id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventRef {
    /// An event published in this process.
    Local(EventId),
    /// An event from another process, by its id there (as a bridge carries it).
    Remote(std::sync::Arc<str>),
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventRef::Local(id) => id.fmt(f),
            EventRef::Remote(id) => f.write_str(id),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for EventRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What caused an event: the event being handled when it was published,
/// and the root of that chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cause {
    pub(crate) caused_by: EventRef,
    pub(crate) correlation: EventRef,
    /// The topic of `caused_by`, when this process handed that event out
    /// (`None` for a cause known by its id only: another process's event,
    /// or one named with `PublishOptions::cause`). Counted per topic in
    /// `TopicStats::caused_by`.
    pub(crate) topic: Option<&'static str>,
}

/// A process-wide unique identifier of one published event.
///
/// Ids are handed out in increasing order by every bus of the process, so no
/// two events ever share one, even across buses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EventId(u64);

impl EventId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id whose number `get` gave.
    pub(crate) fn from_raw(n: u64) -> Self {
        EventId(n)
    }

    /// An id for a loom model, outside the process-wide count.
    #[cfg(all(test, tidings_loom))]
    pub(crate) fn for_test(n: u64) -> Self {
        EventId(n)
    }

    pub(crate) fn next() -> Self {
        // Uniqueness only needs the read-modify-write to be atomic; no other
        // memory is published through this counter, so `Relaxed` is enough.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        EventId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ev-{}", self.0)
    }
}

/// A process-wide unique identifier of a subscription.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    pub(crate) fn next() -> Self {
        // Only uniqueness is needed: `Relaxed` suffices.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SubscriptionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A process-wide unique identifier of one bus.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BusId(u64);

impl BusId {
    pub(crate) fn next() -> Self {
        // Only uniqueness is needed: `Relaxed` suffices.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BusId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}
