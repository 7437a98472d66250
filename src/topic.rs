//! Topic names, their grammar, per-topic configuration and the allow-list.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::dedup::DedupWindow;
use crate::error::{BuildError, TopicError};
use crate::publish::TopicState;
use crate::queue::Overflow;
use crate::stats::TopicStats;
use crate::Event;

/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// A checked topic name: dot-separated segments of `[a-z0-9_-]`, 1..=255
/// bytes in all, no empty segment.
///
/// Topics of [`Event`] types are checked at compile time by the derive; use
/// `Topic` for names that arrive at run time.
///
/// ```
/// use tidings::Topic;
///
/// let t = Topic::parse("orders.created")?;
/// assert_eq!(t.as_str(), "orders.created");
/// assert!(Topic::parse("Orders..created").is_err());
/// # Ok::<(), tidings::error::TopicError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Checks `name` and returns it as a `Topic`.
    ///
    /// # Errors
    /// A [`TopicError`] saying which rule `name` breaks.
    pub fn parse(name: &str) -> Result<Topic, TopicError> {
        Topic::validate(name)?;
        Ok(Topic(Arc::from(name)))
    }

    /// Checks `name` against the topic grammar without keeping it.
    ///
    /// # Errors
    /// A [`TopicError`] saying which rule `name` breaks.
    pub fn validate(name: &str) -> Result<(), TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if name.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong { len: name.len() });
        }
        if let Some(segment) = name.split('.').position(str::is_empty) {
            return Err(TopicError::EmptySegment {
                topic: name.to_owned(),
                segment: segment + 1,
            });
        }
        if let Some((at, ch)) = name
            .char_indices()
            .find(|&(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
        {
            return Err(TopicError::BadChar {
                topic: name.to_owned(),
                ch,
                at,
            });
        }
        Ok(())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

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
}

/// How a topic stamps [`Envelope::published_at`](crate::Envelope::published_at).
///
/// Reading the precise wall clock is one of the larger costs of a publish:
/// about 20 ns of the roughly 95 ns a publish takes on one thread of the
/// 2-core development VM (`cargo run --release --example op_cost` and
/// `bench_report` show both clocks side by side). A hot topic whose
/// subscribers do not measure sub-millisecond latencies from
/// `published_at` can trade that precision away.
///
/// ```
/// use tidings::{Clock, TopicConfig};
///
/// let ticks = TopicConfig::default().clock(Clock::Coarse);
/// assert_eq!(ticks.timestamp_clock(), Clock::Coarse);
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Clock {
    /// [`SystemTime::now`](std::time::SystemTime::now) for every publish:
    /// the clock's full resolution (nanoseconds on Linux).
    #[default]
    Precise,
    /// The operating system's coarse wall clock, which returns the time of
    /// the last timer tick: a few nanoseconds to read, but a resolution of
    /// one tick (1 to 10 ms, 4 ms on most Linux kernels), so events
    /// published within one tick share a timestamp. Linux only (`CLOCK_REALTIME_COARSE`);
    /// elsewhere it is the same as [`Clock::Precise`].
    Coarse,
}

impl Clock {
    /// The current time as this clock reads it.
    #[inline]
    pub(crate) fn now(self) -> std::time::SystemTime {
        match self {
            Clock::Precise => std::time::SystemTime::now(),
            Clock::Coarse => coarse_now(),
        }
    }
}

#[cfg(target_os = "linux")]
fn coarse_now() -> std::time::SystemTime {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    match (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos),
        // Before 1970: not worth a fast path.
        _ => std::time::SystemTime::now(),
    }
}

#[cfg(not(target_os = "linux"))]
fn coarse_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

impl TopicConfig {
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
        }
    }
}

/// What the bus needs of a topic without knowing its event type.
pub(crate) trait ErasedTopic: Send + Sync {
    fn stats(&self) -> TopicStats;
    /// Adds the findings of the blocked-runtime watch to `out`.
    fn findings(&self, out: &mut Vec<crate::watch::Finding>);
    /// Shutdown begins: publishes from outside the bus's handlers are
    /// refused from now on, and publishers waiting for room look again.
    fn begin_drain(&self);
    /// Whether no subscription of the topic (listed, or unsubscribed and
    /// still draining) holds an event or runs its handler, `caller`'s own
    /// run aside; then `Some` of the topic's count of accepted publishes.
    /// If not, `cx` is woken when that may have changed.
    fn poll_quiet(
        &self,
        cx: &mut std::task::Context<'_>,
        caller: Option<crate::SubscriptionId>,
    ) -> Option<u64>;
    /// Shutdown ends: every publish is refused and every subscription
    /// closed, so that streams and runners end once drained.
    fn finish(&self);
    /// The shutdown deadline passed: closes the topic and drops what its
    /// subscriptions still hold (counted as cut off), stopping their async
    /// runners; returns those tasks, but `caller`'s, to wait for.
    fn cut_off(&self, caller: Option<crate::SubscriptionId>) -> Vec<tokio::task::JoinHandle<()>>;
    /// How its events are (de)serialized, if they can be.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    fn codec(&self) -> Option<crate::erased::Codec>;
    /// One part of a wildcard subscription: this topic's events, erased.
    fn subscribe_any(
        &self,
        bus: &crate::Bus,
        options: &crate::subscribe::AnyOptions,
    ) -> Result<crate::subscribe::AnyStream, crate::error::SubscribeError>;
    /// Publishes a type-erased event of this topic.
    fn publish_dyn(
        &self,
        event: crate::erased::DynEvent,
        options: crate::dedup::PublishOptions,
    ) -> futures::future::BoxFuture<
        '_,
        Result<crate::PublishReceipt, crate::error::PublishError<crate::erased::DynEvent>>,
    >;
}

pub(crate) struct Entry {
    pub(crate) name: &'static str,
    pub(crate) type_name: &'static str,
    pub(crate) config: TopicConfig,
    /// The `TopicState<E>` of the topic's type, for typed access.
    pub(crate) state: Arc<dyn Any + Send + Sync>,
    pub(crate) erased: Arc<dyn ErasedTopic>,
}

/// The allow-list: every registered topic, by type and by name. Fixed once
/// the bus is built, so look-ups take no lock.
pub(crate) struct Registry {
    /// The bus the topics belong to.
    pub(crate) bus: crate::context::BusId,
    by_type: HashMap<TypeId, Entry>,
    by_name: BTreeMap<&'static str, TypeId>,
    /// The bus's watch configuration, set when the bus is built.
    pub(crate) watch: crate::watch::WatchSlot,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            bus: crate::context::BusId::next(),
            by_type: HashMap::new(),
            by_name: BTreeMap::new(),
            watch: crate::watch::WatchSlot::default(),
        }
    }

    pub(crate) fn register<E: Event>(&mut self, config: TopicConfig) -> Result<(), BuildError> {
        let name = E::TOPIC;
        let type_name = std::any::type_name::<E>();
        Topic::validate(name).map_err(|source| BuildError::InvalidTopic { type_name, source })?;
        if config.capacity == 0 {
            return Err(BuildError::ZeroCapacity { topic: name });
        }
        if let Some(&other) = self.by_name.get(name) {
            let existing = &self.by_type[&other];
            if other != TypeId::of::<E>() {
                return Err(BuildError::TopicConflict {
                    topic: name,
                    first: existing.type_name,
                    second: type_name,
                });
            }
            if existing.config != config {
                return Err(BuildError::ConfigConflict { topic: name });
            }
            return Ok(());
        }
        let state = Arc::new(TopicState::<E>::new(
            config.clone(),
            Arc::clone(&self.watch),
            self.bus,
        ));
        self.by_name.insert(name, TypeId::of::<E>());
        self.by_type.insert(
            TypeId::of::<E>(),
            Entry {
                name,
                type_name,
                config,
                state: state.clone(),
                erased: state,
            },
        );
        Ok(())
    }

    pub(crate) fn state<E: Event>(&self) -> Option<&TopicState<E>> {
        self.by_type
            .get(&TypeId::of::<E>())
            .and_then(|entry| entry.state.downcast_ref())
    }

    pub(crate) fn state_arc<E: Event>(&self) -> Option<Arc<TopicState<E>>> {
        self.by_type
            .get(&TypeId::of::<E>())
            .and_then(|entry| Arc::clone(&entry.state).downcast().ok())
    }

    /// Entries in topic-name order.
    /// The topic registered under `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|t| &self.by_type[t])
    }

    /// The registered topics `pattern` matches, in name order.
    pub(crate) fn matching<'a>(
        &'a self,
        pattern: &'a crate::Pattern,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries().filter(|e| pattern.matches(e.name))
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_name.values().map(|t| &self.by_type[t])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_accepts_and_rejects() {
        let long_ok = "x".repeat(MAX_TOPIC_LEN);
        for ok in ["a", "orders.created", "a-b_c.9", "0", long_ok.as_str()] {
            assert!(
                Topic::validate(ok).is_ok(),
                "{ok:?} should be a valid topic"
            );
        }
        let long_bad = "x".repeat(MAX_TOPIC_LEN + 1);
        type IsExpected = fn(&TopicError) -> bool;
        let cases: [(&str, IsExpected); 9] = [
            ("", |e| matches!(e, TopicError::Empty)),
            (".a", |e| {
                matches!(e, TopicError::EmptySegment { segment: 1, .. })
            }),
            ("a.", |e| {
                matches!(e, TopicError::EmptySegment { segment: 2, .. })
            }),
            ("a..b", |e| {
                matches!(e, TopicError::EmptySegment { segment: 2, .. })
            }),
            ("Orders", |e| {
                matches!(e, TopicError::BadChar { ch: 'O', at: 0, .. })
            }),
            ("a b", |e| {
                matches!(e, TopicError::BadChar { ch: ' ', at: 1, .. })
            }),
            ("a/b", |e| matches!(e, TopicError::BadChar { ch: '/', .. })),
            ("é", |e| matches!(e, TopicError::BadChar { ch: 'é', .. })),
            (long_bad.as_str(), |e| {
                matches!(e, TopicError::TooLong { len: 256 })
            }),
        ];
        for (bad, is_expected) in cases {
            let err = Topic::validate(bad).expect_err(bad);
            assert!(is_expected(&err), "{bad:?} gave unexpected error {err:?}");
        }
    }

    #[test]
    fn error_messages_name_the_topic() {
        let err = Topic::parse("orders..created").unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic `orders..created` has an empty segment (segment 2)"
        );
    }
}
