//! The bus's two pools of worker threads for blocking handlers:
//! [`WorkerPool`].

use std::fmt;

/// Which of the bus's two pools of worker threads runs a blocking handler.
///
/// Both are bounded, started lazily, and shared by every blocking
/// subscription of the bus; a subscription's
/// [`concurrency`](crate::HandlerBuilder::concurrency) is its own cap
/// inside its pool.
///
/// | pool | for handlers that | default size | subscribe with |
/// |---|---|---|---|
/// | `Cpu` | keep a core busy: parsing, hashing, compressing, rendering | one worker per core | [`.sync()`](crate::HandlerBuilder::sync) |
/// | `Io` | mostly wait: a synchronous database driver, a blocking SDK, file I/O | 64 workers | [`.blocking()`](crate::HandlerBuilder::blocking) |
///
/// Waiting work on the CPU pool wastes a core's worth of worker; CPU work
/// on the I/O pool runs more threads than there are cores, and they take
/// turns on them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum WorkerPool {
    /// Workers for CPU-heavy handlers ([`HandlerBuilder::sync`](crate::HandlerBuilder::sync)).
    Cpu,
    /// Workers for handlers that block on I/O ([`HandlerBuilder::blocking`](crate::HandlerBuilder::blocking)).
    Io,
}

/// The most workers a pool may be given.
pub const MAX_WORKERS: usize = 4096;

/// Workers in the I/O pool unless the builder says otherwise.
pub(crate) const DEFAULT_IO_WORKERS: usize = 64;

/// How much lower than the process the CPU pool's workers run, unless the
/// builder says otherwise.
pub(crate) const DEFAULT_CPU_NICE: u8 = 10;

/// The most [`BusBuilder::cpu_worker_nice`](crate::BusBuilder::cpu_worker_nice) takes.
pub const MAX_NICE: u8 = 19;

impl WorkerPool {
    /// Its name, as in thread names (`tidings-cpu-0`) and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            WorkerPool::Cpu => "cpu",
            WorkerPool::Io => "io",
        }
    }

    /// Workers in the CPU pool unless the builder says otherwise: the
    /// machine's available parallelism.
    pub(crate) fn default_cpu_workers() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

impl fmt::Display for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
