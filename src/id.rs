//! Identifiers: of events, subscriptions and buses.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

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
