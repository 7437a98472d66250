//! A bridge's numbers ([`BridgeStats`](crate::BridgeStats)), its health ([`BridgeHealth`](crate::BridgeHealth)) and
//! what its shutdown did ([`BridgeReport`](crate::BridgeReport)).

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A bridge's numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BridgeStats {
    /// Local events sent to NATS: handed to the connection in core mode
    /// (see `unwritten` for those a lost connection took with it),
    /// acknowledged by the stream in durable mode.
    pub exported: u64,
    /// Publishes to NATS tried again (durable mode, while the broker is away).
    pub export_retries: u64,
    /// Local events that could not be encoded or sent (counted, logged).
    pub export_failures: u64,
    /// Exports the broker acknowledged as duplicates (durable mode): their
    /// `Nats-Msg-Id` was already in the stream's duplicate window, so the
    /// stream did not store them again and nobody will receive them. Not
    /// counted in `exported`; each is logged with its id.
    pub export_duplicates: u64,
    /// Exports the stream stored out of the topic's order (durable mode):
    /// an acknowledgement named a lower stream sequence than one of an
    /// event published before it. The exporter's window is built so this
    /// stays 0 (see [`Durable::window`](crate::Durable::window)); each one
    /// is logged with its id.
    pub export_reordered: u64,
    /// Messages from NATS published on the local bus.
    pub imported: u64,
    /// Of those, stored messages (durable mode) the local bus has not
    /// finished handling yet, and so not acknowledged: a process that dies
    /// now has them delivered again, to its next run or another replica of
    /// its group. At most one pull batch (256) per imported topic or
    /// pattern: its importer takes no more while it holds that many.
    pub unacknowledged: u64,
    /// Messages from NATS recognised as already imported (redeliveries).
    pub duplicates: u64,
    /// Stored messages the broker delivered again while the local bus was
    /// still handling them (durable mode, a handler slower than the
    /// consumer's `ack_wait`): not imported again and not acknowledged,
    /// but answered with a progress acknowledgement that keeps them alive.
    /// The importer also sends those on its own every third of `ack_wait`,
    /// so this stays 0 unless handling stalls longer than that.
    pub kept_alive: u64,
    /// This bridge's own exports that came back to it (not imported).
    pub echoes: u64,
    /// Messages from NATS rejected ([`Rejected`](crate::Rejected)).
    pub rejected: u64,
    /// Of those, rejections the bus did not take (it was shut down):
    /// counted and logged only.
    pub rejected_unpublished: u64,
    /// Deliveries dropped because the bytes waiting for the importer were
    /// at [`BridgeBuilder::max_held_bytes`](crate::BridgeBuilder::max_held_bytes) (core NATS, a flood).
    pub dropped: u64,
    /// Bytes of messages from NATS waiting for the importer now, each
    /// counted at what it costs: its bytes and 256 for its bookkeeping.
    pub held_bytes: usize,
    /// Connections to NATS lost (each made again).
    pub disconnects: u64,
    /// Times a task of the bridge failed and was started again.
    pub restarts: u64,
    /// Pulls from a durable consumer that the broker did not answer at
    /// all: no message, not even the status it sends when a pull expires.
    /// A healthy broker answers every pull, so this stays 0; a consumer
    /// that answers none is stuck in the broker (nats-server before 2.9.15
    /// can leave a consumer so when several replicas create it at the same
    /// moment, which the bridge avoids as far as it can: see the README's
    /// "Replicas"). Logged, and reported by
    /// [`Bridge::health`](crate::Bridge::health).
    pub pulls_unanswered: u64,
    /// Pulls from a durable consumer that the server refused (status
    /// 409): a stored message larger than the pull's byte limit (the
    /// importer then fetches it alone and rejects it as oversize), too many
    /// pulls waiting, the consumer deleted. Logged, and reported by
    /// [`Bridge::health`](crate::Bridge::health).
    pub pulls_refused: u64,
    /// Stored messages another client took from the bridge's durable
    /// consumer and terminated (`+TERM`), so that the bridge never
    /// imported them; each is also named in a
    /// [`Rejected`](crate::Rejected) (`TerminatedElsewhere`), once per
    /// replica group, and counted in `rejected`.
    pub terminated_elsewhere: u64,
    /// Durable consumers found gone (deleted by someone, or lost by the
    /// broker) and made again. Logged, and reported by
    /// [`Bridge::health`](crate::Bridge::health).
    pub consumers_recreated: u64,
    /// Frames from the server that could not be parsed (each cost a
    /// reconnect).
    pub broken_frames: u64,
    /// Errors the server sent (`-ERR`, e.g. a permissions violation).
    pub server_errors: u64,
    /// Publishes handed to the connection that never reached the server:
    /// dropped because too many bytes waited (acknowledgements, pulls; the
    /// server redelivers), or lost with a connection (core-mode exports
    /// among them).
    pub unwritten: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) export_retries: AtomicU64,
    pub(crate) export_failures: AtomicU64,
    pub(crate) export_duplicates: AtomicU64,
    pub(crate) export_reordered: AtomicU64,
    pub(crate) imported: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) echoes: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) rejected_unpublished: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) pulls_unanswered: AtomicU64,
    pub(crate) kept_alive: AtomicU64,
    pub(crate) pulls_refused: AtomicU64,
    pub(crate) consumers_recreated: AtomicU64,
    pub(crate) terminated_elsewhere: AtomicU64,
}

/// What [`Bridge::health`](crate::Bridge::health) found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeHealth {
    /// The bridge's name.
    pub bridge: String,
    /// Whether its connection to NATS is up now.
    pub connected: bool,
    /// Every kind of trouble seen since it started.
    pub problems: Vec<BridgeProblem>,
}

/// One kind of trouble a bridge saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeProblem {
    /// What.
    pub kind: BridgeProblemKind,
    /// How often.
    pub count: u64,
    /// Whether it was seen within the last minute.
    pub recent: bool,
}

/// What kind of trouble a [`BridgeProblem`](crate::BridgeProblem) is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BridgeProblemKind {
    /// A task of the bridge failed and was started again.
    Restarted,
    /// The connection was lost (and made again).
    Disconnected,
    /// Deliveries were dropped at the byte budget.
    Dropped,
    /// The server reported errors (`-ERR`).
    ServerErrors,
    /// A durable consumer answered no pull
    /// ([`BridgeStats::pulls_unanswered`](crate::BridgeStats::pulls_unanswered)).
    PullsUnanswered,
    /// The server refused pulls from a durable consumer
    /// ([`BridgeStats::pulls_refused`](crate::BridgeStats::pulls_refused)).
    PullsRefused,
    /// A durable consumer was gone and was made again
    /// ([`BridgeStats::consumers_recreated`](crate::BridgeStats::consumers_recreated)).
    ConsumerRecreated,
}

impl BridgeHealth {
    /// Connected, and nothing seen within the last minute.
    pub fn is_healthy(&self) -> bool {
        self.connected && !self.problems.iter().any(|p| p.recent)
    }
}

impl fmt::Display for BridgeHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bridge `{}`: {}",
            self.bridge,
            if self.connected {
                "connected"
            } else {
                "reconnecting"
            }
        )?;
        for p in &self.problems {
            write!(
                f,
                "; {:?} {} time(s){}",
                p.kind,
                p.count,
                if p.recent { " (recently)" } else { "" }
            )?;
        }
        Ok(())
    }
}

/// What [`Bridge::shutdown`](crate::Bridge::shutdown) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeReport {
    /// The final numbers.
    pub stats: BridgeStats,
    /// Whether the deadline passed before everything was sent and
    /// acknowledged.
    pub deadline_hit: bool,
    /// Local events never handed to the connection: still queued in the
    /// export subscriptions or in an exporter's hands at the deadline
    /// (counted as discarded in the bus's stats too).
    pub unsent: u64,
    /// Publishes handed to the connection but never written, because it
    /// was down when the bridge stopped: core-mode exports (each one an
    /// event lost), durable retries, acknowledgements.
    pub unwritten: u64,
    /// Stored messages (durable mode) handed to the local bus whose
    /// handling had not finished by the deadline: not acknowledged, so the
    /// broker delivers them again (to this bridge's next run or another
    /// replica), where the idempotency key of a new process does not know
    /// them: handled again there.
    pub unacknowledged: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl BridgeReport {
    /// Everything was sent and acknowledged in time.
    pub fn is_clean(&self) -> bool {
        !self.deadline_hit && self.unsent == 0 && self.unwritten == 0
    }
}
