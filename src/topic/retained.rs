//! The retained log of a topic and where a subscription starts in it.
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
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use crate::config::StartAt;
use crate::errors::SubscribeError;
use crate::event::Event;
use crate::event::{Envelope, Published};
use crate::resume::{Replayed, Started};

/// The retained events a new subscription gets, and where it starts.
pub(crate) type Plan<E> = (VecDeque<Arc<Published<E>>>, Started);

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
    let start = Started {
        requested: from,
        replayed: replay.len() as u64,
        live_from: next,
        unrecoverable: from..oldest.clamp(from, next),
    };
    Ok((replay, start))
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
