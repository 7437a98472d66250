//! The idempotency keys a topic remembers.
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
use std::time::Instant;

use crate::config::DedupWindow;
use crate::receipt::Duplicate;

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
    use std::time::Duration;

    use crate::id::EventId;

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
