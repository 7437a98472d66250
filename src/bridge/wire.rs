//! What crosses the wire: the payload [`Format`] (JSON by default) and the
//! headers that carry an event's metadata.

use std::time::{Duration, UNIX_EPOCH};

use async_nats::HeaderMap;

use crate::error::DecodeError;
use crate::{AnyEvent, Bus, DynEvent};

/// Header: the event's id, unique across processes (`<origin>-<id>`).
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
/// Header: the bridge that exported it (loop prevention).
pub const ORIGIN: &str = "Tidings-Origin";
/// Header: the payload's format, e.g. `application/json`.
pub const CONTENT_TYPE: &str = "Content-Type";

/// How event payloads are written to and read from the wire. The bridge
/// uses [`Json`] unless told otherwise
/// ([`BridgeBuilder::format`](super::BridgeBuilder::format)); a format works
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
            type_name: event.type_name,
            message: e.to_string(),
        })?;
        Ok(event)
    }
}

/// The id an event is known by across processes.
pub(crate) fn wire_id(origin: &str, event: &AnyEvent) -> String {
    format!("{origin}-{}", event.id().get())
}

/// The headers of an exported event known across processes as `id`.
pub(crate) fn headers(origin: &str, id: &str, event: &AnyEvent, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(EVENT_ID, id);
    h.insert(TOPIC, event.topic());
    h.insert(SEQ, event.seq().to_string().as_str());
    let at = event
        .published_at()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    h.insert(PUBLISHED_AT, at.to_string().as_str());
    if let Some(key) = event.idempotency_key() {
        h.insert(IDEMPOTENCY_KEY, key);
    }
    h.insert(TYPE, event.type_name());
    h.insert(ORIGIN, origin);
    h.insert(CONTENT_TYPE, content_type);
    h
}

/// A header's value, if present.
pub(crate) fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}
