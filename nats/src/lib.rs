//! [tidings](https://docs.rs/tidings) topics bridged to NATS: the same
//! typed topics across processes, through a real broker (core NATS or
//! JetStream), with the same allow-list deciding what may cross, and every
//! message from another process treated as hostile until checked.
//!
//! ```no_run
//! use tidings::{Bus, Event};
//! use tidings_nats::{Bridge, BridgeTopics, Connect};
//!
//! #[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
//! #[event(topic = "orders.created", serde)]
//! struct OrderCreated { id: u64 }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The bus carries the bridge's own topic (its rejections) too.
//! let bus = Bus::builder().topic::<OrderCreated>().bridge_topics().build()?;
//! let bridge = Bridge::builder(&bus, Connect::to("nats://127.0.0.1:4222"))
//!     .name("orders-service")
//!     .export::<OrderCreated>() // local publishes go out on `orders.created`
//!     .start()
//!     .await?;
//! bus.publish(OrderCreated { id: 1 }).await?;
//! # let _ = bridge;
//! # Ok(()) }
//! ```
//!
//! # Modes and their guarantees
//! - **Core NATS** (the default): at most once. An exported event is sent
//!   to the server (buffered while reconnecting, within a bound); NATS
//!   delivers it to the subscribers connected at that moment. Events
//!   published while a subscriber's bridge is not connected are not
//!   delivered to it. Fast: no acknowledgement.
//! - **Durable** ([`BridgeBuilder::durable`], JetStream): effectively once,
//!   end to end, in each topic's order. The exporter publishes with
//!   `Nats-Msg-Id` set to the event's idempotency key or its cross-process
//!   id, through a window of publishes awaiting the stream's acknowledgement
//!   ([`Durable::window`]); after any trouble it sends everything
//!   unacknowledged again, in order, on a connection that never carries a
//!   publish over from the one before (the broker's duplicate window drops
//!   what it holds already), so the order holds across an outage. While the
//!   window is full, the export subscription's queue fills under the
//!   topic's overflow policy (`Block`: local publishers wait). The importer
//!   pulls from a durable consumer, publishes each event with its id as
//!   idempotency key (a redelivery is not handled twice within the topic's
//!   [`DedupWindow`](tidings::DedupWindow)), and acknowledges it once every
//!   local subscription is done with it
//!   ([`PublishOptions::on_done`](tidings::PublishOptions::on_done)): a
//!   process killed with events in hand has them delivered again, to its
//!   next run or another replica. A broker restart loses nothing.
//!
//! Events carry what caused them across the bridge
//! ([`Envelope::caused_by`](tidings::Envelope::caused_by),
//! [`Envelope::correlation`](tidings::Envelope::correlation)), and with the
//! `opentelemetry` feature the span context of their publish (a W3C
//! `traceparent`).
//!
//! # Hostile input
//! The bridge speaks the NATS protocol over a connection of its own, and
//! treats everything other processes send as hostile until checked: a
//! header that is not UTF-8, holds a lone CR or has no colon, a subject
//! that is not UTF-8, a payload over [`BridgeBuilder::max_payload`], a
//! message on a subject that is not an imported, allow-listed topic, a
//! payload that does not decode, an id or key over
//! [`wire::MAX_ID_LEN`] bytes, a message that claims this
//! bridge's origin without being its own: each is the problem of that one
//! message. It never reaches a handler and never disappears: it is
//! published on the bus as a [`Rejected`] event (topic [`REJECTED_TOPIC`],
//! every field bounded), counted in [`BridgeStats`] and logged; in durable
//! mode it is then acknowledged (never terminated: every `+TERM` on a
//! bridge's consumer is someone else's, and is named too), so it is not
//! redelivered. Deliveries wait for the importer under a byte budget
//! ([`BridgeBuilder::max_held_bytes`]); one over it is dropped and counted.
//!
//! # Loops
//! Imported events carry the bridge's origin
//! ([`Envelope::origin`](tidings::Envelope::origin)) and are never exported
//! again by it; messages a bridge exported itself (recognised by their id,
//! see [`wire`]) are counted as echoes and not imported back.

#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

mod builder;
mod config;
mod conn;
#[cfg(feature = "asyncapi")]
mod contract;
mod ctx;
mod error;
mod export;
mod import;
mod js;
mod proto;
mod rejected;
mod stats;
mod text;
pub mod wire;

pub use builder::BridgeBuilder;
pub use config::{Connect, Durable};
pub use error::BridgeError;
pub use rejected::{BridgeTopics, RejectReason, Rejected, REJECTED_FIELD_LIMIT, REJECTED_TOPIC};
pub use stats::{BridgeHealth, BridgeProblem, BridgeProblemKind, BridgeReport, BridgeStats};

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use self::conn::Trouble;
use self::ctx::Ctx;
pub(crate) use self::ctx::{stopping, supervised};
pub(crate) use self::text::{bounded, warn};
use tidings::Bus;

/// The TLS library the bridge's connection uses; give it a
/// [`rustls::ClientConfig`] with [`Connect::tls`].
pub use tokio_rustls::rustls;

/// A running bridge between a bus and NATS. Dropping it stops its tasks at
/// once; [`shutdown`](Bridge::shutdown) stops importing, then sends what its
/// export subscriptions still hold.
pub struct Bridge {
    #[cfg(feature = "asyncapi")]
    contract: contract::Contract,
    ctx: Arc<Ctx>,
    exports: Vec<JoinHandle<()>>,
    imports: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Bridge {
    /// Starts setting up a bridge between `bus` and NATS.
    pub fn builder(bus: &Bus, connect: impl Into<Connect>) -> BridgeBuilder {
        BridgeBuilder::new(bus, connect.into())
    }

    /// The bridge's numbers now.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.ctx.counters;
        let n = self.ctx.conn.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BridgeStats {
            exported: load(&c.exported),
            export_retries: load(&c.export_retries),
            export_failures: load(&c.export_failures),
            export_duplicates: load(&c.export_duplicates),
            export_reordered: load(&c.export_reordered),
            unacknowledged: self.ctx.unacked.load(Ordering::Relaxed),
            imported: load(&c.imported),
            duplicates: load(&c.duplicates),
            kept_alive: load(&c.kept_alive),
            echoes: load(&c.echoes),
            rejected: load(&c.rejected),
            rejected_unpublished: load(&c.rejected_unpublished),
            dropped: n.dropped,
            held_bytes: self.ctx.conn.held(),
            disconnects: n.disconnects,
            restarts: load(&c.restarts) + n.restarts,
            pulls_unanswered: load(&c.pulls_unanswered),
            pulls_refused: load(&c.pulls_refused),
            consumers_recreated: load(&c.consumers_recreated),
            terminated_elsewhere: load(&c.terminated_elsewhere),
            broken_frames: n.broken_frames,
            server_errors: n.server_errors,
            unwritten: n.unwritten,
        }
    }

    /// Whether the bridge is connected, and what trouble it saw (restarts
    /// of its tasks, lost connections, deliveries dropped at the byte
    /// budget, server errors); serve it beside
    /// [`Bus::health`](tidings::Bus::health).
    pub fn health(&self) -> BridgeHealth {
        let stats = self.stats();
        let conn = &self.ctx.conn;
        let recent =
            |at: Option<Instant>| at.is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        let restart = [
            conn.last_seen(Trouble::Restart),
            *self.ctx.last_restart.lock(),
        ]
        .into_iter()
        .flatten()
        .max();
        let mut problems = Vec::new();
        for (kind, count, at) in [
            (BridgeProblemKind::Restarted, stats.restarts, restart),
            (
                BridgeProblemKind::Disconnected,
                stats.disconnects,
                conn.last_seen(Trouble::Disconnect),
            ),
            (
                BridgeProblemKind::Dropped,
                stats.dropped,
                conn.last_seen(Trouble::Dropped),
            ),
            (
                BridgeProblemKind::ServerErrors,
                stats.server_errors,
                conn.last_seen(Trouble::ServerError),
            ),
            (
                BridgeProblemKind::PullsUnanswered,
                stats.pulls_unanswered,
                self.ctx.unanswered.lock().0,
            ),
            (
                BridgeProblemKind::PullsRefused,
                stats.pulls_refused,
                self.ctx.refused_pulls.lock().0,
            ),
            (
                BridgeProblemKind::ConsumerRecreated,
                stats.consumers_recreated,
                *self.ctx.last_recreated.lock(),
            ),
        ] {
            if count > 0 {
                problems.push(BridgeProblem {
                    kind,
                    count,
                    recent: recent(at),
                });
            }
        }
        BridgeHealth {
            bridge: self.ctx.name.clone(),
            connected: conn.stats().connected,
            problems,
        }
    }

    /// The origin this bridge marks imported events with
    /// ([`Envelope::origin`](tidings::Envelope::origin)).
    pub fn origin(&self) -> &str {
        self.ctx.origin()
    }

    /// Whether `id` is an event id this bridge minted (for one of its
    /// exports, or for a local event another process names as a cause):
    /// its origin, and a tag only this bridge can make. An id that merely
    /// starts with its [`origin`](Bridge::origin) is not; the bridge
    /// rejects a message whose event id, cause or correlation claims its
    /// origin without passing this check
    /// ([`RejectReason::SpoofedOrigin`]). For applications that store ids
    /// and take them back later.
    pub fn verify(&self, id: &str) -> bool {
        self.ctx.ids.is_ours(id)
    }

    /// The last error the server sent, if any (e.g. a permissions
    /// violation).
    pub fn last_server_error(&self) -> Option<String> {
        self.ctx.conn.last_error()
    }

    /// Stops importing (every message already received or fetched is still
    /// handed to the local bus and counted; in durable mode acknowledged
    /// once the bus is done with it, which this waits for), sends what the
    /// export subscriptions still hold (in durable mode, until the stream
    /// acknowledged it), and makes sure the server has it all; a bridge
    /// started again later takes up exactly where this one left off.
    ///
    /// All of that within `deadline`: if the broker is away, what could not
    /// be sent by then is counted in the report ([`BridgeReport::unsent`]:
    /// still queued or in an exporter's hands; [`BridgeReport::unwritten`]:
    /// handed to the connection, never written) and the bridge stops
    /// anyway. It returns within the deadline plus 100 ms: the most it
    /// then waits for the connection to say what it could not write (even
    /// in the middle of an outage, while the connection waits to try
    /// again).
    pub async fn shutdown(mut self, deadline: Duration) -> BridgeReport {
        let start = Instant::now();
        let _ = self.stop.send(true);
        let imports = std::mem::take(&mut self.imports);
        let exports = std::mem::take(&mut self.exports);
        let aborts: Vec<_> = imports
            .iter()
            .chain(&exports)
            .map(JoinHandle::abort_handle)
            .collect();
        let conn = self.ctx.conn.clone();
        let unacked = Arc::clone(&self.ctx.unacked);
        let work = async move {
            for task in imports {
                let _ = task.await;
            }
            // What the importers handed over is acknowledged once handled.
            while unacked.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            for task in exports {
                let _ = task.await;
            }
            // Acknowledgements and publishes are written, and taken.
            let _ = conn.round_trip(Duration::from_secs(3600)).await;
        };
        let deadline_hit = tokio::time::timeout(deadline, work).await.is_err();
        let mut unsent = 0;
        let unacknowledged = self.ctx.unacked.load(Ordering::Acquire);
        if deadline_hit {
            unsent = self.ctx.in_hand.load(Ordering::Relaxed) + self.export_queued();
            for task in aborts {
                task.abort();
            }
        }
        // Publishes handed to the connection but never written (it was
        // down) are lost too. The close gets what is left of the deadline,
        // at least `CLOSE_GRACE`: the whole shutdown takes at most the
        // deadline plus that.
        let left = deadline.saturating_sub(start.elapsed()).max(CLOSE_GRACE);
        let unwritten = self.ctx.conn.close_and_count(left).await;
        BridgeReport {
            stats: self.stats(),
            deadline_hit,
            unsent,
            unwritten,
            unacknowledged,
            elapsed: start.elapsed(),
        }
    }

    /// Events queued in the export subscriptions.
    fn export_queued(&self) -> u64 {
        let name = format!("bridge:{}", self.ctx.name);
        self.ctx
            .bus
            .stats()
            .subscriptions()
            .filter(|s| s.name == name)
            .map(|s| s.queue_depth as u64)
            .sum()
    }
}

/// How long a shutdown whose deadline passed still waits for the
/// connection to say what it could not write.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

impl Drop for Bridge {
    fn drop(&mut self) {
        for task in self.imports.iter().chain(&self.exports) {
            task.abort();
        }
        self.ctx.conn.close();
    }
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("name", &self.ctx.name)
            .field("origin", &self.ctx.origin())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The example of the guide's page on the bridge (`docs/bridge.md`), compiled as a
/// doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/bridge.md")]
pub struct GuideDoctests;
