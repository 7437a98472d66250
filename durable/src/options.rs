//! How a durable topic is kept: its acknowledgement level ([`Ack`]) and
//! its [`TopicOptions`].

use std::time::Duration;

use crate::error::StoreError;

/// The name durable topics are fed by
/// ([`TopicConfig::fed_by`](tidings::TopicConfig::fed_by)).
pub const OWNER: &str = "tidings-durable";

/// When a durable publish returns `Ok`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ack {
    /// The event is written to the log (in the operating system's hands):
    /// it survives the process being killed (`kill -9`, an abort, an OOM
    /// kill), not a power loss or a kernel crash.
    Written,
    /// The event is on the disk: it survives a power loss too. The
    /// `fdatasync` that covers it is shared by every publish waiting at
    /// that moment (group commit), so a synced publish costs a share of
    /// one sync, not one sync each.
    #[default]
    Synced,
}

/// How one durable topic is kept: its acknowledgement level, segment size,
/// retention and idempotency window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOptions {
    pub(crate) ack: Ack,
    pub(crate) segment_bytes: u64,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) keys_for: Duration,
    pub(crate) max_keys: usize,
    pub(crate) capacity: usize,
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            ack: Ack::Synced,
            segment_bytes: 64 << 20,
            max_bytes: None,
            max_age: None,
            keys_for: Duration::from_secs(24 * 3600),
            max_keys: 100_000,
            capacity: 32,
        }
    }
}

impl TopicOptions {
    /// When a publish returns `Ok` (default [`Ack::Synced`]).
    pub fn ack(mut self, ack: Ack) -> Self {
        self.ack = ack;
        self
    }

    /// The size at which a segment is closed and a new one started
    /// (default 64 MiB; at least 4 KiB). Disk use stays within one
    /// segment of what retention keeps.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Lets go of the oldest segments once the log is over `bytes`, even
    /// if a durable subscription has not settled their events (each one
    /// lost is counted in its [`DurableSubStats::expired`](crate::DurableSubStats::expired)
    /// and warned). Without it (the default), events are kept until every
    /// durable subscription has settled them.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Lets go of segments whose last event is older than `age`, settled
    /// or not (counted as with [`max_bytes`](TopicOptions::max_bytes)).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// How long, and how many, idempotency keys are remembered across
    /// restarts (default 24 hours, 100,000 keys): a publish with a key
    /// accepted within the window is a duplicate and stores nothing.
    pub fn dedup(mut self, keep: Duration, max_keys: usize) -> Self {
        self.keys_for = keep;
        self.max_keys = max_keys;
        self
    }

    /// The in-memory queue of each durable subscription (default 32): what
    /// its feeder reads ahead of the handlers. What a crash can make a
    /// subscription see again is at most this plus its concurrency.
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events;
        self
    }

    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.segment_bytes < 4096 {
            return Err(StoreError::Setting {
                setting: "segment_bytes",
                problem: format!("{} is below 4096", self.segment_bytes),
            });
        }
        if self.capacity == 0 {
            return Err(StoreError::Setting {
                setting: "capacity",
                problem: "0 events".into(),
            });
        }
        Ok(())
    }
}
