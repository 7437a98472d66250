//! Building a bus: [`BusBuilder`], where the allow-list is made.

use std::fmt;
use std::sync::Arc;

use super::{Bus, Registry};
use crate::config::{
    TopicConfig, WatchConfig, WorkerPool, DEFAULT_CPU_NICE, DEFAULT_IO_WORKERS, MAX_NICE,
    MAX_WORKERS,
};
use crate::dead_letter::DeadLetter;
use crate::errors::BuildError;
use crate::event::Event;
use crate::pool::Pools;

/// Builds a [`Bus`]: every topic it will carry is registered here.
///
/// Registering the same type twice with the same configuration is allowed, so
/// that independent modules can each register what they use.
///
/// ```
/// use tidings::{Bus, Event, TopicConfig};
/// # #[derive(Event)] #[event(topic = "orders.created")] struct OrderCreated;
/// # #[derive(Event)] #[event(topic = "audit.line")] struct AuditLine;
/// # #[derive(Event)] #[event(topic = "orders.created")] struct Impostor;
///
/// let bus = Bus::builder()
///     .topic::<OrderCreated>()
///     .topic_with::<AuditLine>(TopicConfig::default().capacity(4096))
///     .build()?;
/// // Yours, then tidings' own (`tidings.dead_letters`, …).
/// assert_eq!(bus.topics()[..2], ["audit.line", "orders.created"]);
/// assert!(bus.topics().contains(&"tidings.dead_letters"));
///
/// let err = Bus::builder().topic::<OrderCreated>().topic::<Impostor>().build().unwrap_err();
/// assert!(err.to_string().contains("claimed by two types"));
/// # Ok::<(), tidings::error::BuildError>(())
/// ```
#[must_use = "a bus builder does nothing until .build()"]
pub struct BusBuilder {
    registry: Registry,
    watch: WatchConfig,
    dead_letters: TopicConfig,
    cpu_workers: usize,
    io_workers: usize,
    cpu_nice: u8,
    error: Option<BuildError>,
}

impl BusBuilder {
    pub(super) fn new() -> Self {
        BusBuilder {
            registry: Registry::new(),
            watch: WatchConfig::default(),
            dead_letters: TopicConfig::default(),
            cpu_workers: WorkerPool::default_cpu_workers(),
            io_workers: DEFAULT_IO_WORKERS,
            cpu_nice: DEFAULT_CPU_NICE,
            error: None,
        }
    }

    /// Adds `E`'s topic to the allow-list with the default [`TopicConfig`].
    pub fn topic<E: Event>(self) -> Self {
        self.topic_with::<E>(TopicConfig::default())
    }

    /// Adds `E`'s topic to the allow-list with `config`.
    pub fn topic_with<E: Event>(mut self, config: TopicConfig) -> Self {
        if self.error.is_none() {
            if let Err(err) = self.registry.register::<E>(config) {
                self.error = Some(err);
            }
        }
        self
    }

    /// Configures the dead-letter topic ([`DEAD_LETTER_TOPIC`](crate::DEAD_LETTER_TOPIC)), which every
    /// bus registers: its subscriptions' default capacity and overflow
    /// policy, and how many dead letters it retains for late readers.
    ///
    /// ```
    /// # use tidings::{Bus, StartAt, TopicConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder()
    ///     .dead_letters(TopicConfig::default().retain(100))
    ///     .build()?;
    /// let _all = bus.dead_letters().from(StartAt::Earliest).stream()?;
    /// # Ok(()) }
    /// ```
    pub fn dead_letters(mut self, config: TopicConfig) -> Self {
        self.dead_letters = config;
        self
    }

    /// Sets what the blocked-runtime watch looks for (see [`WatchConfig`];
    /// on by default).
    pub fn watch(mut self, watch: WatchConfig) -> Self {
        self.watch = watch;
        self
    }

    /// Sets how many worker threads the CPU pool runs at most: the pool of
    /// [`.sync()`](crate::HandlerBuilder::sync) handlers, shared by all of
    /// them. Default: the machine's available parallelism. See
    /// [`WorkerPool`].
    ///
    /// ```
    /// # use tidings::Bus;
    /// let bus = Bus::builder().cpu_workers(4).io_workers(16).build()?;
    /// # Ok::<(), tidings::error::BuildError>(())
    /// ```
    ///
    /// 0 or more than [`MAX_WORKERS`](crate::MAX_WORKERS) makes
    /// [`build`](Self::build) fail with [`BuildError::Workers`].
    pub fn cpu_workers(mut self, workers: usize) -> Self {
        self.cpu_workers = workers;
        self
    }

    /// Sets how many worker threads the I/O pool runs at most: the pool of
    /// [`.blocking()`](crate::HandlerBuilder::blocking) handlers, which
    /// mostly wait. Default 64. Limits as for
    /// [`cpu_workers`](Self::cpu_workers).
    pub fn io_workers(mut self, workers: usize) -> Self {
        self.io_workers = workers;
        self
    }

    /// Sets how much lower than the process the CPU pool's workers run
    /// (their nice value, on Linux; elsewhere nothing): 0 to 19, default
    /// 10. CPU-heavy handlers then take every cycle the async runtime
    /// leaves, but the runtime's threads get a core first when they wake,
    /// so requests stay quick while the pool is saturated (the
    /// `responsive_api` demo measures it). 0 runs them as the process runs.
    ///
    /// Above [`MAX_NICE`](crate::MAX_NICE) makes [`build`](Self::build) fail
    /// with [`BuildError::WorkerNice`].
    pub fn cpu_worker_nice(mut self, nice: u8) -> Self {
        self.cpu_nice = nice;
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    /// The first problem met while registering: [`BuildError::TopicConflict`]
    /// (two types, one topic), [`BuildError::ConfigConflict`],
    /// [`BuildError::InvalidTopic`], [`BuildError::ZeroCapacity`]; or a
    /// pool size out of range, [`BuildError::Workers`]; a nice value out of
    /// range, [`BuildError::WorkerNice`].
    pub fn build(mut self) -> Result<Bus, BuildError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        for (pool, workers) in [
            (WorkerPool::Cpu, self.cpu_workers),
            (WorkerPool::Io, self.io_workers),
        ] {
            if workers == 0 || workers > MAX_WORKERS {
                return Err(BuildError::Workers {
                    pool,
                    workers,
                    max: MAX_WORKERS,
                });
            }
        }
        if self.cpu_nice > MAX_NICE {
            return Err(BuildError::WorkerNice {
                nice: self.cpu_nice,
                max: MAX_NICE,
            });
        }
        self.registry
            .register::<DeadLetter>(self.dead_letters.clone())?;
        // The slot belongs to this builder's registry and is set only here.
        let watch = Arc::new(self.watch);
        let pools = Pools::new(self.cpu_workers, self.io_workers, self.cpu_nice, &watch);
        let _ = self.registry.watch.set(watch);
        let _ = self.registry.pools.set(Arc::new(pools));
        Ok(Bus::new(self.registry))
    }
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field(
                "topics",
                &self.registry.entries().map(|e| e.name).collect::<Vec<_>>(),
            )
            .field("error", &self.error)
            .finish()
    }
}
