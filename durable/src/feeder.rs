//! The feeder of one durable subscription: a thread that reads the topic's
//! log from the subscription's place, decodes each event, offers it to the
//! subscription's queue (waiting for room: the log is the backlog, not
//! memory), and commits each settlement back to the log.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tidings::feed::{Fed, Feed, PendingFeed, Settled, Settlement};
use tidings::Event;

use crate::error::StoreError;
use crate::reader::{Read, Reader};
use crate::record::Record;
use crate::shared::{SubNumbers, TopicInner};
use crate::state::SubState;

/// How long an idle feeder waits before it looks whether its subscription
/// is still there.
const IDLE: Duration = Duration::from_millis(100);

/// The most of a dead letter's error that is stored.
pub(crate) const MAX_ERROR: usize = 4096;

/// `error`, cut to [`MAX_ERROR`] bytes at a character boundary.
fn bounded(mut error: String) -> String {
    if error.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

fn code(how: Settled) -> u8 {
    match how {
        Settled::Handled => 1,
        Settled::DeadLettered => 2,
        _ => 3,
    }
}

pub(crate) fn start<E>(topic: Arc<TopicInner>, name: String, pending: PendingFeed<E>)
where
    E: Event + DeserializeOwned,
{
    let thread = format!("tidings-feed:{name}");
    let named = name.clone();
    let spawned = std::thread::Builder::new()
        .name(thread.chars().take(15).collect())
        .spawn(move || {
            let Some(feed) = futures::executor::block_on(pending.attached()) else {
                return; // never attached: refused, or the builder dropped
            };
            if let Err(e) = feed_loop(&topic, &name, &feed) {
                tracing::error!(topic = E::TOPIC, subscription = %name, error = %e,
                    "durable subscription stopped: its feeder failed");
            }
        });
    if let Err(e) = spawned {
        tracing::error!(topic = E::TOPIC, subscription = %named, error = %e,
            "durable subscription gets nothing: its feeder thread did not start");
    }
}

/// The subscription's place in the log, registered on first use.
fn register(topic: &TopicInner, name: &str) -> Result<SubState, StoreError> {
    let oldest = topic.log.oldest_first();
    topic.log.append(|state| {
        if state.sub_named(name).is_some() {
            return Ok((Vec::new(), ()));
        }
        let id = state.next_sub_id();
        // A new subscription starts at the oldest event still retained.
        let from = oldest.min(state.next_seq);
        let record = Record::Sub {
            id,
            name: name.to_owned(),
            from,
        };
        Ok((vec![record], ()))
    })?;
    topic
        .log
        .with_state(|state| state.sub_named(name).cloned())
        .ok_or_else(|| StoreError::Topic {
            topic: "(durable subscription)",
            problem: format!("subscription `{name}` was not registered"),
        })
}

fn feed_loop<E>(topic: &Arc<TopicInner>, name: &str, feed: &Feed<E>) -> Result<(), StoreError>
where
    E: Event + DeserializeOwned,
{
    let at_start = register(topic, name)?;
    let id = at_start.id;
    let numbers = Arc::new(SubNumbers {
        id,
        redelivered: AtomicU64::new(0),
        undecodable: AtomicU64::new(0),
        pending: Mutex::new(BTreeMap::new()),
    });
    topic.subs.lock().push(Arc::clone(&numbers));
    let result = feed_from(topic, feed, &at_start, &numbers);
    topic.subs.lock().retain(|n| n.id != id);
    result
}

fn feed_from<E>(
    topic: &Arc<TopicInner>,
    feed: &Feed<E>,
    at_start: &SubState,
    numbers: &Arc<SubNumbers>,
) -> Result<(), StoreError>
where
    E: Event + DeserializeOwned,
{
    let log = &topic.log;
    let id = at_start.id;
    let mut reader = Reader::new(Arc::clone(log), at_start.done_below);
    let mut seen = log.appended();
    let mut offered = at_start.offered;
    // The topic's head when an event was last offered (for the lag metric).
    let mut head = log.with_state(|state| state.next_seq);
    loop {
        let stored = match reader.next()? {
            Read::Event(stored) => stored,
            Read::CaughtUp => {
                if feed.stats().closed {
                    return Ok(());
                }
                seen = log.wait_appended(seen, IDLE);
                continue;
            }
            Read::Corrupt { segment, why } => {
                tracing::error!(
                    topic = E::TOPIC,
                    subscription = feed.name(),
                    segment,
                    why,
                    "durable topic: skipped the unreadable rest of a segment"
                );
                continue;
            }
        };
        let seq = stored.seq;
        if at_start.is_settled(seq) {
            continue;
        }
        let again = seq <= at_start.offered;
        // Written before the event is offered: after a crash, everything up
        // to here may have been had, and is marked so.
        if seq > offered {
            (head, _) = log.append(|state| {
                Ok((vec![Record::Offered { sub: id, upto: seq }], state.next_seq))
            })?;
            offered = seq;
        }
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            serde_json::from_slice::<E>(&stored.payload)
        }));
        let event = match decoded {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => {
                undecodable(topic, numbers, feed, seq, &e.to_string())?;
                continue;
            }
            Err(_) => {
                undecodable(topic, numbers, feed, seq, "its Deserialize panicked")?;
                continue;
            }
        };
        if again {
            numbers.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        crate::metrics::offered(E::TOPIC, feed.name(), again, head.saturating_sub(seq));
        numbers.pending.lock().insert(seq, stored.at_ns);
        let commit_log = Arc::clone(log);
        let commit_numbers = Arc::clone(numbers);
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(stored.at_ns);
        let fed = Fed::new(event, seq, at)
            .key(stored.key)
            .redelivered(again)
            .on_done(move |settlement: Settlement| {
                commit_numbers.pending.lock().remove(&seq);
                let record = match (settlement.how, settlement.error) {
                    (None, _) => return, // owed again
                    // A dead letter is stored with why.
                    (Some(Settled::DeadLettered), error) => Record::DeadLetter {
                        sub: id,
                        seq,
                        error: bounded(error.unwrap_or_default()),
                    },
                    (Some(how), _) => Record::Settle { sub: id, seq, how: code(how) },
                };
                if let Err(e) = commit_log.append(|_| Ok((vec![record], ()))) {
                    tracing::error!(topic = %commit_log.topic, seq, error = %e,
                        "durable topic: a settlement was not stored; the event will be delivered again");
                }
            });
        if futures::executor::block_on(feed.offer(fed)).is_err() {
            return Ok(());
        }
    }
}

/// A stored event that does not deserialize: settled as a dead letter so
/// that it does not hold the subscription up, counted and warned.
fn undecodable<E: Event>(
    topic: &TopicInner,
    numbers: &SubNumbers,
    feed: &Feed<E>,
    seq: u64,
    why: &str,
) -> Result<(), StoreError> {
    numbers.undecodable.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        topic = E::TOPIC,
        subscription = feed.name(),
        seq,
        why,
        "durable topic: a stored event does not decode; settled as a dead letter"
    );
    let records = vec![Record::DeadLetter {
        sub: numbers.id,
        seq,
        error: format!("does not decode: {why}"),
    }];
    topic.log.append(|_| Ok((records, ())))?;
    Ok(())
}
