//! The retained log of a topic and where a subscription starts in it:
//! [`StartAt`], [`Start`] and [`Replayed`].
//!
//! A topic configured with [`TopicConfig::retain`](crate::TopicConfig::retain)
//! keeps its last `n` accepted events (shared `Arc`s, so bounded memory: `n`
//! pointers plus the events themselves). A subscription that starts before
//! the live end gets the retained events it asked for, then the live ones.
//! Both are decided under the topic's lock, the same lock every publish
//! takes to give an event its sequence number: no publish can fall between
//! the last retained event copied and the first live one, so the hand-over
//! has no gap and no duplicate, whatever publishers do meanwhile.

use std::collections::VecDeque;
use std::fmt;
use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;

use crate::error::SubscribeError;
use crate::event::{Envelope, Published};
use crate::Event;

/// Where a subscription starts reading its topic.
///
/// Starting anywhere but [`StartAt::Latest`] needs a topic that retains
/// events ([`TopicConfig::retain`](crate::TopicConfig::retain)).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum StartAt {
    /// Live events only: those published after it subscribed (the default).
    #[default]
    Latest,
    /// Every event still retained, then live ones.
    Earliest,
    /// From this sequence number on: the way to resume after a reconnect
    /// (`Seq(last_seen + 1)`). What is no longer retained of it is reported
    /// in [`Start::unrecoverable`].
    Seq(u64),
    /// The last `n` events published (as far as they are retained), then
    /// live ones. `Last(1)` on a `retain(1)` topic is "the current value".
    Last(u64),
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::Latest => f.write_str("latest"),
            StartAt::Earliest => f.write_str("earliest"),
            StartAt::Seq(seq) => write!(f, "seq {seq}"),
            StartAt::Last(n) => write!(f, "the last {n}"),
        }
    }
}

/// Where a subscription actually started: see
/// [`Subscription::start`](crate::Subscription::start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Start {
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

/// The retained events a new subscription gets, and where it starts.
pub(crate) type Plan<E> = (VecDeque<Arc<Published<E>>>, Start);

/// Works out the retained events a new subscription gets. Called under the
/// topic lock, with `next` the topic's next sequence number.
pub(crate) fn plan<E: Event>(
    at: StartAt,
    retained: &VecDeque<Arc<Published<E>>>,
    retain: usize,
    next: u64,
) -> Result<Plan<E>, SubscribeError> {
    let topic = E::TOPIC;
    if at != StartAt::Latest && retain == 0 {
        return Err(SubscribeError::NotRetained { topic, start: at });
    }
    let oldest = retained.front().map_or(next, |p| p.seq);
    let from = match at {
        StartAt::Latest => next,
        StartAt::Earliest => oldest,
        StartAt::Seq(seq) if seq > next => {
            return Err(SubscribeError::SeqAhead {
                topic,
                requested: seq,
                next,
            })
        }
        StartAt::Seq(seq) => seq.max(1),
        StartAt::Last(n) => next.saturating_sub(n).max(1),
    };
    let replay: VecDeque<_> = retained.iter().filter(|p| p.seq >= from).cloned().collect();
    let start = Start {
        requested: from,
        replayed: replay.len() as u64,
        live_from: next,
        unrecoverable: from..oldest.clamp(from, next),
    };
    Ok((replay, start))
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

/// The retained events with sequence numbers in `range` (clamped to what
/// was published).
pub(crate) fn fetch<E: Event>(
    retained: &VecDeque<Arc<Published<E>>>,
    next: u64,
    range: impl RangeBounds<u64>,
) -> Replayed<E> {
    let from = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 1,
    }
    .max(1);
    let to = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => next,
    }
    .min(next)
    .max(from);
    let oldest = retained.front().map_or(next, |p| p.seq);
    Replayed {
        events: retained
            .iter()
            .filter(|p| (from..to).contains(&p.seq))
            .map(|p| Envelope::new(Arc::clone(p), 0))
            .collect(),
        unrecoverable: from..oldest.clamp(from, to),
    }
}
