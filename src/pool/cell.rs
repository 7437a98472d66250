//! What a worker shares with its pool's keeper about the handler run it is
//! in: one atomic word, so that each run over budget is counted exactly
//! once, by the keeper while it runs or by the worker when it ends. The
//! loom model below checks that hand-off:
//!
//! ```text
//! RUSTFLAGS="--cfg tidings_loom" cargo test -p tidings --lib --release loom
//! ```

use crate::sync::{AtomicU64, Ordering};

/// What a worker shares with the keeper about the run it is in.
pub(crate) struct WorkerCell {
    /// When the current handler run began, in nanoseconds since the pool's
    /// epoch, plus one; 0 between runs. [`COUNTED`] is set by the keeper
    /// when it counts the run as over budget, so that the run's end does
    /// not count it again: the keeper sets it with a compare-exchange that
    /// fails once the run has ended, and the worker learns of it from the
    /// swap that ends the run. Each run is counted exactly once.
    pub(crate) run: AtomicU64,
}

/// The bit of [`WorkerCell::run`] that says the keeper counted the run.
pub(crate) const COUNTED: u64 = 1 << 63;

impl WorkerCell {
    /// A run began at `since` (below [`COUNTED`], above 0).
    pub(crate) fn begin(&self, since: u64) {
        self.run.store(since, Ordering::Release);
    }

    /// The run ended: whether the keeper counted it.
    pub(crate) fn end(&self) -> bool {
        self.run.swap(0, Ordering::AcqRel) & COUNTED != 0
    }

    /// The start of the run going on, if one is.
    pub(crate) fn running(&self) -> Option<u64> {
        match self.run.load(Ordering::Acquire) & !COUNTED {
            0 => None,
            since => Some(since),
        }
    }

    /// The keeper counts the run that began at `since` as over budget:
    /// `true` if it is still going and nobody counted it yet.
    pub(crate) fn count(&self, since: u64) -> bool {
        self.run
            .compare_exchange(since, since | COUNTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Default for WorkerCell {
    fn default() -> Self {
        WorkerCell {
            run: AtomicU64::new(0),
        }
    }
}

#[cfg(all(test, tidings_loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::WorkerCell;

    /// A run the keeper sees over budget while the worker ends it: counted
    /// by exactly one of them, and a count never lands on another run.
    #[test]
    fn loom_a_long_run_is_counted_once() {
        loom::model(|| {
            let cell = Arc::new(WorkerCell::default());
            cell.begin(7);
            let keeper = {
                let cell = Arc::clone(&cell);
                thread::spawn(move || match cell.running() {
                    Some(since) => (since, cell.count(since)),
                    None => (0, false),
                })
            };
            // The worker ends the run, then begins another.
            let counted_by_keeper_for_worker = cell.end();
            cell.begin(9);
            let (seen, counted) = keeper.join().unwrap();
            // The worker learns of the keeper's count exactly when there
            // was one: the run is counted once, by one of them.
            assert_eq!(counted_by_keeper_for_worker, counted && seen == 7);
            // The second run is counted only if the keeper saw that one:
            // a count meant for the first never lands on it.
            assert_eq!(cell.end(), counted && seen == 9);
        });
    }
}
