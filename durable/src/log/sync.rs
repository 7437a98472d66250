//! Group commit: the syncer thread of a topic's log, and the publishes
//! that wait for it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::Log;
use crate::error::StoreError;

#[derive(Default)]
pub(super) struct SyncState {
    /// Log position every byte below which is synced.
    pub(super) synced: u64,
    /// The highest position a waiter asked for.
    pub(super) requested: u64,
    pub(super) waiters: Vec<(u64, Waker)>,
    pub(super) failed: Option<String>,
    pub(super) stop: bool,
    pub(super) syncs: u64,
    pub(super) synced_publishes: u64,
    /// Sync latencies in microseconds, the last 1024.
    pub(super) latencies: VecDeque<u32>,
}

pub(super) struct SyncShared {
    pub(super) state: Mutex<SyncState>,
    pub(super) cv: Condvar,
}

/// Sync numbers of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SyncStats {
    /// `fdatasync` calls made for synced publishes.
    pub syncs: u64,
    /// Synced publishes they covered: `synced_publishes / syncs` is the
    /// average group.
    pub synced_publishes: u64,
    /// Median sync latency of the last 1024, in microseconds.
    pub p50_us: u32,
    /// 99th percentile of the last 1024, in microseconds.
    pub p99_us: u32,
}

impl Log {
    /// Waits until every byte below `pos` is synced.
    pub(crate) fn poll_synced(&self, pos: u64, waker: &Waker) -> Poll<Result<(), StoreError>> {
        let mut s = self.sync.state.lock();
        if let Some(reason) = &s.failed {
            return Poll::Ready(Err(StoreError::Stopped {
                topic: self.topic.clone(),
                reason: reason.clone(),
            }));
        }
        if s.synced >= pos {
            return Poll::Ready(Ok(()));
        }
        if !s
            .waiters
            .iter()
            .any(|(p, w)| *p == pos && w.will_wake(waker))
        {
            s.waiters.push((pos, waker.clone()));
        }
        if pos > s.requested {
            s.requested = pos;
            self.sync.cv.notify_one();
        }
        Poll::Pending
    }

    pub(super) fn fail_sync(&self, reason: String) {
        let waiters = {
            let mut s = self.sync.state.lock();
            s.failed.get_or_insert(reason);
            std::mem::take(&mut s.waiters)
        };
        waiters.into_iter().for_each(|(_, w)| w.wake());
    }

    /// The segment at `path`, which starts at log position `base`, is on
    /// disk up to position `end`: the ledger hears of it, and every publish
    /// that covers wakes. How many woke.
    pub(super) fn synced_to(&self, path: &Path, base: u64, end: u64) -> usize {
        if let Some(ledger) = &self.opts.ledger {
            ledger.synced(path, end - base);
        }
        {
            let mut s = self.sync.state.lock();
            s.synced = s.synced.max(end);
        }
        self.wake_synced()
    }

    /// Wakes every publish the syncs so far cover; how many.
    pub(super) fn wake_synced(&self) -> usize {
        let ready: Vec<Waker> = {
            let mut s = self.sync.state.lock();
            let synced = s.synced;
            let (ready, wait): (Vec<_>, Vec<_>) =
                s.waiters.drain(..).partition(|(p, _)| *p <= synced);
            s.waiters = wait;
            ready.into_iter().map(|(_, w)| w).collect()
        };
        let woken = ready.len();
        ready.into_iter().for_each(Waker::wake);
        woken
    }

    pub(crate) fn sync_stats(&self) -> SyncStats {
        let s = self.sync.state.lock();
        let mut l: Vec<u32> = s.latencies.iter().copied().collect();
        l.sort_unstable();
        let at = |q: usize| {
            l.get((l.len().saturating_sub(1)) * q / 100)
                .copied()
                .unwrap_or(0)
        };
        SyncStats {
            syncs: s.syncs,
            synced_publishes: s.synced_publishes,
            p50_us: at(50),
            p99_us: at(99),
        }
    }

    pub(crate) fn count_synced_publish(&self) {
        self.sync.state.lock().synced_publishes += 1;
    }
}

/// The syncer: waits for a synced publish, syncs the active segment once
/// for every publish waiting by then, and wakes them.
pub(super) fn syncer(log: Weak<Log>, shared: Arc<SyncShared>) {
    loop {
        {
            let mut s = shared.state.lock();
            while s.requested <= s.synced && !s.stop {
                shared.cv.wait(&mut s);
            }
            if s.stop {
                return;
            }
        }
        let Some(log) = log.upgrade() else { return };
        let (file, path, end, base) = {
            let inner = log.inner.lock();
            (
                Arc::clone(&inner.active.file),
                inner.active.path.clone(),
                inner.active.end(),
                inner.active.base,
            )
        };
        let began = Instant::now();
        match file.sync_data() {
            Ok(()) => {
                let took = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
                {
                    let mut s = shared.state.lock();
                    s.syncs += 1;
                    if s.latencies.len() == 1024 {
                        s.latencies.pop_front();
                    }
                    s.latencies.push_back(took);
                }
                let group = log.synced_to(&path, base, end);
                crate::metrics::sync(&log.topic, began.elapsed(), group);
            }
            Err(e) => {
                let reason = format!("fdatasync of {} failed: {e}", path.display());
                tracing::error!(topic = %log.topic, %reason, "durable topic stopped");
                log.inner.lock().stopped.get_or_insert(reason.clone());
                log.fail_sync(reason);
            }
        }
    }
}
