//! One durable topic's log on disk: segment files, appends, group commit,
//! recovery and retention.
//!
//! A topic has a directory of segments named by the first sequence number
//! they may hold and their place in the log (its byte position over every
//! segment ever, which is unique even when no event came between two
//! segments): `00000000000000000001-00000000000000000000.log`. Each segment starts with a
//! checkpoint record (the whole state), so recovery reads the last segment
//! only, whatever is retained. Appends go to the last segment with one
//! `pwrite` under the log's lock (written: in the operating system's
//! hands); a *synced* publish then waits for the syncer thread's next
//! `fdatasync`, which covers every append before it (group commit). A
//! segment that reaches its size is synced, and a new one starts with a
//! checkpoint, synced with its directory entry before anything is written
//! after it.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};

mod open;
mod spare;
mod sync;

use open::sync_dir;
use sync::SyncShared;
pub use sync::SyncStats;

use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::record::{self, Record};
use crate::state::{KeyWindow, State};

/// How a topic's log is kept.
#[derive(Clone, Debug)]
pub(crate) struct LogOptions {
    pub(crate) segment_bytes: u64,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) window: KeyWindow,
    pub(crate) ledger: Option<Arc<Ledger>>,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Recovery {
    /// Segments found.
    pub segments: usize,
    /// Bytes of the last segment read to rebuild the state.
    pub bytes_read: u64,
    /// Bytes cut off the end: a torn or corrupt tail (only ever what was
    /// written by publishes that had not returned `Ok` at the *synced*
    /// level, or a crash's half-written record).
    pub truncated_bytes: u64,
    /// Why the tail was cut, when it was.
    pub truncated_because: Option<&'static str>,
    /// Segments whose opening checkpoint was unreadable (created just
    /// before a crash), removed.
    pub empty_segments_removed: usize,
    /// How long recovery took.
    pub took: Duration,
}

struct Closed {
    first: u64,
    base: u64,
    path: PathBuf,
    bytes: u64,
    /// When its last record was written (its file's modification time).
    last_write: SystemTime,
}

struct Active {
    first: u64,
    base: u64,
    /// Bytes of the checkpoint that opens it.
    opening: u64,
    /// Written through with zeros ahead (a spare): syncs flush data only.
    preallocated: bool,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

struct Inner {
    state: State,
    active: Active,
    closed: VecDeque<Closed>,
    scratch: Vec<u8>,
    stopped: Option<String>,
    /// A file of zeros, written and synced ahead, that the next segment
    /// becomes; and whether one is being made.
    spare: Option<PathBuf>,
    preparing: bool,
    /// Events lost to `max_bytes` / `max_age` before every subscription
    /// had them, per subscription id.
    expired: Vec<(u32, u64)>,
}

impl Active {
    /// The log position after its last record.
    pub(super) fn end(&self) -> u64 {
        self.base + self.len
    }
}

impl Inner {
    /// Bytes of the log on disk: every segment, the active one as far as
    /// it is written.
    fn bytes(&self) -> u64 {
        self.closed.iter().map(|c| c.bytes).sum::<u64>() + self.active.len
    }
}

/// One topic's log.
pub(crate) struct Log {
    pub(crate) topic: String,
    dir: PathBuf,
    opts: LogOptions,
    inner: Mutex<Inner>,
    sync: Arc<SyncShared>,
    /// Bumped after every append of an event; readers wait on it.
    appended: Mutex<u64>,
    appended_cv: Condvar,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Itself, for the threads it starts.
    me: Weak<Log>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Log {
    /// Appends the records `make` returns, under the lock, given the state
    /// (which it may read and must not change: the records are applied to
    /// it once written). Returns what `make` returned beside them and the
    /// log position after them.
    pub(crate) fn append<T>(
        &self,
        make: impl FnOnce(&mut State) -> Result<(Vec<Record>, T), StoreError>,
    ) -> Result<(T, u64), StoreError> {
        self.append_then(make, |_| {})
    }

    /// As [`append`](Log::append), and calls `written` (the bus's own
    /// counting: no user code) once records are written, before any reader
    /// can see them: whoever sees an event handled sees it counted.
    pub(crate) fn append_then<T>(
        &self,
        make: impl FnOnce(&mut State) -> Result<(Vec<Record>, T), StoreError>,
        written: impl FnOnce(&T),
    ) -> Result<(T, u64), StoreError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if let Some(reason) = &inner.stopped {
            return Err(StoreError::Stopped {
                topic: self.topic.clone(),
                reason: reason.clone(),
            });
        }
        // Records after the opening checkpoint count toward the size (a
        // large checkpoint, many keys say, never makes every append roll).
        // A segment that is not preallocated (the first one, or one made
        // while no spare was ready) gives way as soon as a spare is.
        let full = inner.active.len.saturating_sub(inner.active.opening) >= self.opts.segment_bytes;
        if full || (!inner.active.preallocated && inner.spare.is_some()) {
            self.roll(inner)?;
        }
        let (records, out) = make(&mut inner.state)?;
        if records.is_empty() {
            return Ok((out, inner.active.end()));
        }
        inner.scratch.clear();
        for r in &records {
            record::encode(r, &mut inner.scratch).ok_or_else(|| StoreError::Encode {
                topic: self.topic.clone(),
                reason: "over 64 MiB serialized".into(),
            })?;
        }
        let at = inner.active.len;
        if let Err(e) = self.write(inner, at) {
            // Whatever part of it reached the file goes again (and with it
            // the segment's preallocated room).
            inner.active.preallocated = false;
            if let Err(cut) = inner.active.file.set_len(at) {
                inner.stopped = Some(format!(
                    "an append failed ({e}) and could not be undone ({cut})"
                ));
            }
            return Err(StoreError::io(
                "appending to the log",
                &inner.active.path,
                e,
            ));
        }
        inner.active.len += inner.scratch.len() as u64;
        let events = records.iter().any(|r| matches!(r, Record::Event { .. }));
        for r in &records {
            inner.state.apply(r);
        }
        written(&out);
        let end = inner.active.end();
        drop(guard);
        if events {
            *self.appended.lock() += 1;
            self.appended_cv.notify_all();
        }
        Ok((out, end))
    }

    /// Writes the scratch buffer at `at` of the active segment; with a
    /// ledger that limits space, only what fits, then `ENOSPC`.
    fn write(&self, inner: &Inner, at: u64) -> std::io::Result<()> {
        let want = inner.scratch.len() as u64;
        let fits = self
            .opts
            .ledger
            .as_ref()
            .map_or(want, |l| l.take_space(want));
        if fits < want {
            let part = usize::try_from(fits).unwrap_or(0);
            inner.active.file.write_all_at(&inner.scratch[..part], at)?;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        inner.active.file.write_all_at(&inner.scratch, at)
    }

    /// Starts a new segment: the active one is synced first (every waiter
    /// on it is then covered), and old segments are let go of as retention
    /// allows.
    fn roll(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let old = &inner.active;
        if let Err(e) = old.file.sync_data() {
            let reason = format!("syncing {} failed: {e}", old.path.display());
            inner.stopped = Some(reason.clone());
            self.fail_sync(reason);
            return Err(StoreError::io("syncing a full segment", &old.path, e));
        }
        let end = old.end();
        self.synced_to(&old.path, old.base, end);
        let first = inner.state.next_seq;
        let spare = inner.spare.take();
        let new = Self::create_segment(
            &self.dir,
            first,
            end,
            &mut inner.state,
            self.opts.ledger.as_ref(),
            spare,
        )?;
        let old = std::mem::replace(&mut inner.active, new);
        inner.closed.push_back(Closed {
            first: old.first,
            base: old.base,
            path: old.path,
            bytes: old.len,
            last_write: SystemTime::now(),
        });
        self.start_spare(inner);
        self.retain(inner)
    }

    /// Deletes the oldest segments that every durable subscription has
    /// settled, and those over the size or age limit (what a subscription
    /// had not settled of them is counted as expired).
    fn retain(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let mut removed = false;
        while let Some(oldest) = inner.closed.front() {
            // Its last sequence number is below the next segment's first.
            let next_first = inner.closed.get(1).map_or(inner.active.first, |c| c.first);
            let consumed = next_first <= inner.state.needed_from();
            let over_size = self.opts.max_bytes.is_some_and(|max| inner.bytes() > max);
            let over_age = self
                .opts
                .max_age
                .is_some_and(|max| oldest.last_write.elapsed().is_ok_and(|age| age > max));
            if !(consumed || over_size || over_age) {
                break;
            }
            if !consumed {
                for sub in &mut inner.state.subs {
                    if sub.done_below < next_first {
                        let lost = (sub.done_below..next_first)
                            .filter(|s| !sub.done_above.contains(s))
                            .count() as u64;
                        match inner.expired.iter_mut().find(|(id, _)| *id == sub.id) {
                            Some((_, n)) => *n += lost,
                            None => inner.expired.push((sub.id, lost)),
                        }
                        crate::metrics::expired(&self.topic, &sub.name, lost);
                        tracing::warn!(topic = %self.topic, subscription = %sub.name, events = lost,
                            "durable topic: retention let go of events a subscription had not settled");
                        sub.done_above.retain(|s| *s >= next_first);
                        sub.done_below = next_first;
                    }
                }
            }
            let path = oldest.path.clone();
            fs::remove_file(&path)
                .map_err(|e| StoreError::io("removing an old segment", &path, e))?;
            inner.closed.pop_front();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        crate::metrics::bytes(&self.topic, inner.bytes(), inner.closed.len() + 1);
        Ok(())
    }

    /// Reads every record the log still has, oldest first, and gives each
    /// to `f`: a full scan, for inspection (stored dead letters), never on
    /// a hot path. A segment let go of meanwhile is skipped; the newest
    /// records being written may be missed.
    pub(crate) fn scan_records(&self, mut f: impl FnMut(&Record)) -> Result<(), StoreError> {
        let paths: Vec<PathBuf> = {
            let inner = self.inner.lock();
            inner
                .closed
                .iter()
                .map(|c| c.path.clone())
                .chain(std::iter::once(inner.active.path.clone()))
                .collect()
        };
        for path in paths {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("reading a segment", &path, e)),
            };
            let mut at = 0;
            while let record::Decoded::Record(r, size) = record::decode(&bytes[at..]) {
                f(&r);
                at += size;
            }
        }
        Ok(())
    }

    /// The state, read under the lock.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.lock().state)
    }

    /// Where a reader may read in the segment at log position `base`:
    /// the active segment's length, or, for a closed (whole) one, the next
    /// segment's position; `Gone` once retention let go of it.
    pub(crate) fn limit(&self, base: u64) -> Limit {
        let inner = self.inner.lock();
        if inner.active.base == base {
            return Limit::Active(inner.active.len);
        }
        let i = inner.closed.iter().position(|c| c.base == base);
        match i {
            Some(i) => Limit::Closed {
                next: inner
                    .closed
                    .get(i + 1)
                    .map_or(inner.active.base, |c| c.base),
            },
            None => Limit::Gone,
        }
    }

    /// The segment (its position) where a reader looking for `seq` starts:
    /// the last one whose first sequence number is at or below it, or the
    /// oldest one if every segment starts above it.
    pub(crate) fn segment_for(&self, seq: u64) -> u64 {
        let inner = self.inner.lock();
        if inner.active.first <= seq {
            return inner.active.base;
        }
        inner
            .closed
            .iter()
            .rev()
            .find(|c| c.first <= seq)
            .or(inner.closed.front())
            .map_or(inner.active.base, |c| c.base)
    }

    /// The first sequence number the oldest segment may hold.
    pub(crate) fn oldest_first(&self) -> u64 {
        let inner = self.inner.lock();
        inner.closed.front().map_or(inner.active.first, |c| c.first)
    }

    /// The file of the segment at position `base`, if it is still there.
    pub(crate) fn path_of(&self, base: u64) -> Option<PathBuf> {
        let inner = self.inner.lock();
        if inner.active.base == base {
            return Some(inner.active.path.clone());
        }
        inner
            .closed
            .iter()
            .find(|c| c.base == base)
            .map(|c| c.path.clone())
    }

    /// Waits (at most `wait`) for an append after `seen`; returns the
    /// current count.
    pub(crate) fn wait_appended(&self, seen: u64, wait: Duration) -> u64 {
        let mut n = self.appended.lock();
        if *n == seen {
            self.appended_cv.wait_for(&mut n, wait);
        }
        *n
    }

    pub(crate) fn appended(&self) -> u64 {
        *self.appended.lock()
    }

    /// Disk use, segments, expired events per subscription id.
    pub(crate) fn usage(&self) -> (u64, usize, Vec<(u32, u64)>) {
        let inner = self.inner.lock();
        (inner.bytes(), inner.closed.len() + 1, inner.expired.clone())
    }

    /// Syncs everything written and stops the syncer (the store closes).
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        // No append after this one: what is written so far is what the
        // last sync must cover, and a publish after the close fails
        // (`Stopped`) instead of waiting for a syncer that is gone.
        let (file, path, end, base) = {
            let mut inner = self.inner.lock();
            inner
                .stopped
                .get_or_insert_with(|| "the store was closed".into());
            (
                Arc::clone(&inner.active.file),
                inner.active.path.clone(),
                inner.active.end(),
                inner.active.base,
            )
        };
        let synced = file
            .sync_data()
            .map_err(|e| StoreError::io("syncing at close", &path, e));
        match &synced {
            Ok(()) => {
                self.synced_to(&path, base, end);
            }
            Err(e) => self.fail_sync(format!("the sync at close failed: {e}")),
        }
        self.stop_syncer();
        synced
    }

    /// Stops the log at once, syncing nothing: appends fail from now on,
    /// and no sync is under way when this returns.
    pub(crate) fn halt(&self) {
        self.inner
            .lock()
            .stopped
            .get_or_insert_with(|| "the store was halted".into());
        self.fail_sync("the store was halted".into());
        self.stop_syncer();
    }

    fn stop_syncer(&self) {
        self.sync.state.lock().stop = true;
        self.sync.cv.notify_all();
        if let Some(handle) = self.syncer.lock().take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop_syncer();
    }
}

/// Where a reader may read in one segment.
pub(crate) enum Limit {
    Active(u64),
    Closed { next: u64 },
    Gone,
}
