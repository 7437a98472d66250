//! The [`Clock`] a topic stamps its events with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a topic stamps [`Envelope::published_at`](crate::Envelope::published_at).
///
/// Reading the precise wall clock is one of the larger costs of a publish.
/// The options, measured side by side by `cargo run --release -p
/// tidings-benches --bin clock_cost` (one reading as a publish takes it,
/// and how far it strays from `SystemTime::now`, on the 2-core development
/// VM):
///
/// | clock | one reading | vs the system's wall clock |
/// |---|---:|---|
/// | [`Precise`](Clock::Precise) (default) | 17 ns | it is the wall clock |
/// | [`Coarse`](Clock::Coarse) | 3–5 ns | up to one timer tick behind (4 ms on most Linux kernels) |
///
/// So the timestamps of two processes compare within their machines'
/// clock sync (NTP, PTP), plus one tick for a coarse topic. A hot topic
/// whose subscribers do not measure sub-millisecond latencies from
/// `published_at` can trade the precision away. (A wall clock re-read
/// every 10 ms with the CPU's cycle counter in between, through `quanta`,
/// was measured too: 12 ns, within a microsecond of the wall clock; the
/// 5 ns it saves did not show in a publish's cost (`op_cost`: 69 against
/// 70 ns), so it is not worth a dependency and a clock that strays.)
///
/// ```
/// use tidings::{Clock, TopicConfig};
///
/// let ticks = TopicConfig::default().clock(Clock::Coarse);
/// assert_eq!(ticks.timestamp_clock(), Clock::Coarse);
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Clock {
    /// [`SystemTime::now`](std::time::SystemTime::now) for every publish:
    /// the clock's full resolution (nanoseconds on Linux).
    #[default]
    Precise,
    /// The operating system's coarse wall clock, which returns the time of
    /// the last timer tick: a few nanoseconds to read, but a resolution of
    /// one tick (1 to 10 ms, 4 ms on most Linux kernels), so events
    /// published within one tick share a timestamp. Linux only (`CLOCK_REALTIME_COARSE`);
    /// elsewhere it is the same as [`Clock::Precise`].
    Coarse,
}

impl Clock {
    /// The current time as this clock reads it.
    #[inline]
    pub(crate) fn now(self) -> SystemTime {
        match self {
            Clock::Precise => SystemTime::now(),
            Clock::Coarse => coarse_now(),
        }
    }
}

#[cfg(target_os = "linux")]
fn coarse_now() -> SystemTime {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    match (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => UNIX_EPOCH + Duration::new(secs, nanos),
        // Before 1970: not worth a fast path.
        _ => SystemTime::now(),
    }
}

#[cfg(not(target_os = "linux"))]
fn coarse_now() -> SystemTime {
    SystemTime::now()
}
