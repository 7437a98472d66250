//! The bus's two bounded pools of worker threads, where blocking handlers
//! run (see [`WorkerPool`]).
//!
//! Each runner of a blocking subscription is a small task: its future (the
//! same attempt loop an async handler's tokio task runs) is polled by
//! whichever worker takes it up, calls the handler synchronously inside
//! the poll, and waits (for an event, a retry's delay, an open breaker)
//! without holding a worker. So the number of threads is the pool's size,
//! whatever the number of subscriptions, and a subscription's
//! `concurrency` is how many of its runners may hold workers at once.
//!
//! **Fairness.** Runners wait for a worker in order of their
//! subscription's *virtual time*: the handler time it has used, and never
//! less than the virtual time of the last runner started (so a
//! subscription that was idle cannot bank credit and then hold every
//! worker). A runner with more events keeps its worker while nobody waits
//! and gives it up after each run while someone does. A quiet subscription
//! has used little time, so its event is next for the first worker that
//! frees: it waits at most one handler run of another subscription,
//! however many runners of a flooding one are queued. This is start-time
//! fair queueing with run times as the cost; deficit round-robin gives
//! each queued subscription a quantum in turn, so a quiet event there waits
//! behind one quantum of every busy subscription.
//!
//! **Watching.** A keeper thread per pool, running while the pool has
//! workers or timers, fires the runners' timers and looks at the workers
//! every quarter of the shortest threshold: a run older than
//! [`WatchConfig::sync_budget`] is named while it still runs, and every
//! worker busy for longer than [`WatchConfig::pool_exhausted`] is reported
//! with who holds them. Nothing is ever stopped: a thread cannot be.

mod cell;
mod exec;
mod keeper;
mod parts;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub(crate) use exec::{BoxFuture, Flow, Shared, Task};
pub(crate) use keeper::Sleep;

use crate::config::{WatchConfig, WorkerPool};
use crate::info::SubInfo;
use crate::stats::PoolStats;
use crate::watch::PoolExhausted;

/// A worker that has had no work for this long ends (the pool starts
/// another when work comes).
const KEEPALIVE: Duration = Duration::from_secs(10);

/// What a pool needs of the subscription a runner belongs to.
pub(crate) trait Client: Send + Sync + 'static {
    fn info(&self) -> &SubInfo;
    /// A run of its handler has been going for `age`, longer than the
    /// watch's budget.
    fn long_run(&self, age: Duration);
    /// A runner's own code panicked out of a poll; the runner was started
    /// again.
    fn runner_restarted(&self, message: &str);
}

/// The bus's two pools.
pub(crate) struct Pools {
    cpu: Arc<Shared>,
    io: Arc<Shared>,
}

impl Pools {
    /// `cpu_nice`: how much lower than the process the CPU pool's
    /// workers run; the I/O pool's, which mostly wait, run at its priority.
    pub(crate) fn new(cpu: usize, io: usize, cpu_nice: u8, watch: &Arc<WatchConfig>) -> Self {
        Pools {
            cpu: Shared::new(WorkerPool::Cpu, cpu, cpu_nice, Arc::clone(watch)),
            io: Shared::new(WorkerPool::Io, io, 0, Arc::clone(watch)),
        }
    }

    pub(crate) fn get(&self, pool: WorkerPool) -> &Arc<Shared> {
        match pool {
            WorkerPool::Cpu => &self.cpu,
            WorkerPool::Io => &self.io,
        }
    }

    pub(crate) fn stats(&self) -> Vec<PoolStats> {
        vec![self.cpu.stats(), self.io.stats()]
    }

    pub(crate) fn findings(&self) -> Vec<PoolExhausted> {
        [&self.cpu, &self.io]
            .into_iter()
            .filter_map(|p| p.exhaustion())
            .collect()
    }
}

/// The bus's pools, shared by its topics; set once the bus is built.
pub(crate) type PoolSlot = Arc<OnceLock<Arc<Pools>>>;

/// The pools in `slot`, or a default pair if the bus is not built yet
/// (never so once a topic can be subscribed).
pub(crate) fn current(slot: &PoolSlot) -> Arc<Pools> {
    Arc::clone(slot.get_or_init(|| {
        Arc::new(Pools::new(
            WorkerPool::default_cpu_workers(),
            crate::config::DEFAULT_IO_WORKERS,
            crate::config::DEFAULT_CPU_NICE,
            &Arc::new(WatchConfig::default()),
        ))
    }))
}

/// A runner on a pool, as its subscription keeps it: to stop it when the
/// shutdown deadline cuts the subscription off.
/// Holds it: a runner waiting for a timer is held by nothing else.
pub(crate) struct PoolRunner(Arc<Task>);

impl PoolRunner {
    /// Stops it: a runner waiting (for an event, a delay, a worker) is
    /// dropped now, here; one running its handler is dropped once the run
    /// and the poll it is in are over.
    pub(crate) fn abort(&self) {
        self.0.abort();
    }
}

/// A worker or keeper thread could not be started.
fn warn_worker_failed(pool: WorkerPool, err: &std::io::Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(pool = %pool, error = %err, "tidings: could not start a worker thread");
    #[cfg(not(feature = "tracing"))]
    let _ = (pool, err);
}

/// Every worker of a pool was busy for too long: a warning and a metric.
fn report_exhausted(exhausted: &PoolExhausted) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        pool = %exhausted.pool,
        workers = exhausted.workers,
        busy_ms = exhausted.worst.as_secs_f64() * 1e3,
        holders = %exhausted
            .holders
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        "tidings: every worker of the {} pool is busy",
        exhausted.pool,
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("tidings_pool_exhausted_total", "pool" => exhausted.pool.name())
        .absolute(exhausted.count);
    #[cfg(not(any(feature = "tracing", feature = "metrics")))]
    let _ = exhausted;
}
