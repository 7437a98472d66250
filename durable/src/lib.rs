//! Durable [tidings](https://docs.rs/tidings) topics: an accepted event is
//! on disk before `publish` returns `Ok`, and survives `kill -9` and power
//! loss, on an embedded log in a directory the application names. Nothing
//! to install and nothing to run: the promise people run Redis queues for,
//! with tidings' types, allow-list, policies and accounting on top.
//!
//! ```no_run
//! use tidings::{Bus, Event};
//! use tidings_durable::{DurableTopics, Store};
//!
//! #[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
//! #[event(topic = "reports.requested")]
//! struct ReportRequested { id: u64 }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open("data/queue")?;
//! let bus = Bus::builder().durable_topic::<ReportRequested>().build()?;
//! let reports = store.topic::<ReportRequested>(&bus)?;
//! // Resumes where it was after a restart: what it had not settled comes again.
//! let _worker = reports.subscribe("renderer").concurrency(2).sync(|job| {
//!     println!("rendering report {} (again: {})", job.id, job.redelivered());
//! })?;
//! reports.publish(ReportRequested { id: 7 }).await?; // on the disk now
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **Acknowledgement levels** ([`Ack`]): *synced* (the default): `Ok`
//!   once an `fdatasync` covers the event, shared by every publish waiting
//!   at that moment; survives a power loss. *Written*: `Ok` once the
//!   operating system has it; survives the process being killed, not a
//!   power loss.
//! - **Durable subscriptions** resume at their place: every event they had
//!   not settled is delivered again, every event they had settled is not.
//!   At least once: what is delivered again is at most what was offered
//!   and not settled (the subscription's queue plus its concurrency), and
//!   each is marked [`Envelope::redelivered`](tidings::Envelope::redelivered).
//! - **Idempotency keys** ([`DurableTopic::publish_keyed`]) are stored
//!   with the events: a retry across a restart is still a duplicate.
//! - **Recovery** reads the last segment only, cuts a torn tail (only ever
//!   bytes of publishes that had not returned `Ok` at the synced level, or
//!   of a half-written record), and says what it cut
//!   ([`DurableTopic::recovery`]).
//! - **One process**: the directory is locked; a second `Store::open` of
//!   it is [`StoreError::Locked`].

mod error;
mod feeder;
mod ledger;
mod log;
#[cfg(test)]
mod log_props;
mod metrics;
mod options;
mod reader;
mod record;
mod shared;
mod state;
mod store;
mod topic;

/// Property-test cases: `default`, or `PROPTEST_CASES`.
#[cfg(test)]
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

pub use error::{DurablePublishError, StoreError};
pub use ledger::{Ledger, PowerCut};
pub use log::{Recovery, SyncStats};
pub use options::{Ack, TopicOptions, OWNER};
pub use store::{Store, StoreOptions};
pub use topic::{DurableReceipt, DurableStats, DurableSubStats, DurableTopic, StoredDeadLetter};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tidings::{BusBuilder, Event, TopicConfig};

/// Registers durable topics on a [`BusBuilder`].
pub trait DurableTopics: Sized {
    /// Registers `E` as a durable topic: publishes and subscriptions go
    /// through its [`DurableTopic`] ([`Store::topic`]); the bus refuses
    /// its own publishes of `E` with
    /// [`Refusal::Fed`](tidings::error::Refusal::Fed).
    fn durable_topic<E: Event + Serialize + DeserializeOwned>(self) -> Self;
}

impl DurableTopics for BusBuilder {
    fn durable_topic<E: Event + Serialize + DeserializeOwned>(self) -> Self {
        self.topic_with::<E>(TopicConfig::default().fed_by(OWNER))
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The example of the guide's page on durable topics (`docs/durable.md`), compiled as a
/// doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/durable.md")]
pub struct GuideDoctests;
