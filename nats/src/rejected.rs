//! What the bridge makes of a message it cannot import: a [`Rejected`](crate::Rejected)
//! event, with every field bounded.

use std::fmt;

use tidings::{BusBuilder, Event, Overflow, TopicConfig};

/// The topic bridges publish [`Rejected`](crate::Rejected) messages on. Every bus built with
/// the `nats` feature registers it, with [`Overflow::DropOldest`](tidings::Overflow::DropOldest)
/// by default: a reader of rejections that falls behind loses the oldest
/// (counted), and never holds imports up.
pub const REJECTED_TOPIC: &str = "tidings.bridge.rejected";

/// The longest subject, reason or id a [`Rejected`](crate::Rejected) keeps, in characters.
pub const REJECTED_FIELD_LIMIT: usize = 256;

/// A message from NATS that a bridge could not turn into an event. Every
/// field is bounded: text to [`REJECTED_FIELD_LIMIT`] characters, `raw` to
/// the bridge's [`raw_limit`](crate::BridgeBuilder::raw_limit).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Rejected {
    /// The bridge's name.
    pub bridge: String,
    /// The NATS subject it arrived on (not UTF-8 bytes replaced).
    pub subject: String,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The payload's first bytes ([`BridgeBuilder::raw_limit`](crate::BridgeBuilder::raw_limit)).
    pub raw: Vec<u8>,
    /// The payload's whole length.
    pub raw_len: usize,
    /// The `Tidings-Event-Id` header, if it had one.
    pub event_id: Option<String>,
}

// Keeps compiler errors about a missing `Event` impl from suggesting this one.
#[diagnostic::do_not_recommend]
impl Event for Rejected {
    const TOPIC: &'static str = REJECTED_TOPIC;
}

/// Why a bridge rejected a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The payload does not decode as the topic's type.
    Malformed(String),
    /// The headers are not well formed (not UTF-8 where they must be, a
    /// lone CR or LF, a line without a colon, a bad status line), or an id
    /// or key in them is too long or holds a control character.
    BadHeaders(String),
    /// The subject is not an imported, allow-listed topic.
    NotAllowed,
    /// The payload is larger than the bridge's limit.
    Oversize {
        /// The limit, in bytes.
        limit: usize,
    },
    /// It carries this bridge's origin, but is not one of its own exports;
    /// or its event id, cause or correlation claims this bridge's origin
    /// with a tag the bridge never minted (see
    /// [`Bridge::verify`](crate::Bridge::verify)).
    SpoofedOrigin,
    /// The local bus refused the event (shut down, or a full `Fail`
    /// subscription); in durable mode the message is redelivered instead.
    Refused(String),
    /// Durable mode: the consumer delivered it this many times without the
    /// bridge acknowledging it, and gave up on it (the server's
    /// max-deliveries advisory).
    Undeliverable {
        /// Deliveries made.
        deliveries: u64,
    },
    /// Durable mode: a client other than the bridge took it from the
    /// bridge's consumer and terminated it (`+TERM`), so the bridge never
    /// imported it (the server's terminated-message advisory). A bridge
    /// never terminates a message itself: it acknowledges what it rejects,
    /// so every termination on its consumer is someone else's.
    TerminatedElsewhere,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Malformed(msg) => write!(f, "malformed payload: {msg}"),
            RejectReason::BadHeaders(msg) => write!(f, "bad headers: {msg}"),
            RejectReason::NotAllowed => f.write_str("subject is not an imported topic"),
            RejectReason::Oversize { limit } => write!(f, "payload over the {limit}-byte limit"),
            RejectReason::SpoofedOrigin => {
                f.write_str("claims this bridge's origin but is not one of its exports")
            }
            RejectReason::Refused(msg) => write!(f, "refused by the bus: {msg}"),
            RejectReason::Undeliverable { deliveries } => {
                write!(f, "given up by JetStream after {deliveries} deliveries")
            }
            RejectReason::TerminatedElsewhere => {
                f.write_str("terminated on the bridge's consumer by another client")
            }
        }
    }
}

impl RejectReason {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "malformed",
            RejectReason::BadHeaders(_) => "bad_headers",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::Oversize { .. } => "oversize",
            RejectReason::SpoofedOrigin => "spoofed_origin",
            RejectReason::Refused(_) => "refused",
            RejectReason::Undeliverable { .. } => "undeliverable",
            RejectReason::TerminatedElsewhere => "terminated_elsewhere",
        }
    }
}

/// Registers the topics a bridge publishes on ([`REJECTED_TOPIC`]) on a
/// bus being built: the bus's allow-list is fixed once it is built, so a
/// bus that will carry a bridge says so.
///
/// ```
/// use tidings::Bus;
/// use tidings_nats::{BridgeTopics, REJECTED_TOPIC};
///
/// let bus = Bus::builder().bridge_topics().build()?;
/// assert!(bus.topics().contains(&REJECTED_TOPIC));
/// # Ok::<(), tidings::error::BuildError>(())
/// ```
pub trait BridgeTopics {
    /// Adds [`REJECTED_TOPIC`] to the allow-list, dropping its oldest
    /// rejections for a reader that falls behind.
    fn bridge_topics(self) -> Self;
}

impl BridgeTopics for BusBuilder {
    fn bridge_topics(self) -> Self {
        self.topic_with::<Rejected>(TopicConfig::default().overflow(Overflow::DropOldest))
    }
}
