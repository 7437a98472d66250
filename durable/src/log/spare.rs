//! Spare segments: a file of zeros written and synced ahead of time, which
//! the next segment becomes, so that its syncs flush data only.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Inner, Log};

/// The name of the spare segment file being made or ready.
pub(super) const SPARE: &str = "spare";

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

impl Log {
    /// Starts making the next segment's spare, unless one is made or
    /// being made.
    pub(super) fn prepare_spare(&self) {
        let mut inner = self.inner.lock();
        self.start_spare(&mut inner);
    }

    pub(super) fn start_spare(&self, inner: &mut Inner) {
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
}
