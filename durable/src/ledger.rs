//! What has reached the disk for sure, for the power-loss simulation: a
//! record of every sync the store makes, and a way to throw away every
//! byte that was not synced, as a power cut would.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// The synced length of every file a store wrote, and whether its
/// directory entry was synced. Give one to
/// [`StoreOptions::ledger`](crate::StoreOptions::ledger) and call
/// [`cut_power`](Ledger::cut_power) once the store is gone (dropped
/// without closing, or its process killed).
#[derive(Debug, Default)]
pub struct Ledger {
    files: Mutex<HashMap<PathBuf, Mark>>,
    /// Bytes appends may still write, when the disk is to fill up.
    space: Mutex<Option<u64>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    synced: u64,
    entry_synced: bool,
}

/// What a simulated power cut did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PowerCut {
    /// Bytes past the synced length thrown away.
    pub bytes_lost: u64,
    /// Files whose directory entry was never synced, removed.
    pub files_lost: usize,
    /// Bytes of junk left where unsynced data was (a torn write).
    pub junk_bytes: u64,
}

impl Ledger {
    /// A new, empty ledger.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Lets appends write only `bytes` more (`None`: no limit), as a disk
    /// that fills up would: the append that does not fit writes what fits
    /// and fails with `ENOSPC`.
    pub fn limit_space(&self, bytes: Option<u64>) {
        *self.space.lock() = bytes;
    }

    /// How many of `want` bytes an append may write.
    pub(crate) fn take_space(&self, want: u64) -> u64 {
        let mut space = self.space.lock();
        match space.as_mut() {
            None => want,
            Some(left) => {
                let fits = want.min(*left);
                *left -= fits;
                fits
            }
        }
    }

    pub(crate) fn created(&self, path: &Path) {
        self.files.lock().insert(path.to_owned(), Mark::default());
    }

    pub(crate) fn synced(&self, path: &Path, len: u64) {
        let mut files = self.files.lock();
        let mark = files.entry(path.to_owned()).or_insert(Mark {
            synced: 0,
            // A file the store did not create in this run was on disk
            // before it.
            entry_synced: true,
        });
        mark.synced = mark.synced.max(len);
    }

    pub(crate) fn dir_synced(&self, dir: &Path) {
        for (path, mark) in self.files.lock().iter_mut() {
            if path.parent() == Some(dir) {
                mark.entry_synced = true;
            }
        }
    }

    /// Throws away what a power cut would: files whose entry was never
    /// synced, and every byte past each file's synced length; then, where
    /// `junk` says, leaves that many bytes of junk past it (a sector
    /// half-written as the power went). Forgets everything.
    pub fn cut_power(&self, mut junk: impl FnMut(&Path) -> Vec<u8>) -> std::io::Result<PowerCut> {
        let mut cut = PowerCut::default();
        let files = std::mem::take(&mut *self.files.lock());
        for (path, mark) in files {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue; // removed by retention
            };
            if !mark.entry_synced {
                std::fs::remove_file(&path)?;
                cut.files_lost += 1;
                cut.bytes_lost += meta.len();
                continue;
            }
            if meta.len() > mark.synced {
                cut.bytes_lost += meta.len() - mark.synced;
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(mark.synced)?;
                let junk = junk(&path);
                let n = junk.len().min((meta.len() - mark.synced) as usize);
                if n > 0 {
                    file.write_all_at(&junk[..n], mark.synced)?;
                    cut.junk_bytes += n as u64;
                }
            }
        }
        Ok(cut)
    }
}
