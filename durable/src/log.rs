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
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::record::{self, Decoded, Record};
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
    /// The log position (bytes over every segment ever) where the active
    /// segment starts.
    base: u64,
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

#[derive(Default)]
struct SyncState {
    /// Log position every byte below which is synced.
    synced: u64,
    /// The highest position a waiter asked for.
    requested: u64,
    waiters: Vec<(u64, Waker)>,
    failed: Option<String>,
    stop: bool,
    syncs: u64,
    synced_publishes: u64,
    /// Sync latencies in microseconds, the last 1024.
    latencies: VecDeque<u32>,
}

struct SyncShared {
    state: Mutex<SyncState>,
    cv: Condvar,
}

/// Sync numbers of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// The name of the spare segment file being made or ready.
const SPARE: &str = "spare";

/// Writes `size` bytes of zeros to a new file at `path` and syncs it.
fn write_zeros(path: &Path, size: u64) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    file.sync_all()
}

fn segment_name(first: u64, base: u64) -> String {
    format!("{first:020}-{base:020}.log")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing the directory", dir, e))
}

/// A segment file found on disk.
struct Found {
    first: u64,
    base: u64,
    path: PathBuf,
}

/// The segments of a topic directory, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<Found>, StoreError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("listing segments", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing segments", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((first, base)) = name.strip_suffix(".log").and_then(|n| n.split_once('-')) else {
            continue;
        };
        let (Ok(first), Ok(base)) = (first.parse::<u64>(), base.parse::<u64>()) else {
            continue;
        };
        found.push(Found {
            first,
            base,
            path: entry.path(),
        });
    }
    found.sort_by_key(|f| f.base);
    Ok(found)
}

/// Reads a whole segment file.
fn read_all(path: &Path) -> Result<Vec<u8>, StoreError> {
    fs::read(path).map_err(|e| StoreError::io("reading a segment", path, e))
}

/// Scans `bytes` from the start: the records up to the first that is not
/// whole and valid, and where that is.
fn scan(bytes: &[u8]) -> (Vec<Record>, usize, Option<&'static str>) {
    let mut records = Vec::new();
    let mut at = 0;
    loop {
        match record::decode(&bytes[at..]) {
            Decoded::Record(r, size) => {
                records.push(r);
                at += size;
            }
            Decoded::End => {
                // Zeros: the end, unless there is something after them.
                let rest = &bytes[at..];
                let why = rest
                    .iter()
                    .any(|b| *b != 0)
                    .then_some("zeros before more data");
                return (records, at, why);
            }
            Decoded::Short if at == bytes.len() => return (records, at, None),
            Decoded::Short => return (records, at, Some("a record cut short")),
            Decoded::Bad(why) => return (records, at, Some(why)),
        }
    }
}

impl Log {
    /// Opens (or creates) the log of `topic` in `dir`, recovering it.
    pub(crate) fn open(
        topic: &str,
        dir: PathBuf,
        opts: LogOptions,
    ) -> Result<(Arc<Log>, Recovery), StoreError> {
        let began = Instant::now();
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io("creating the topic directory", &dir, e))?;
        let mut recovery = Recovery::default();
        let mut segments = list_segments(&dir)?;
        let mut state = State::new(opts.window);
        // The last segment whose checkpoint reads: one created just before
        // a crash may have none, and holds nothing then.
        let mut active = None;
        while let Some(Found { first, base, path }) = segments.pop() {
            let bytes = read_all(&path)?;
            let (records, good, why) = scan(&bytes);
            match records.first() {
                Some(Record::Checkpoint { .. }) => {
                    for r in &records {
                        state.apply(r);
                    }
                    recovery.bytes_read = good as u64;
                    // Zeros after the last record are a preallocated
                    // segment's room, not a torn tail.
                    if let Some(why) = why {
                        recovery.truncated_bytes += (bytes.len() - good) as u64;
                        recovery.truncated_because = Some(why);
                    }
                    let good = good as u64;
                    let opening = match record::decode(&bytes) {
                        Decoded::Record(_, size) => size as u64,
                        _ => 0,
                    };
                    let preallocated = why.is_none() && bytes.len() as u64 > good;
                    active = Some((first, base, opening, preallocated, path, good));
                    break;
                }
                _ => {
                    fs::remove_file(&path)
                        .map_err(|e| StoreError::io("removing an empty segment", &path, e))?;
                    recovery.empty_segments_removed += 1;
                    if bytes.iter().any(|b| *b != 0) {
                        recovery.truncated_bytes += bytes.len() as u64;
                    }
                }
            }
        }
        let mut closed = VecDeque::new();
        for Found { first, base, path } in segments {
            let meta = fs::metadata(&path)
                .map_err(|e| StoreError::io("reading a segment's size", &path, e))?;
            closed.push_back(Closed {
                first,
                base,
                path,
                bytes: meta.len(),
                last_write: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        let active = match active {
            Some((first, base, opening, preallocated, path, good)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io("opening a segment", &path, e))?;
                if recovery.truncated_because.is_some() {
                    tracing::warn!(topic, path = %path.display(), bytes = recovery.truncated_bytes,
                        why = recovery.truncated_because, "durable topic: cut a torn tail off its log");
                    file.set_len(good)
                        .map_err(|e| StoreError::io("cutting a torn tail", &path, e))?;
                    file.sync_all()
                        .map_err(|e| StoreError::io("syncing a repaired segment", &path, e))?;
                }
                Active {
                    first,
                    base,
                    opening,
                    preallocated,
                    path,
                    file: Arc::new(file),
                    len: good,
                }
            }
            None => {
                let first = state.next_seq;
                let base = closed.back().map_or(0, |c| c.base.saturating_add(c.bytes));
                Self::create_segment(&dir, first, base, &mut state, opts.ledger.as_ref(), None)?
            }
        };
        let base = active.base;
        recovery.segments = closed.len() + 1;
        recovery.took = began.elapsed();
        let len = active.len;
        let sync = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                synced: base + len,
                requested: base + len,
                ..SyncState::default()
            }),
            cv: Condvar::new(),
        });
        // A spare left by a run that ended while making it.
        let _ = fs::remove_file(dir.join(SPARE));
        let log = Arc::new_cyclic(|me| Log {
            topic: topic.to_owned(),
            dir,
            opts,
            inner: Mutex::new(Inner {
                state,
                active,
                closed,
                base,
                scratch: Vec::new(),
                stopped: None,
                spare: None,
                preparing: false,
                expired: Vec::new(),
            }),
            sync: Arc::clone(&sync),
            appended: Mutex::new(0),
            appended_cv: Condvar::new(),
            syncer: Mutex::new(None),
            me: me.clone(),
        });
        let weak = Arc::downgrade(&log);
        let name = format!("tidings-sync:{topic}");
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || syncer(weak, sync))
            .map_err(|e| StoreError::io("starting the syncer thread", &log.dir, e))?;
        *log.syncer.lock() = Some(handle);
        log.prepare_spare();
        Ok((log, recovery))
    }

    /// A new segment starting at `first`, opened by a checkpoint of
    /// `state`, synced with its directory entry. With `spare`, a file of
    /// zeros written and synced ahead of time becomes it: its blocks exist
    /// already, so a later `fdatasync` flushes data only, not the file's
    /// size and extents as well (about half the time of a sync here).
    fn create_segment(
        dir: &Path,
        first: u64,
        base: u64,
        state: &mut State,
        ledger: Option<&Arc<Ledger>>,
        spare: Option<PathBuf>,
    ) -> Result<Active, StoreError> {
        let path = dir.join(segment_name(first, base));
        // A segment's name is never used twice (a rename onto an existing
        // name is refused below, `create_new` refuses one): nothing already
        // in the log is ever overwritten by a roll.
        let preallocated = spare.is_some() && !path.exists();
        let file = match spare {
            Some(spare) if !path.exists() => {
                fs::rename(&spare, &path)
                    .map_err(|e| StoreError::io("taking a spare segment", &spare, e))?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io("opening a spare segment", &path, e))?
            }
            _ => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StoreError::io("creating a segment", &path, e))?,
        };
        let mut buf = Vec::new();
        record::encode(&state.checkpoint(now_ms()), &mut buf).ok_or_else(|| {
            StoreError::Setting {
                setting: "dedup window",
                problem: "the checkpoint of the topic's state is over 64 MiB: keep fewer keys"
                    .into(),
            }
        })?;
        file.write_all_at(&buf, 0)
            .map_err(|e| StoreError::io("writing a checkpoint", &path, e))?;
        file.sync_data()
            .map_err(|e| StoreError::io("syncing a new segment", &path, e))?;
        sync_dir(dir)?;
        if let Some(ledger) = ledger {
            ledger.created(&path);
            ledger.synced(&path, buf.len() as u64);
            ledger.dir_synced(dir);
        }
        Ok(Active {
            first,
            base,
            opening: buf.len() as u64,
            preallocated,
            path,
            file: Arc::new(file),
            len: buf.len() as u64,
        })
    }

    /// Appends the records `make` returns, under the lock, given the state
    /// (which it may read and must not change: the records are applied to
    /// it once written). Returns what `make` returned beside them and the
    /// log position after them.
    pub(crate) fn append<T>(
        &self,
        make: impl FnOnce(&mut State) -> Result<(Vec<Record>, T), StoreError>,
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
            return Ok((out, inner.base + inner.active.len));
        }
        inner.scratch.clear();
        for r in &records {
            record::encode(r, &mut inner.scratch).ok_or_else(|| StoreError::Encode {
                topic: self.topic.clone(),
                reason: "over 64 MiB serialized".into(),
            })?;
        }
        let at = inner.active.len;
        if let Err(e) = inner.active.file.write_all_at(&inner.scratch, at) {
            // Whatever part of it reached the file goes again.
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
        let end = inner.base + inner.active.len;
        drop(guard);
        if events {
            *self.appended.lock() += 1;
            self.appended_cv.notify_all();
        }
        Ok((out, end))
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
        if let Some(ledger) = &self.opts.ledger {
            ledger.synced(&old.path, old.len);
        }
        let end = inner.base + old.len;
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
        inner.base = end;
        {
            let mut s = self.sync.state.lock();
            s.synced = s.synced.max(end);
            s.requested = s.requested.max(end);
        }
        self.wake_synced();
        self.start_spare(inner);
        self.retain(inner)
    }

    /// Starts making the next segment's spare, unless one is made or
    /// being made.
    fn prepare_spare(&self) {
        let mut inner = self.inner.lock();
        self.start_spare(&mut inner);
    }

    fn start_spare(&self, inner: &mut Inner) {
        if inner.preparing || inner.spare.is_some() || inner.stopped.is_some() {
            return;
        }
        inner.preparing = true;
        let me = self.me.clone();
        let path = self.dir.join(SPARE);
        // Room for the segment's records and its opening checkpoint.
        let size = self.opts.segment_bytes.saturating_add(64 << 10);
        let started = std::thread::Builder::new()
            .name("tidings-spare".into())
            .spawn(move || {
                let made = write_zeros(&path, size);
                if let Some(log) = me.upgrade() {
                    let mut inner = log.inner.lock();
                    inner.preparing = false;
                    match made {
                        Ok(()) if inner.stopped.is_none() => inner.spare = Some(path),
                        Ok(()) => {}
                        Err(e) => tracing::warn!(topic = %log.topic, error = %e,
                            "durable topic: could not prepare the next segment; it will be made when needed"),
                    }
                }
            });
        if started.is_err() {
            inner.preparing = false;
        }
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
            let total: u64 = inner.closed.iter().map(|c| c.bytes).sum::<u64>() + inner.active.len;
            let over_size = self.opts.max_bytes.is_some_and(|max| total > max);
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
        Ok(())
    }

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

    fn fail_sync(&self, reason: String) {
        let waiters = {
            let mut s = self.sync.state.lock();
            s.failed.get_or_insert(reason);
            std::mem::take(&mut s.waiters)
        };
        waiters.into_iter().for_each(|(_, w)| w.wake());
    }

    fn wake_synced(&self) {
        let ready: Vec<Waker> = {
            let mut s = self.sync.state.lock();
            let synced = s.synced;
            let (ready, wait): (Vec<_>, Vec<_>) =
                s.waiters.drain(..).partition(|(p, _)| *p <= synced);
            s.waiters = wait;
            ready.into_iter().map(|(_, w)| w).collect()
        };
        ready.into_iter().for_each(Waker::wake);
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
        let bytes = inner.closed.iter().map(|c| c.bytes).sum::<u64>() + inner.active.len;
        (bytes, inner.closed.len() + 1, inner.expired.clone())
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

    /// Syncs everything written and stops the syncer (the store closes).
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        let (file, path, end) = {
            let inner = self.inner.lock();
            (
                Arc::clone(&inner.active.file),
                inner.active.path.clone(),
                inner.base + inner.active.len,
            )
        };
        let synced = file
            .sync_data()
            .map_err(|e| StoreError::io("syncing at close", &path, e));
        if synced.is_ok() {
            if let Some(ledger) = &self.opts.ledger {
                ledger.synced(&path, end - self.inner.lock().base);
            }
            self.sync.state.lock().synced = end;
            self.wake_synced();
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

/// The syncer: waits for a synced publish, syncs the active segment once
/// for every publish waiting by then, and wakes them.
fn syncer(log: Weak<Log>, shared: Arc<SyncShared>) {
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
                inner.base + inner.active.len,
                inner.base,
            )
        };
        let began = Instant::now();
        match file.sync_data() {
            Ok(()) => {
                if let Some(ledger) = &log.opts.ledger {
                    ledger.synced(&path, end - base);
                }
                let took = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
                {
                    let mut s = shared.state.lock();
                    s.synced = s.synced.max(end);
                    s.syncs += 1;
                    if s.latencies.len() == 1024 {
                        s.latencies.pop_front();
                    }
                    s.latencies.push_back(took);
                }
                log.wake_synced();
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
