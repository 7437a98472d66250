//! What a durable topic's handles and its feeders share: the topic's log
//! and settings, and each durable subscription's numbers that live outside
//! the log.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use tidings::Bus;

use crate::log::{Log, Recovery};
use crate::options::TopicOptions;
use crate::state::SubState;

/// One durable topic, shared by its handles and feeders.
pub(crate) struct TopicInner {
    pub(crate) bus: Bus,
    pub(crate) log: Arc<Log>,
    pub(crate) options: TopicOptions,
    pub(crate) recovery: Recovery,
    pub(crate) stored: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) subs: Mutex<Vec<Arc<SubNumbers>>>,
}

/// A durable subscription's numbers that live outside the log.
pub(crate) struct SubNumbers {
    pub(crate) id: u32,
    pub(crate) redelivered: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    /// Publish times of what it was offered and has not settled.
    pub(crate) pending: Mutex<BTreeMap<u64, u64>>,
}

impl SubNumbers {
    /// When the oldest event it has not settled was published, if its
    /// feeder has read it.
    pub(crate) fn oldest_unsettled(&self, state: &SubState) -> Option<u64> {
        let pending = self.pending.lock();
        pending
            .get(&state.done_below)
            .copied()
            .or_else(|| pending.values().next().copied())
    }
}
