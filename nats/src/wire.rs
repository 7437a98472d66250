//! What crosses the wire: the payload [`Format`] (JSON by default), the
//! headers that carry an event's metadata, and the event ids.
//!
//! An exported event's id is `<origin>-<n>-<tag>`: the exporting bridge's
//! origin (its name and a random token drawn when it starts), the event's
//! [`EventId`](tidings::EventId) in its process, and a 64-bit tag that only
//! that bridge can compute (a keyed hash of the origin and `n`, with a key
//! drawn from the operating system's randomness when the bridge starts). Nobody else can
//! predict the id of an event not yet exported, so no peer can publish it
//! first to have the real one dropped as a duplicate; and a bridge tells
//! its own exports coming back (an echo) from a peer that only copied its
//! origin. Because the id follows from the event, an event that caused
//! another is named by the same id in the `Tidings-Caused-By` and
//! `Tidings-Correlation` headers, exported or not.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, UNIX_EPOCH};

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use tidings::error::DecodeError;
use tidings::{AnyEvent, Bus, DynEvent, EventRef};

/// Header: the event's id, unique across processes (see the module docs).
pub const EVENT_ID: &str = "Tidings-Event-Id";
/// Header: the event's topic.
pub const TOPIC: &str = "Tidings-Topic";
/// Header: the event's sequence number on its topic, in the publishing bus.
pub const SEQ: &str = "Tidings-Seq";
/// Header: when the publishing bus accepted it, in nanoseconds since the
/// Unix epoch.
pub const PUBLISHED_AT: &str = "Tidings-Published-At";
/// Header: the idempotency key it was published with, if any.
pub const IDEMPOTENCY_KEY: &str = "Tidings-Idempotency-Key";
/// Header: the Rust type of the topic in the publishing process.
pub const TYPE: &str = "Tidings-Type";
/// Header: the bridge that exported it.
pub const ORIGIN: &str = "Tidings-Origin";
/// Header: the payload's format, e.g. `application/json`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Header: the id of the event whose handling published this one, as it
/// crosses processes ([`tidings::Envelope::caused_by`]).
pub const CAUSED_BY: &str = "Tidings-Caused-By";
/// Header: the id of the root of its chain ([`tidings::Envelope::correlation`]).
pub const CORRELATION: &str = "Tidings-Correlation";
/// Header: the W3C trace context of the span the event was published in
/// (`00-<trace id>-<span id>-<flags>`), with the `opentelemetry` feature.
pub const TRACEPARENT: &str = "traceparent";
/// Header: JetStream's message id, for the stream's duplicate window.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The longest event id and idempotency key accepted from the wire, in
/// bytes; a message with a longer one is rejected.
pub const MAX_ID_LEN: usize = 256;

/// How event payloads are written to and read from the wire. The bridge
/// uses [`Json`] unless told otherwise
/// ([`BridgeBuilder::format`](crate::BridgeBuilder::format)); a format works
/// through the event types' serde codecs (`#[event(serde)]`).
pub trait Format: Send + Sync + 'static {
    /// Its name, sent as the `Content-Type` header.
    fn content_type(&self) -> &'static str;
    /// Writes the event (its payload, not its metadata).
    ///
    /// # Errors
    /// The format's message, when the event does not serialize.
    fn encode(&self, event: &AnyEvent) -> Result<Vec<u8>, String>;
    /// Reads an event of `topic` through `bus`'s allow-list.
    ///
    /// # Errors
    /// [`DecodeError`] naming the topic.
    fn decode(&self, bus: &Bus, topic: &str, payload: &[u8]) -> Result<DynEvent, DecodeError>;
}

/// JSON, through `serde_json`.
#[derive(Copy, Clone, Debug, Default)]
pub struct Json;

impl Format for Json {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, event: &AnyEvent) -> Result<Vec<u8>, String> {
        serde_json::to_vec(event).map_err(|e| e.to_string())
    }

    fn decode(&self, bus: &Bus, topic: &str, payload: &[u8]) -> Result<DynEvent, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let event = bus.deserialize_event(topic, &mut de)?;
        // Trailing bytes are a malformed payload too.
        de.end().map_err(|e| DecodeError::Payload {
            topic: event.topic(),
            type_name: event.type_name(),
            message: e.to_string(),
        })?;
        Ok(event)
    }
}

/// Mints and recognises one bridge's event ids.
pub(crate) struct Ids {
    origin: String,
    key: RandomState,
}

impl Ids {
    pub(crate) fn new(origin: String) -> Self {
        Ids {
            origin,
            key: RandomState::new(),
        }
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    fn tag(&self, n: u64) -> u64 {
        let mut h = self.key.build_hasher();
        h.write(self.origin.as_bytes());
        h.write_u64(n);
        h.finish()
    }

    /// The id of local event `n` (its [`EventId`](tidings::EventId)) across
    /// processes: `<origin>-<n>-<tag>`. The same event always gets the same
    /// id, so one that caused another can be named before (or without)
    /// being exported itself.
    pub(crate) fn id_of(&self, n: u64) -> String {
        format!("{}-{n:x}-{:016x}", self.origin, self.tag(n))
    }

    /// How `event` is named across processes: its id there if it came from
    /// another process, else the id this bridge gives local events.
    pub(crate) fn reference(&self, event: &EventRef) -> String {
        match event {
            EventRef::Local(id) => self.id_of(id.get()),
            EventRef::Remote(id) => id.to_string(),
            // A kind of reference this bridge does not know: its text.
            other => other.to_string(),
        }
    }

    /// Whether `id` claims to be minted by this bridge: it starts with its
    /// origin. Only [`is_ours`](Ids::is_ours) tells whether it was.
    pub(crate) fn claims_ours(&self, id: &str) -> bool {
        id.strip_prefix(self.origin.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// Whether `id` was minted by this bridge.
    pub(crate) fn is_ours(&self, id: &str) -> bool {
        let Some(rest) = id
            .strip_prefix(self.origin.as_str())
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        let Some((n, tag)) = rest.split_once('-') else {
            return false;
        };
        match (u64::from_str_radix(n, 16), u64::from_str_radix(tag, 16)) {
            (Ok(n), Ok(tag)) => tag == self.tag(n) && tag_width(rest),
            _ => false,
        }
    }
}

/// The tag is written with exactly 16 hex digits.
fn tag_width(rest: &str) -> bool {
    rest.rsplit_once('-')
        .is_some_and(|(_, tag)| tag.len() == 16)
}

/// The header block of an exported event known across processes as `id`;
/// with `msg_id`, the JetStream message id too. Every value is ours or
/// checked at publish (keys hold no control character).
pub(crate) fn headers(
    ids: &Ids,
    id: &str,
    event: &AnyEvent,
    content_type: &str,
    msg_id: Option<&str>,
) -> BytesMut {
    let origin = ids.origin();
    let mut h = BytesMut::with_capacity(320);
    h.put_slice(b"NATS/1.0\r\n");
    let field = |h: &mut BytesMut, name: &str, value: &str| {
        h.put_slice(name.as_bytes());
        h.put_slice(b": ");
        h.put_slice(value.as_bytes());
        h.put_slice(b"\r\n");
    };
    field(&mut h, EVENT_ID, id);
    field(&mut h, TOPIC, event.topic());
    let at = event
        .published_at()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    // Numbers written in place: no string made for them.
    for (name, n) in [(SEQ, u128::from(event.seq())), (PUBLISHED_AT, at)] {
        h.put_slice(name.as_bytes());
        h.put_slice(b": ");
        let _ = write!(h, "{n}");
        h.put_slice(b"\r\n");
    }
    if let Some(key) = event.idempotency_key() {
        field(&mut h, IDEMPOTENCY_KEY, key);
    }
    field(&mut h, TYPE, event.type_name());
    field(&mut h, ORIGIN, origin);
    field(&mut h, CONTENT_TYPE, content_type);
    if let Some(msg_id) = msg_id {
        field(&mut h, NATS_MSG_ID, msg_id);
    }
    if let (Some(cause), Some(root)) = (event.caused_by(), event.correlation()) {
        field(&mut h, CAUSED_BY, &ids.reference(cause));
        field(&mut h, CORRELATION, &ids.reference(root));
    }
    #[cfg(feature = "opentelemetry")]
    if let Some(parent) = event.trace_parent() {
        field(&mut h, TRACEPARENT, &traceparent(parent));
    }
    h.put_slice(b"\r\n");
    h
}

/// A span context as a W3C `traceparent` value.
#[cfg(feature = "opentelemetry")]
fn traceparent(parent: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        parent.trace_id(),
        parent.span_id(),
        parent.trace_flags().to_u8()
    )
}

/// Reads a W3C `traceparent` value (version 00: lowercase hex, ids not
/// all zero); `None` for anything else, which is ignored as the standard
/// says.
#[cfg(feature = "opentelemetry")]
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if parts.next().is_some()
        || version != "00"
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let parent = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    parent.is_valid().then_some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn traceparents_round_trip_and_odd_ones_are_ignored() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = parse_traceparent(good).expect("valid");
        assert_eq!(traceparent(&parent).as_bytes(), good);
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e47\xff-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ids_are_recognised_by_their_minter_only() {
        let a = Ids::new("billing.0123".into());
        let b = Ids::new("billing.0123".into()); // same origin, other key
        let id = a.id_of(1);
        assert!(id.starts_with("billing.0123-1-"), "{id}");
        assert_eq!(a.id_of(1), id, "the same event, the same id");
        assert!(a.is_ours(&id));
        assert!(!b.is_ours(&id), "a copied origin is not enough");
        let next = a.id_of(2);
        assert_ne!(id, next);
        // The next id cannot be guessed from the last one.
        let forged = format!("billing.0123-2-{}", &id[id.len() - 16..]);
        assert!(!a.is_ours(&forged) || forged == next);
        for bad in [
            "",
            "billing.0123",
            "billing.0123-",
            "billing.0123-x-y",
            "other-1-0000000000000000",
        ] {
            assert!(!a.is_ours(bad), "{bad}");
        }
    }
}
