//! Where a subscription started in its topic's retained log ([`Started`]),
//! and retained events fetched by sequence number ([`Replayed`]).

use std::ops::Range;

use crate::event::Envelope;

/// Where a subscription actually started: see
/// [`Subscription::started`](crate::Subscription::started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Started {
    /// The first sequence number it asked for.
    pub requested: u64,
    /// Retained events queued for it when it subscribed: sequence numbers
    /// `unrecoverable.end .. live_from`.
    pub replayed: u64,
    /// The first live sequence number (the topic's next when it subscribed).
    pub live_from: u64,
    /// Sequence numbers it asked for that the topic no longer retains: it
    /// will never receive them. Empty when nothing is missing.
    pub unrecoverable: Range<u64>,
}

/// Retained events of one topic, fetched by sequence number with
/// [`Bus::replay`](crate::Bus::replay): the in-place way for a lossy
/// subscription to recover what it missed.
#[derive(Debug)]
#[non_exhaustive]
pub struct Replayed<E> {
    /// The retained events of the range, in sequence order.
    pub events: Vec<Envelope<E>>,
    /// Sequence numbers of the range that are no longer retained.
    pub unrecoverable: Range<u64>,
}
