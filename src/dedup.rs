//! Idempotency keys: [`PublishOptions`] and the per-topic [`DedupWindow`].
//!
//! A publish with a key that the topic has accepted within its window is not
//! delivered again: the call succeeds with a receipt that names the original
//! event ([`PublishReceipt::duplicate`](crate::PublishReceipt::duplicate)).
//! The key is checked and recorded under the topic's lock, in the same
//! critical section that accepts the event, so two racing publishes of one
//! key deliver exactly one event. Only accepted publishes record their key:
//! a publish refused as full, timed out, cancelled or closed leaves none, so
//! trying it again is safe.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::EventId;

/// Options of one publish ([`Bus::publish_with`](crate::Bus::publish_with)).
///
/// ```
/// # use tidings::{Bus, Event, PublishOptions};
/// # #[derive(Event)] #[event(topic = "orders.placed")] struct OrderPlaced { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderPlaced>().build()?;
/// let first = bus.publish_with(OrderPlaced { id: 42 }, PublishOptions::new().idempotency_key("order-42")).await?;
/// let again = bus.publish_with(OrderPlaced { id: 42 }, PublishOptions::new().idempotency_key("order-42")).await?;
/// assert_eq!(first.duplicate, None);
/// assert_eq!(again.duplicate.map(|d| d.original), Some(first.id)); // not delivered again
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    pub(crate) key: Option<Arc<str>>,
    pub(crate) scope: Option<Arc<str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) origin: Option<Arc<str>>,
}

impl PublishOptions {
    pub(crate) const PLAIN: PublishOptions = PublishOptions {
        key: None,
        scope: None,
        timeout: None,
        origin: None,
    };

    /// No key, no timeout: a plain publish.
    pub fn new() -> Self {
        PublishOptions::default()
    }

    /// Publishes at most once per key within the topic's [`DedupWindow`].
    /// Keys are per topic (and per [scope](PublishOptions::key_scope));
    /// envelopes carry theirs
    /// ([`Envelope::idempotency_key`](crate::Envelope::idempotency_key)).
    ///
    /// A key is 1 to [`DedupWindow::max_key_len`] bytes (default 256) with
    /// no control character (no CR, LF, NUL, …); anything else is refused
    /// with [`PublishError::InvalidKey`](crate::error::PublishError::InvalidKey).
    pub fn idempotency_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Puts the idempotency key in a space of its own: a key counts as a
    /// duplicate only of the same key in the same scope. The default (no
    /// scope) is the application's own space. A bridge imports its peers'
    /// keys under a scope of its own, so that a key chosen by another
    /// process never suppresses a local publish that happens to use it.
    /// Same rules as a key.
    pub fn key_scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The key the topic's window remembers: the key, or scope and key
    /// (joined by a NUL, which neither may hold).
    pub(crate) fn dedup_key(&self) -> Option<Arc<str>> {
        let key = self.key.as_ref()?;
        Some(match &self.scope {
            None => Arc::clone(key),
            Some(scope) => format!("{scope}\0{key}").into(),
        })
    }

    /// Checks the key and scope against `max_len`: `Err` says what is wrong.
    pub(crate) fn check_key(&self, max_len: usize) -> Result<(), (String, String)> {
        for (what, value) in [("key", &self.key), ("key scope", &self.scope)] {
            let Some(value) = value else { continue };
            let problem = if value.is_empty() {
                Some("is empty".to_owned())
            } else if value.len() > max_len {
                Some(format!(
                    "is {} bytes long; the topic's limit is {max_len}",
                    value.len()
                ))
            } else if value.chars().any(char::is_control) {
                Some("holds a control character (CR, LF, NUL, …)".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                let shown: String = value
                    .chars()
                    .take(64)
                    .flat_map(char::escape_debug)
                    .collect();
                return Err((shown, format!("the {what} {problem}")));
            }
        }
        Ok(())
    }

    /// Says where the event came from, e.g. the bridge that imported it.
    /// Envelopes carry it ([`Envelope::origin`](crate::Envelope::origin)); a
    /// bridge never exports an event carrying its own origin, which is how
    /// imported events are kept from going round in a loop.
    pub fn origin(mut self, origin: impl Into<Arc<str>>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Waits at most `timeout` for room, as
    /// [`Bus::publish_timeout`](crate::Bus::publish_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How long a topic remembers idempotency keys: the last `max_keys` keys,
/// each for at most `max_age` after its event was accepted, whichever ends
/// first. Memory is bounded in bytes: keys are at most `max_key_len` bytes
/// (default 256; longer ones are refused), so a window holds at most
/// `max_keys × (max_key_len + about 100)` bytes (2.5 MiB by default).
///
/// A key that has left the window is forgotten: publishing it again
/// delivers a new event. Size the window to cover the longest time a client
/// may retry (and its number of keys at peak rate).
///
/// The default keeps 10,000 keys for 5 minutes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DedupWindow {
    max_keys: usize,
    max_age: Duration,
    max_key_len: usize,
}

impl DedupWindow {
    /// The default window: 10,000 keys, 5 minutes, keys of up to 256 bytes.
    pub const fn new() -> Self {
        DedupWindow {
            max_keys: 10_000,
            max_age: Duration::from_secs(300),
            max_key_len: 256,
        }
    }

    /// The longest key accepted, in bytes (default 256); publishing with a
    /// longer one is refused. Bounds the window's memory with `max_keys`.
    pub const fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// The longest key accepted, in bytes.
    pub const fn key_len_limit(&self) -> usize {
        self.max_key_len
    }

    /// Remember at most this many keys (the oldest go first).
    pub const fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Remember a key at most this long after its event was accepted.
    pub const fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }
}

impl Default for DedupWindow {
    fn default() -> Self {
        DedupWindow::new()
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

/// The keys a topic remembers, oldest first. Lives under the topic lock.
pub(crate) struct Dedup {
    window: DedupWindow,
    order: VecDeque<(Arc<str>, Instant)>,
    seen: HashMap<Arc<str>, Duplicate>,
}

impl Dedup {
    pub(crate) fn new(window: DedupWindow) -> Self {
        Dedup {
            window,
            order: VecDeque::new(),
            seen: HashMap::new(),
        }
    }

    /// Forgets keys older than the window at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if now.duration_since(*at) <= self.window.max_age
                && self.order.len() <= self.window.max_keys
            {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
    }

    /// The original publish of `key`, if it is within the window.
    pub(crate) fn check(&mut self, key: &str, now: Instant) -> Option<Duplicate> {
        self.expire(now);
        self.seen.get(key).copied()
    }

    /// Remembers `key` for the event just accepted.
    pub(crate) fn record(&mut self, key: Arc<str>, original: Duplicate, now: Instant) {
        if self.window.max_keys == 0 {
            return;
        }
        self.seen.insert(Arc::clone(&key), original);
        self.order.push_back((key, now));
        self.expire(now);
    }

    /// Keys remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(n: u64) -> Duplicate {
        Duplicate {
            original: EventId::next(),
            original_seq: n,
        }
    }

    #[test]
    fn window_by_count_forgets_the_oldest() {
        let mut d = Dedup::new(DedupWindow::new().max_keys(2));
        let now = Instant::now();
        d.record("a".into(), dup(1), now);
        d.record("b".into(), dup(2), now);
        assert!(d.check("a", now).is_some());
        d.record("c".into(), dup(3), now);
        assert!(d.check("a", now).is_none(), "a left the window");
        assert_eq!(d.check("b", now).map(|d| d.original_seq), Some(2));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn window_by_age_forgets_the_old() {
        let mut d = Dedup::new(DedupWindow::new().max_age(Duration::from_secs(10)));
        let t0 = Instant::now();
        d.record("a".into(), dup(1), t0);
        d.record("b".into(), dup(2), t0 + Duration::from_secs(5));
        assert!(d.check("a", t0 + Duration::from_secs(10)).is_some());
        assert!(d.check("a", t0 + Duration::from_secs(11)).is_none());
        assert!(d.check("b", t0 + Duration::from_secs(11)).is_some());
        assert_eq!(d.len(), 1);
    }
}
