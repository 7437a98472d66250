//! Settings: of a topic ([`TopicConfig`], [`Clock`]), a subscription
//! ([`Overflow`], [`StartAt`], [`RetryPolicy`], [`BreakerPolicy`]), a
//! publish ([`PublishOptions`], [`DedupWindow`]) and the blocked-runtime
//! watch ([`WatchConfig`]). Plain values: nothing here runs.

mod keys;
mod overflow;
mod policy;
mod start;
mod topic;
mod watch;

pub(crate) use keys::OnDone;
pub use keys::{DedupWindow, PublishOptions};
pub use keys::{Settled, Settlement};
pub use overflow::Overflow;
pub(crate) use policy::later;
pub use policy::{BreakerPolicy, RetryPolicy};
pub use start::StartAt;
pub use topic::{Clock, TopicConfig};
pub use watch::WatchConfig;
