//! What a successful publish did: [`PublishReceipt`], and the original a
//! duplicate names ([`Duplicate`]).

use crate::id::EventId;

/// What a successful publish did.
///
/// ```
/// # use tidings::{Bus, Event, Overflow};
/// # #[derive(Event)] #[event(topic = "ticks")] struct Tick(u64);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<Tick>().build()?;
/// let _all = bus.subscribe::<Tick>().stream()?;
/// let _latest = bus.subscribe::<Tick>().capacity(1).overflow(Overflow::DropNewest).stream()?;
/// let first = bus.publish(Tick(1)).await?;
/// assert_eq!((first.seq, first.enqueued, first.dropped_newest), (1, 2, 0));
/// let second = bus.publish(Tick(2)).await?; // `_latest` is full and drops it
/// assert_eq!((second.seq, second.enqueued, second.dropped_newest), (2, 1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The event's process-wide unique id.
    pub id: EventId,
    /// The event's sequence number on its topic.
    pub seq: u64,
    /// Subscriptions that enqueued the event.
    pub enqueued: usize,
    /// Of those, subscriptions that evicted their oldest queued event to make
    /// room ([`Overflow::DropOldest`](crate::Overflow::DropOldest)).
    pub evicted_oldest: usize,
    /// Subscriptions that discarded this event because they were full
    /// ([`Overflow::DropNewest`](crate::Overflow::DropNewest)).
    pub dropped_newest: usize,
    /// Set when the publish carried an idempotency key the topic had already
    /// accepted within its [`DedupWindow`](crate::DedupWindow): the event was
    /// not delivered again, and `id` and `seq` are the original's.
    pub duplicate: Option<Duplicate>,
}

impl PublishReceipt {
    /// Whether the publish was a duplicate and delivered nothing.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate.is_some()
    }
}

/// The first publish of a key, as a duplicate's receipt names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Duplicate {
    /// The id of the event first published with the key.
    pub original: EventId,
    /// Its sequence number.
    pub original_seq: u64,
}
