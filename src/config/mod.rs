//! Settings: of a topic ([`TopicConfig`], [`Clock`]), a subscription
//! ([`Overflow`], [`StartAt`], [`RetryPolicy`], [`BreakerPolicy`]), a
//! publish ([`PublishOptions`], [`DedupWindow`]), the blocked-runtime
//! watch ([`WatchConfig`]) and the worker pools ([`WorkerPool`]). Plain values: nothing here runs.

mod clock;
mod keys;
mod overflow;
mod policy;
mod start;
mod topic;
mod watch;
mod workers;

pub use clock::Clock;
pub(crate) use keys::OnDone;
pub use keys::{DedupWindow, PublishOptions};
pub use keys::{Settled, Settlement};
pub use overflow::Overflow;
pub(crate) use policy::later;
pub use policy::{BreakerPolicy, RetryPolicy};
pub use start::StartAt;
pub use topic::TopicConfig;
pub use watch::WatchConfig;
pub use workers::{WorkerPool, MAX_NICE, MAX_WORKERS};
pub(crate) use workers::{DEFAULT_CPU_NICE, DEFAULT_IO_WORKERS};
