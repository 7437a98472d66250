//! A typed, in-process publish/subscribe event bus for tokio services.
//!
//! Services publish typed events; modules subscribe with streams, async
//! handlers or blocking (sync) handlers. Every subscription has its own
//! bounded queue and an explicit [`Overflow`] policy, so a slow subscriber
//! never stalls a publisher or another subscriber unless it was asked to
//! ([`Overflow::Block`], the default, makes publishers wait: that is what
//! lossless means).
//!
//! ```
//! use std::time::Duration;
//! use futures::StreamExt;
//! use tidings::{Bus, Event, Overflow};
//!
//! #[derive(Debug, Event)]
//! #[event(topic = "orders.created")]
//! struct OrderCreated { id: u64, total_cents: u64 }
//!
//! # fn charge(_: &OrderCreated) {}
//! # async fn email(_: &OrderCreated) -> Result<(), std::io::Error> { Ok(()) }
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().topic::<OrderCreated>().build()?;
//!
//! // A CPU-heavy handler, on the bus's worker pool.
//! let _billing = bus.subscribe::<OrderCreated>().name("billing").sync(|e| charge(&e))?;
//! // An async handler, four at a time.
//! let _mail = bus
//!     .subscribe::<OrderCreated>()
//!     .concurrency(4)
//!     .handler(|e| async move { email(&e).await })?;
//! // A stream that keeps the latest 64 and says what it missed.
//! let mut feed = bus
//!     .subscribe::<OrderCreated>()
//!     .capacity(64)
//!     .overflow(Overflow::DropOldest)
//!     .stream()?;
//!
//! bus.publish(OrderCreated { id: 1, total_cents: 990 }).await?;
//!
//! let e = feed.next().await.expect("subscribed");
//! assert_eq!((e.id, e.missed()), (1, 0));
//!
//! let report = bus.shutdown(Duration::from_secs(5)).await;
//! assert!(report.is_clean(), "{report}");
//! # Ok(()) }
//! ```
//!
//! ## Topics and the allow-list
//! Each event type has exactly one topic, given by `#[derive(Event)]` and
//! checked at compile time (dot-separated segments of `[a-z0-9_-]`, see
//! [`Topic`]). A bus carries only the topics registered on its
//! [`BusBuilder`]; two types claiming one topic is a [`BuildError`](error::BuildError), and
//! publishing or subscribing to an unregistered type is an error naming the
//! topic, never a silent no-op.
//!
//! ## Backpressure
//! A full subscription applies its [`Overflow`] policy: `Block` makes
//! [`Bus::publish`] wait (and [`Bus::try_publish`] fail), `DropOldest` and
//! `DropNewest` lose events for that subscription only and say how many in
//! the next [`Envelope::missed`], `Fail` makes the publish fail without
//! enqueueing anything anywhere. Capacity comes from [`TopicConfig`] or
//! [`SubscribeBuilder::capacity`].
//!
//! ## Delivery guarantees
//! 1. No loss under `Block`: every publish that returned `Ok` is delivered to
//!    every subscription that existed when it was accepted, exactly once.
//! 2. No duplicates: no subscription ever receives the same event twice.
//! 3. Order: within one subscription read by one reader (or a handler with
//!    concurrency 1), events from one publisher arrive in publish order.
//! 4. Exact accounting: for every subscription, `accepted == delivered +
//!    dropped + discarded + cut_off + queued` ([`SubscriptionStats`]).
//! 5. All or nothing: a publish enqueues to every subscription or to none; a
//!    cancelled `publish().await` enqueues nothing; an error hands the event
//!    back ([`PublishError::into_inner`](error::PublishError::into_inner)).
//! 6. Isolation: blocking handlers run on the bus's bounded worker pools
//!    ([`WorkerPool`]), never on the runtime's workers; handler errors and
//!    panics are caught and counted.
//! 7. Shutdown: [`Bus::shutdown`] refuses publishes from outside the bus,
//!    accepts those of its handlers (chains finish), drains every queue
//!    until no event is queued and no handler runs, and names every loose
//!    end in its report.
//! 8. Handled once or dead-lettered once: under a [`RetryPolicy`], every event
//!    a handler takes is handled successfully exactly once or becomes exactly
//!    one [`DeadLetter`]; a retry is a counted re-run ([`Envelope::attempt`]),
//!    not a second delivery.
//! 9. One delivery per idempotency key within the topic's [`DedupWindow`]
//!    ([`PublishOptions::idempotency_key`]).
//! 10. Gap-free replay: a subscription starting in a topic's retained log
//!     ([`StartAt`]) gets a contiguous run of sequence numbers, and is told
//!     exactly which of those it asked for are gone ([`Started::unrecoverable`](crate::Started::unrecoverable)).
//!
//! Each has a property or integration test in the crate's `tests/`.
//!
//! ## Failures, duplicates and reconnects
//! - [`SubscribeBuilder::retry`], [`SubscribeBuilder::timeout`] and
//!   [`SubscribeBuilder::circuit_breaker`] for handlers that fail; dead letters
//!   arrive on [`Bus::dead_letters`].
//! - [`Bus::publish_with`] and [`PublishOptions`] for idempotency keys.
//! - [`TopicConfig::retain`], [`SubscribeBuilder::from`] and [`Bus::replay`]
//!   for resuming where a subscriber left off.
//! - [`Bus::subscribe_pattern`] for wildcard subscriptions of type-erased
//!   [`AnyEvent`]s, checked against the allow-list; with the `serde` feature,
//!   `#[event(serde)]` types (de)serialize by topic name
//!   (`Bus::deserialize_event`, [`Bus::publish_dyn`]).
//!
//! ## Shutdown
//! [`Bus::shutdown`] returns a [`ShutdownReport`]: per subscription, what was
//! delivered, dropped and cut off. Dropping a [`Subscription`] or
//! [`SubscriptionHandle`] unsubscribes and discards its queue (counted);
//! [`SubscriptionHandle::unsubscribe`] drains it first.
//!
//! ## Observability
//! - **Stats**: [`Bus::stats`] is a snapshot per topic and subscription that
//!   prints as a table; every event is in exactly one of its counts.
//! - **Blocked-runtime watch** (on by default, see [`WatchConfig`]): every poll of
//!   an async handler is timed; one that holds the runtime's thread longer
//!   than the threshold is a [`Finding`] naming the subscription, as are sync
//!   handlers over budget and publishers kept waiting by a full subscription.
//!   [`Bus::health`] collects them for a health endpoint.
//! - **`tracing`** (feature, default): a `tidings.publish` span per publish
//!   (topic, event id, seq, receipt) and a `tidings.handle` span per handler
//!   run (subscription, topic, event id, attempt, outcome, duration); warnings
//!   for handler failures, panics, drops (at most once per interval) and
//!   findings. No allocation when no subscriber is enabled.
//! - **`metrics`** (feature): `tidings_published_total`,
//!   `tidings_caused_total` (by topic and causing topic),
//!   `tidings_delivered_total`, `tidings_dropped_total`,
//!   `tidings_discarded_total`, `tidings_handler_failures_total`,
//!   `tidings_handler_panics_total`, `tidings_handler_timeouts_total`,
//!   `tidings_retries_total`, `tidings_dead_letters_total`,
//!   `tidings_findings_total`, gauges
//!   `tidings_queue_depth`, `tidings_subscriptions`,
//!   `tidings_finding_worst_seconds`, histograms
//!   `tidings_handler_duration_seconds`, `tidings_publish_wait_seconds`;
//!   labelled by topic and subscription name only. Install the recorder
//!   before building the bus.
//!
//! ## Crate feature flags
//! - `derive` (default): `#[derive(Event)]`.
//! - `tracing` (default): spans and warnings through the `tracing` facade.
//! - `metrics`: counters, gauges and histograms through the `metrics` facade.
//! - `tune`: [`tune`], the capacity tuner (its command line is
//!   `benches/examples/tune.rs` in the repository).
//! - `serde`: `Serialize` for [`BusStats`], [`ShutdownReport`], [`Health`]
//!   and their parts; `#[event(serde)]` events (de)serialize by topic name
//!   ([`AnyEvent`] is `Serialize`, `Bus::deserialize_event` decodes).
//!
//! Topics that cross processes through NATS and JetStream live in a crate of
//! their own, [`tidings-nats`](https://docs.rs/tidings-nats), which builds
//! on the `serde` feature and registers its own topics.

#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
// `unsafe` lives in one module, the ring (`topic/ring/`), with loom
// models; everywhere else it is an error.
#![deny(unsafe_code)]

// Lets `#[derive(Event)]`'s `::tidings::…` paths resolve inside this crate.
#[allow(unused_extern_crates)]
extern crate self as tidings;

mod any;
#[cfg(feature = "asyncapi")]
pub mod asyncapi;
mod bus;
mod codec;
mod config;
mod context;
mod dead_letter;
mod errors;
mod event;
pub mod feed;
mod handler;
mod hist;
mod id;
mod info;
mod name;
mod outcome;
mod pool;
mod publisher;
mod receipt;
mod report;
mod resume;
mod stats;
mod subscribe;
mod sync;
mod telemetry;
mod topic;
#[cfg(feature = "tune")]
pub mod tune;
#[cfg(feature = "view")]
pub mod view;
mod watch;

/// Error types, one per operation.
pub mod error {
    pub use crate::bus::AlreadySet;
    pub use crate::errors::{
        BuildError, DecodeError, PatternError, PublishError, Refusal, SubscribeError, TopicError,
        TryRecvError, UnknownTopic,
    };
}

pub use any::{AnyEvent, DynEvent};
pub use bus::{global, set_global, try_global, Bus, BusBuilder};
pub use codec::Codec;
pub use config::{
    BreakerPolicy, Clock, DedupWindow, Overflow, PublishOptions, RetryPolicy, StartAt, TopicConfig,
    WatchConfig, WorkerPool, MAX_NICE, MAX_WORKERS,
};
pub use dead_letter::{DeadLetter, DEAD_LETTER_TOPIC};
pub use event::{Envelope, Event, SharedEvent};
pub use handler::HandlerResult;
pub use id::{EventId, EventRef, SubscriptionId};
pub use info::{SubscriberKind, TopicInfo};
pub use name::{Pattern, Topic, MAX_TOPIC_LEN};
pub use publisher::Publisher;
pub use receipt::{Duplicate, PublishReceipt};
pub use report::{ShutdownReport, Unclean, UncleanKind};
pub use resume::{Replayed, Started};
pub use stats::{
    BreakerState, BusStats, CausedBy, PoolHolder, PoolStats, Quantiles, SubscriptionStats,
    TopicStats,
};
pub use subscribe::{
    HandlerBuilder, PatternBuilder, PatternSubscription, SubscribeBuilder, Subscription,
    SubscriptionHandle, MAX_CONCURRENCY,
};
pub use watch::{CallbackPanics, Finding, FindingKind, Health, PoolExhausted};

#[cfg(feature = "derive")]
pub use tidings_macros::Event;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide's examples (`docs/`), compiled and run as doctests: one item
/// per page that holds Rust code.
#[cfg(doctest)]
pub mod guide {
    /// `docs/worker-pools.md`.
    #[doc = include_str!("../docs/worker-pools.md")]
    pub struct WorkerPools;
    /// `docs/failures.md`.
    #[doc = include_str!("../docs/failures.md")]
    pub struct Failures;
    /// `docs/following-events.md`.
    #[doc = include_str!("../docs/following-events.md")]
    pub struct FollowingEvents;
    /// `docs/view.md`.
    #[cfg(all(feature = "view", feature = "schemars"))]
    #[doc = include_str!("../docs/view.md")]
    pub struct View;
}

#[cfg(all(test, feature = "derive"))]
mod tests {
    use super::*;

    #[derive(Event)]
    #[event(topic = "unit.ev")]
    struct Ev;

    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}

    /// Handles and futures cross threads and tasks: `tokio::spawn` needs it.
    #[tokio::test]
    async fn handles_and_futures_are_send() {
        let bus = Bus::builder().topic::<Ev>().build().expect("valid");
        send_sync(&bus);
        send_sync(&bus.publisher::<Ev>().expect("registered"));
        let sub = bus.subscribe::<Ev>().stream().expect("subscribed");
        send_sync(&sub);
        let handle = bus.subscribe::<Ev>().sync(|_| ()).expect("subscribed");
        send_sync(&handle);
        send(&bus.publish(Ev));
        send(&bus.publish_timeout(Ev, std::time::Duration::from_secs(1)));
        send(&bus.shutdown(std::time::Duration::from_secs(1)));
        send(&handle.unsubscribe());
    }
}
