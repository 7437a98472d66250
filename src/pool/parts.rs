//! Plain parts of a pool's state, kept under its lock: the min-heap entry
//! of its line of runners and of its timers, and its record of
//! exhaustion.

use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use crate::stats::PoolHolder;

/// An entry of a min-heap on std's max-heap: ordered by `key` alone, the
/// least first out.
pub(crate) struct Least<K, T> {
    pub(crate) key: K,
    pub(crate) item: T,
}

impl<K: Ord, T> PartialEq for Least<K, T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<K: Ord, T> Eq for Least<K, T> {}
impl<K: Ord, T> PartialOrd for Least<K, T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord, T> Ord for Least<K, T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key.cmp(&self.key)
    }
}

/// A runner's wake-up at an instant (first come first among equals).
pub(crate) type Timer = Least<(Instant, u64), Waker>;

/// A pool's record of every worker busy for too long.
#[derive(Default)]
pub(crate) struct Exhaustion {
    pub(super) count: u64,
    pub(super) worst: Duration,
    pub(super) holders: Vec<PoolHolder>,
    pub(super) last_seen: Option<(SystemTime, Instant)>,
    last_reported: Option<Instant>,
    /// The current stretch of every worker busy was counted.
    counted: bool,
}

impl Exhaustion {
    /// Every worker has been busy for `busy_for` at `now`, held by
    /// `holders`: counted once a stretch; whether a report is due (one per
    /// `every`).
    pub(super) fn seen(
        &mut self,
        busy_for: Duration,
        holders: Vec<PoolHolder>,
        now: Instant,
        every: Duration,
    ) -> bool {
        if !std::mem::replace(&mut self.counted, true) {
            self.count += 1;
        }
        self.worst = self.worst.max(busy_for);
        self.holders = holders;
        self.last_seen = Some((SystemTime::now(), now));
        let due = self
            .last_reported
            .map_or(true, |last| now.saturating_duration_since(last) >= every);
        if due {
            self.last_reported = Some(now);
        }
        due
    }

    /// A worker became free: the stretch, if any, is over.
    pub(super) fn stretch_over(&mut self) {
        self.counted = false;
    }
}
