//! Per-topic settings: [`TopicConfig`].

use super::{Clock, DedupWindow, Overflow};

/// Per-topic settings, given at registration with
/// [`BusBuilder::topic_with`](crate::BusBuilder::topic_with).
///
/// They are the defaults for every subscription of the topic; a subscription
/// can override them with
/// [`SubscribeBuilder::capacity`](crate::SubscribeBuilder::capacity) and
/// [`SubscribeBuilder::overflow`](crate::SubscribeBuilder::overflow).
///
/// ```
/// use tidings::{Overflow, TopicConfig};
///
/// let config = TopicConfig::default().capacity(4096).overflow(Overflow::DropOldest);
/// assert_eq!(config.default_capacity(), 4096);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    capacity: usize,
    overflow: Overflow,
    retain: usize,
    dedup: DedupWindow,
    clock: Clock,
    fed_by: Option<&'static str>,
}

impl TopicConfig {
    /// Hands the topic to a storage layer (`owner`, e.g. `tidings-durable`)
    /// that feeds its subscriptions itself: a publish through the bus is
    /// refused with [`Refusal::Fed`](crate::error::Refusal::Fed) naming the
    /// owner (the event must go through the store, or it would not be
    /// stored), and only subscriptions the owner feeds
    /// (`tidings::feed`) attach. Storage layers set this; an
    /// application normally does not.
    pub fn fed_by(mut self, owner: &'static str) -> Self {
        self.fed_by = Some(owner);
        self
    }

    /// The storage layer that feeds the topic, if one does
    /// ([`fed_by`](TopicConfig::fed_by)).
    pub fn feeder(&self) -> Option<&'static str> {
        self.fed_by
    }

    /// The default queue capacity of a subscription: 1024 events.
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// Sets the default queue capacity of the topic's subscriptions. 0 is
    /// refused by [`BusBuilder::build`](crate::BusBuilder::build).
    ///
    /// It also sizes the ring that the topic's lossless subscriptions
    /// ([`Overflow::Block`], [`Overflow::Fail`]) read from: the next power of
    /// two at or above it (at most 65,536). A lossless subscription with a
    /// larger capacity gets a queue of its own.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the default overflow policy of the topic's subscriptions.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Keeps the last `n` accepted events of the topic (default 0: none),
    /// whether or not anyone is subscribed, so that subscriptions can start
    /// before the live end ([`StartAt`](crate::StartAt)) and lossy ones can
    /// recover what they missed ([`Bus::replay`](crate::Bus::replay)).
    /// `retain(1)` makes a last-value topic: late subscribers starting at
    /// [`StartAt::Last(1)`](crate::StartAt::Last) get the current state.
    /// The cost is `n` shared pointers and the events they keep alive.
    pub fn retain(mut self, n: usize) -> Self {
        self.retain = n;
        self
    }

    /// The window within which an idempotency key is remembered (see
    /// [`DedupWindow`]; default 10,000 keys or 5 minutes). Only publishes
    /// with a key use it.
    pub fn dedup(mut self, window: DedupWindow) -> Self {
        self.dedup = window;
        self
    }

    /// How the topic stamps its events' publish time (default
    /// [`Clock::Precise`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock the topic stamps its events with.
    pub fn timestamp_clock(&self) -> Clock {
        self.clock
    }

    /// How many events the topic retains.
    pub fn retained(&self) -> usize {
        self.retain
    }

    /// The topic's idempotency-key window.
    pub fn dedup_window(&self) -> DedupWindow {
        self.dedup
    }

    /// The default queue capacity of the topic's subscriptions.
    pub fn default_capacity(&self) -> usize {
        self.capacity
    }

    /// The default overflow policy of the topic's subscriptions.
    pub fn default_overflow(&self) -> Overflow {
        self.overflow
    }
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            capacity: TopicConfig::DEFAULT_CAPACITY,
            overflow: Overflow::Block,
            retain: 0,
            dedup: DedupWindow::new(),
            clock: Clock::Precise,
            fed_by: None,
        }
    }
}
