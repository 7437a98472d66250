//! What the blocked-runtime watch looks for: [`WatchConfig`].

use std::time::Duration;

/// What the bus watches for, and how often it speaks up. Set it with
/// [`BusBuilder::watch`](crate::BusBuilder::watch); the defaults are on.
///
/// ```
/// use std::time::Duration;
/// use tidings::{Bus, WatchConfig};
///
/// let bus = Bus::builder()
///     .watch(
///         WatchConfig::default()
///             .slow_poll(Some(Duration::from_millis(5)))
///             .sync_budget(None) // sync handlers may take as long as they like
///             .report_every(Duration::from_secs(30)),
///     )
///     .build()?;
/// assert!(bus.health().is_healthy());
/// # Ok::<(), tidings::error::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    slow_poll: Option<Duration>,
    sync_budget: Option<Duration>,
    publish_wait: Option<Duration>,
    pool_exhausted: Option<Duration>,
    report_every: Duration,
}

impl WatchConfig {
    /// Watches nothing: no timing is taken on any path.
    pub fn off() -> Self {
        WatchConfig {
            slow_poll: None,
            sync_budget: None,
            publish_wait: None,
            pool_exhausted: None,
            report_every: Duration::from_secs(10),
        }
    }

    /// A single poll of an async handler longer than this blocks the
    /// runtime's worker thread: every other task on it waits. Default 10 ms;
    /// `None` stops timing polls.
    pub fn slow_poll(mut self, threshold: Option<Duration>) -> Self {
        self.slow_poll = threshold;
        self
    }

    /// A blocking handler run ([`.sync()`](crate::HandlerBuilder::sync) or
    /// [`.blocking()`](crate::HandlerBuilder::blocking)) longer than this is
    /// reported ([`FindingKind::SyncOverBudget`](crate::FindingKind::SyncOverBudget)), while it still goes
    /// (so that a handler that never returns is named too) or when it
    /// ends. A run cannot be stopped, but it holds a worker of its pool and
    /// its subscription falls behind. Default 1 s; `None` stops timing
    /// runs.
    pub fn sync_budget(mut self, budget: Option<Duration>) -> Self {
        self.sync_budget = budget;
        self
    }

    /// A publish that waited longer than this for room in a full
    /// [`Overflow::Block`](crate::Overflow::Block) subscription is reported,
    /// naming that subscription. Default 100 ms; `None` stops timing waits.
    pub fn publish_wait(mut self, threshold: Option<Duration>) -> Self {
        self.publish_wait = threshold;
        self
    }

    /// Every worker of a pool busy for longer than this is reported
    /// ([`Health::pools`](crate::Health::pools)), naming the subscriptions
    /// that hold the workers, how many each, and their oldest run's age.
    /// Default 1 s; `None` stops looking.
    pub fn pool_exhausted(mut self, threshold: Option<Duration>) -> Self {
        self.pool_exhausted = threshold;
        self
    }

    /// Reports a finding at most once per subscription and kind in this
    /// interval (the stats count every occurrence). Also how long a finding
    /// counts as recent for [`Health::is_healthy`](crate::Health::is_healthy). Default 10 s.
    pub fn report_every(mut self, interval: Duration) -> Self {
        self.report_every = interval;
        self
    }

    pub(crate) fn slow_poll_threshold(&self) -> Option<Duration> {
        self.slow_poll
    }

    pub(crate) fn sync_budget_threshold(&self) -> Option<Duration> {
        self.sync_budget
    }

    pub(crate) fn publish_wait_threshold(&self) -> Option<Duration> {
        self.publish_wait
    }

    pub(crate) fn pool_exhausted_threshold(&self) -> Option<Duration> {
        self.pool_exhausted
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            slow_poll: Some(Duration::from_millis(10)),
            sync_budget: Some(Duration::from_secs(1)),
            publish_wait: Some(Duration::from_millis(100)),
            pool_exhausted: Some(Duration::from_secs(1)),
            report_every: Duration::from_secs(10),
        }
    }
}

impl WatchConfig {
    pub(crate) fn report_interval(&self) -> Duration {
        self.report_every
    }
}
