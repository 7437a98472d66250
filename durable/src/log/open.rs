//! Opening a topic's log: its segment files, recovery (the last segment's
//! checkpoint and records, a torn tail cut off), and new segments.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use super::spare::SPARE;
use super::sync::{syncer, SyncShared, SyncState};
use super::{now_ms, Active, Closed, Inner, Log, LogOptions, Recovery};
use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::record::{self, Decoded, Record};
use crate::state::State;

fn segment_name(first: u64, base: u64) -> String {
    format!("{first:020}-{base:020}.log")
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
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
                    let torn = why.is_some();
                    active = Some((first, base, opening, preallocated, torn, path, good));
                    break;
                }
                _ => {
                    fs::remove_file(&path)
                        .map_err(|e| StoreError::io("removing an empty segment", &path, e))?;
                    recovery.empty_segments_removed += 1;
                    if bytes.iter().any(|b| *b != 0) {
                        // A checkpoint torn by the crash (a large write can
                        // stop part-way when the process is killed): the
                        // state it copied is whole in the segment before.
                        recovery.truncated_bytes += bytes.len() as u64;
                        recovery.truncated_because =
                            Some("a new segment whose opening checkpoint was torn");
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
            Some((first, base, opening, preallocated, torn, path, good)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io("opening a segment", &path, e))?;
                if recovery.truncated_because.is_some() {
                    tracing::warn!(
                        topic,
                        bytes = recovery.truncated_bytes,
                        why = recovery.truncated_because,
                        "durable topic: recovery cut a torn tail off its log"
                    );
                }
                if torn {
                    tracing::debug!(topic, path = %path.display(), bytes = recovery.truncated_bytes,
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
        recovery.segments = closed.len() + 1;
        recovery.took = began.elapsed();
        crate::metrics::recovery(topic, recovery.took, recovery.truncated_bytes);
        let end = active.end();
        let sync = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                synced: end,
                requested: end,
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
    pub(super) fn create_segment(
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
}
