//! Topics bridged to NATS (feature `nats`): the same typed topics across
//! processes, through a real broker, with the same allow-list.
//!
//! ```no_run
//! # use tidings::{Bus, Event};
//! # use tidings::bridge::Bridge;
//! #[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
//! #[event(topic = "orders.created", serde)]
//! struct OrderCreated { id: u64 }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().topic::<OrderCreated>().build()?;
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let bridge = Bridge::builder(&bus, client)
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
//! - **Core NATS** (the default): at most once. An exported event is handed
//!   to the NATS client, which buffers it while disconnected (within its own
//!   bounds) and sends it on reconnect; NATS delivers it to the subscribers
//!   connected at that moment. Events published while a subscriber's bridge
//!   is not connected are not delivered to it. Fast: no acknowledgement.
//! - **Durable** ([`BridgeBuilder::durable`], JetStream): effectively once,
//!   end to end. The exporter publishes with `Nats-Msg-Id` set to the
//!   event's idempotency key or its cross-process id, waits for the stream's
//!   acknowledgement and retries until it comes (the broker's duplicate
//!   window drops a repeat); while it retries, the export subscription's
//!   queue fills under the topic's overflow policy (`Block`: local
//!   publishers wait). The importer reads through a durable pull consumer
//!   and acknowledges a message only after the local bus accepted the event
//!   (at least once), publishing it with the same id as idempotency key so
//!   that a redelivery is not handled twice (within the topic's
//!   [`DedupWindow`](crate::DedupWindow)). A broker restart loses nothing:
//!   the exporter retries, the importer resumes from the consumer.
//!
//! # Bad input
//! A message that is larger than [`BridgeBuilder::max_payload`], arrives on
//! a subject that is not an imported, allow-listed topic, or does not
//! decode as its topic's type never reaches a handler and never disappears:
//! it is published on the bus as a [`Rejected`] event (topic
//! [`REJECTED_TOPIC`]) with the reason and the first
//! [`raw_limit`](BridgeBuilder::raw_limit) bytes, counted in
//! [`BridgeStats`] and metrics, and logged. In durable mode it is then
//! acknowledged as terminated, so it is not redelivered forever.
//!
//! # Loops
//! Imported events carry the bridge's origin
//! ([`Envelope::origin`](crate::Envelope::origin)) and are never exported
//! again by it; messages a bridge exported itself are not imported back.

pub mod wire;

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::future::Either;
use futures::StreamExt;
use tokio::task::JoinHandle;

use self::wire::{Format, Json};
use crate::error::{PatternError, SubscribeError};
use crate::{AnyEvent, Bus, Event, Pattern, PatternSubscription, PublishOptions};

/// The topic bridges publish [`Rejected`] messages on. Every bus built with
/// the `nats` feature registers it.
pub const REJECTED_TOPIC: &str = "tidings.bridge.rejected";

/// A message from NATS that a bridge could not turn into an event.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Rejected {
    /// The bridge's name.
    pub bridge: String,
    /// The NATS subject it arrived on.
    pub subject: String,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The payload's first bytes ([`BridgeBuilder::raw_limit`]).
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
    /// The subject is not an imported, allow-listed topic.
    NotAllowed,
    /// The payload is larger than the bridge's limit.
    Oversize {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The local bus refused the event (shut down, or a full `Fail`
    /// subscription); in durable mode the message is redelivered instead.
    Refused(String),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Malformed(msg) => write!(f, "malformed payload: {msg}"),
            RejectReason::NotAllowed => f.write_str("subject is not an imported topic"),
            RejectReason::Oversize { limit } => write!(f, "payload over the {limit}-byte limit"),
            RejectReason::Refused(msg) => write!(f, "refused by the bus: {msg}"),
        }
    }
}

impl RejectReason {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "malformed",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::Oversize { .. } => "oversize",
            RejectReason::Refused(_) => "refused",
        }
    }
}

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The topic of an exported or imported type is not on the bus's
    /// allow-list.
    #[error(
        "topic `{topic}` is not registered on this bus; only allow-listed topics can be bridged"
    )]
    UnknownTopic {
        /// The topic.
        topic: &'static str,
    },
    /// A pattern matches no registered topic (tidings' own `tidings.*`
    /// topics are never matched by a pattern).
    #[error("pattern `{pattern}` matches no bridgeable topic on this bus")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// A malformed pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A bridged topic's type cannot be serialized.
    #[error("topic `{topic}` (type `{type_name}`) cannot cross the bridge: derive Serialize and Deserialize and add #[event(serde)]")]
    NotSerializable {
        /// The topic.
        topic: &'static str,
        /// Its type.
        type_name: &'static str,
    },
    /// Subscribing to an exported topic failed (the bus is shut down, say).
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The NATS server refused a set-up step.
    #[error("NATS refused to {what}: {message}")]
    Nats {
        /// The step.
        what: &'static str,
        /// The server's or client's message.
        message: String,
    },
}

/// JetStream settings for [durable mode](BridgeBuilder::durable). Both
/// sides of a bridge name the same stream with the same subjects.
#[derive(Clone, Debug)]
pub struct Durable {
    stream: String,
    subjects: Vec<String>,
    duplicate_window: Duration,
}

impl Durable {
    /// The JetStream stream `stream` holding `subjects` (NATS subjects,
    /// wildcards allowed, prefix included). Created if missing, file
    /// storage, duplicate window 2 minutes.
    pub fn new<S: Into<String>>(
        stream: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        Durable {
            stream: stream.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// How long the broker remembers message ids to drop duplicates.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }
}

/// A bridge's numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BridgeStats {
    /// Local events sent to NATS (acknowledged by the stream in durable mode).
    pub exported: u64,
    /// Publishes to NATS tried again (durable mode, while the broker is away).
    pub export_retries: u64,
    /// Local events that could not be encoded (counted, logged, not sent).
    pub export_failures: u64,
    /// Exports the broker acknowledged as duplicates (durable mode): their
    /// `Nats-Msg-Id` was already in the stream's duplicate window, so the
    /// stream did not store them again and nobody will receive them. Not
    /// counted in `exported`; each is logged with its id.
    pub export_duplicates: u64,
    /// Messages from NATS published on the local bus.
    pub imported: u64,
    /// Messages from NATS recognised as already imported (redeliveries).
    pub duplicates: u64,
    /// Messages from NATS rejected ([`Rejected`]).
    pub rejected: u64,
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    export_retries: AtomicU64,
    export_failures: AtomicU64,
    export_duplicates: AtomicU64,
    imported: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
}

/// Sets up a [`Bridge`]; made by [`Bridge::builder`].
#[must_use = "a bridge does nothing until .start().await"]
pub struct BridgeBuilder {
    bus: Bus,
    client: async_nats::Client,
    name: String,
    prefix: Option<String>,
    exports: Vec<String>,
    imports: Vec<String>,
    format: Arc<dyn Format>,
    max_payload: usize,
    raw_limit: usize,
    durable: Option<Durable>,
    error: Option<BridgeError>,
}

impl BridgeBuilder {
    /// Names the bridge: in stats, metrics, logs, its origin and its durable
    /// consumers' names (default `tidings`). Two processes importing the same
    /// subjects in durable mode each need their own name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Puts every subject under `prefix` (`acme` → `acme.orders.created`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Sends local events of `E` to the NATS subject named like its topic.
    pub fn export<E: Event>(mut self) -> Self {
        let topic = self.registered::<E>();
        self.exports.push(topic);
        self
    }

    /// `E`'s topic, noting an error for `start` if it is not registered.
    fn registered<E: Event>(&mut self) -> String {
        if !self.bus.is_registered::<E>() {
            self.error
                .get_or_insert(BridgeError::UnknownTopic { topic: E::TOPIC });
        }
        E::TOPIC.to_owned()
    }

    /// Sends local events of every registered topic matching `pattern`
    /// (checked when the bridge starts).
    pub fn export_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.exports.push(pattern.into());
        self
    }

    /// Publishes messages from the NATS subject named like `E`'s topic on
    /// the local bus, as typed events.
    pub fn import<E: Event>(mut self) -> Self {
        let topic = self.registered::<E>();
        self.imports.push(topic);
        self
    }

    /// Publishes messages from every subject matching `pattern` on the local
    /// bus; a message whose topic is not registered is [rejected](Rejected).
    pub fn import_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.imports.push(pattern.into());
        self
    }

    /// The payload format (default [`Json`]).
    pub fn format(mut self, format: impl Format) -> Self {
        self.format = Arc::new(format);
        self
    }

    /// The largest payload imported (default 1 MiB); larger ones are
    /// rejected.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How many bytes of a rejected payload its [`Rejected`] keeps (default
    /// 4 KiB).
    pub fn raw_limit(mut self, bytes: usize) -> Self {
        self.raw_limit = bytes;
        self
    }

    /// Durable mode, through JetStream (see the [module docs](self)).
    pub fn durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// `pattern` and the registered, bridgeable topics it matches.
    fn resolve(&self, pattern: &str) -> Result<(Pattern, Vec<&'static str>), BridgeError> {
        let parsed = Pattern::parse(pattern)?;
        // Naming a topic exactly may bridge one of tidings' own; a wildcard
        // never picks them up.
        let exact = !pattern.contains(['*', '>']);
        let mut topics = Vec::new();
        for entry in self.bus.registry().matching(&parsed) {
            if !exact && entry.name.starts_with("tidings.") {
                continue;
            }
            if entry.erased.codec().is_none() {
                return Err(BridgeError::NotSerializable {
                    topic: entry.name,
                    type_name: entry.type_name,
                });
            }
            topics.push(entry.name);
        }
        if topics.is_empty() {
            return Err(BridgeError::NoMatch {
                pattern: pattern.to_owned(),
            });
        }
        Ok((parsed, topics))
    }

    /// Checks everything against the allow-list, sets up JetStream in
    /// durable mode, and starts the bridge's tasks on the current runtime.
    ///
    /// # Errors
    /// [`BridgeError`] naming the topic, pattern or step.
    pub async fn start(mut self) -> Result<Bridge, BridgeError> {
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        let mut exported = Vec::new();
        for pattern in &self.exports {
            for topic in self.resolve(pattern)?.1 {
                if !exported.contains(&topic) {
                    exported.push(topic);
                }
            }
        }
        let mut imported = Vec::new();
        for pattern in &self.imports {
            imported.push(self.resolve(pattern)?.0);
        }
        let js = self
            .durable
            .as_ref()
            .map(|_| jetstream::new(self.client.clone()));
        if let (Some(js), Some(durable)) = (&js, &self.durable) {
            js.get_or_create_stream(jetstream::stream::Config {
                name: durable.stream.clone(),
                subjects: durable.subjects.clone(),
                duplicate_window: durable.duplicate_window,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BridgeError::Nats {
                what: "create the JetStream stream",
                message: e.to_string(),
            })?;
        }
        let ctx = Arc::new(Ctx {
            origin: origin_id(&self.name),
            name: self.name.clone(),
            bus: self.bus.clone(),
            client: self.client.clone(),
            js: js.clone(),
            prefix: self.prefix.clone(),
            imports: imported.clone(),
            format: Arc::clone(&self.format),
            max_payload: self.max_payload,
            raw_limit: self.raw_limit,
            counters: Counters::default(),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut exports = Vec::new();
        for topic in exported {
            let sub = self
                .bus
                .subscribe_pattern(topic)
                .name(format!("bridge:{}", self.name))
                .stream()?;
            let ctx = Arc::clone(&ctx);
            let stopped = stopped.clone();
            exports.push(tokio::spawn(
                async move { ctx.export_loop(sub, stopped).await },
            ));
        }
        let mut imports = Vec::new();
        for pattern in imported {
            let subject = ctx.subject(pattern.as_str());
            let task =
                match (&js, &self.durable) {
                    (Some(js), Some(durable)) => {
                        let consumer = consumer(js, durable, &self.name, &subject).await?;
                        let ctx = Arc::clone(&ctx);
                        let stopped = stopped.clone();
                        tokio::spawn(async move { ctx.durable_import_loop(consumer, stopped).await })
                    }
                    _ => {
                        let sub = self.client.subscribe(subject).await.map_err(|e| {
                            BridgeError::Nats {
                                what: "subscribe",
                                message: e.to_string(),
                            }
                        })?;
                        let ctx = Arc::clone(&ctx);
                        let stopped = stopped.clone();
                        tokio::spawn(async move { ctx.core_import_loop(sub, stopped).await })
                    }
                };
            imports.push(task);
        }
        // The server must have taken every subscription before `start`
        // returns, or a publish made right after could miss it.
        round_trip(&self.client).await?;
        Ok(Bridge {
            ctx,
            exports,
            imports,
            stop,
        })
    }
}

impl fmt::Debug for BridgeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeBuilder")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("exports", &self.exports)
            .field("imports", &self.imports)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

/// The durable pull consumer of one imported subject.
async fn consumer(
    js: &jetstream::Context,
    durable: &Durable,
    bridge: &str,
    subject: &str,
) -> Result<jetstream::consumer::PullConsumer, BridgeError> {
    let nats = |what| {
        move |e: &dyn fmt::Display| BridgeError::Nats {
            what,
            message: e.to_string(),
        }
    };
    let stream = js
        .get_stream(&durable.stream)
        .await
        .map_err(|e| nats("find the JetStream stream")(&e))?;
    // Consumer names allow no `.`, `*` or `>`.
    let name: String = format!("{bridge}-{subject}")
        .chars()
        .map(|c| match c {
            '.' => '_',
            '*' => 'S',
            '>' => 'T',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect();
    stream
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject.to_owned(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats("create the durable consumer")(&e))
}

/// Waits until the server has processed everything this client sent so
/// far. `Client::flush` only writes the buffer to the socket; a message the
/// client sends to itself comes back only after the server handled every
/// command before it on this connection (it handles one connection's
/// commands in order).
async fn round_trip(client: &async_nats::Client) -> Result<(), BridgeError> {
    let nats = |e: &dyn fmt::Display| BridgeError::Nats {
        what: "confirm its subscriptions with the server",
        message: e.to_string(),
    };
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.map_err(|e| nats(&e))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| nats(&e))?;
    match tokio::time::timeout(Duration::from_secs(30), probe.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(nats(&"the connection closed")),
        Err(_) => Err(nats(&"no answer within 30 s")),
    }
}

/// A name unique to this bridge in this process run.
fn origin_id(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(now.as_nanos());
    }
    format!("{name}.{:016x}", h.finish())
}

/// What a bridge's tasks share.
struct Ctx {
    name: String,
    origin: String,
    bus: Bus,
    client: async_nats::Client,
    js: Option<jetstream::Context>,
    prefix: Option<String>,
    imports: Vec<Pattern>,
    format: Arc<dyn Format>,
    max_payload: usize,
    raw_limit: usize,
    counters: Counters,
}

/// What became of one imported message.
enum Imported {
    /// Published, found to be a duplicate, skipped (its own export) or
    /// rejected: done with.
    Done,
    /// Rejected for good: terminate it (durable).
    Rejected,
    /// The bus refused it for now: have it redelivered (durable).
    Retry,
}

impl Ctx {
    fn subject(&self, topic: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}.{topic}"),
            None => topic.to_owned(),
        }
    }

    fn topic_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        match &self.prefix {
            Some(prefix) => subject.strip_prefix(prefix.as_str())?.strip_prefix('.'),
            None => Some(subject),
        }
    }

    fn count(&self, counter: &AtomicU64, metric: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(metric, "bridge" => self.name.clone()).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = metric;
    }

    async fn export_loop(
        &self,
        mut sub: PatternSubscription,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut stop = pin!(stopping(stopped));
        loop {
            match futures::future::select(sub.next(), stop.as_mut()).await {
                Either::Left((Some(event), _)) => self.export(event).await,
                Either::Left((None, _)) => return,
                Either::Right(((), _)) => break,
            }
        }
        // Stopping: take no more, send what is queued.
        sub.close();
        while let Some(event) = sub.next().await {
            self.export(event).await;
        }
    }

    async fn export(&self, event: AnyEvent) {
        if event.origin() == Some(self.origin.as_str()) {
            return; // imported by this bridge: never sent back
        }
        let payload: Bytes = match self.format.encode(&event) {
            Ok(payload) => payload.into(),
            Err(message) => {
                self.count(
                    &self.counters.export_failures,
                    "tidings_bridge_export_failures_total",
                );
                warn(
                    &self.name,
                    event.topic(),
                    &format!("event does not encode: {message}"),
                );
                return;
            }
        };
        let subject = self.subject(event.topic());
        let id = wire::wire_id(&self.origin, &event);
        let mut headers = wire::headers(&self.origin, &id, &event, self.format.content_type());
        match &self.js {
            None => {
                if let Err(e) = self
                    .client
                    .publish_with_headers(subject, headers, payload)
                    .await
                {
                    self.count(
                        &self.counters.export_failures,
                        "tidings_bridge_export_failures_total",
                    );
                    warn(&self.name, event.topic(), &format!("publish failed: {e}"));
                    return;
                }
            }
            Some(js) => {
                let msg_id = event.idempotency_key().unwrap_or(&id);
                headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
                let mut delay = Duration::from_millis(10);
                let mut retried = false;
                loop {
                    let sent = match js
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await
                    {
                        Ok(ack) => ack.await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match sent {
                        // A retry found its own earlier try stored (its ack
                        // was lost): the event did get through.
                        Ok(ack) if ack.duplicate && retried => break,
                        Ok(ack) if ack.duplicate => {
                            self.count(
                                &self.counters.export_duplicates,
                                "tidings_bridge_export_duplicates_total",
                            );
                            warn(
                                &self.name,
                                event.topic(),
                                &format!(
                                    "JetStream already holds message id `{msg_id}` (within the stream's duplicate window): the broker dropped this export"
                                ),
                            );
                            return;
                        }
                        Ok(_) => break,
                        Err(message) => {
                            self.count(
                                &self.counters.export_retries,
                                "tidings_bridge_export_retries_total",
                            );
                            if self.counters.export_retries.load(Ordering::Relaxed) % 50 == 1 {
                                warn(
                                    &self.name,
                                    event.topic(),
                                    &format!("JetStream publish failed, retrying: {message}"),
                                );
                            }
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                            retried = true;
                        }
                    }
                }
            }
        }
        self.count(&self.counters.exported, "tidings_bridge_exported_total");
    }

    async fn core_import_loop(
        &self,
        mut sub: async_nats::Subscriber,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut stop = pin!(stopping(stopped));
        loop {
            match futures::future::select(sub.next(), stop.as_mut()).await {
                Either::Left((Some(msg), _)) => self.import_core(&msg).await,
                Either::Left((None, _)) => return,
                Either::Right(((), _)) => break,
            }
        }
        // Stopping: take no more, finish what the client already received.
        let _ = sub.unsubscribe().await;
        while let Some(msg) = sub.next().await {
            self.import_core(&msg).await;
        }
    }

    async fn import_core(&self, msg: &async_nats::Message) {
        self.import(
            msg.subject.as_str(),
            msg.headers.as_ref(),
            &msg.payload,
            false,
        )
        .await;
    }

    /// Pulls batches from the durable consumer and imports them one by one,
    /// each acknowledged once the local bus has it. Once stopped it fetches
    /// no more, but finishes the batch it holds: every message fetched is
    /// handed to the bus, counted and acknowledged, so a restart takes up
    /// exactly where this left off.
    async fn durable_import_loop(
        &self,
        consumer: jetstream::consumer::PullConsumer,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        while !*stopped.borrow() {
            let batch = consumer
                .batch()
                .max_messages(IMPORT_BATCH)
                .expires(IMPORT_WAIT)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(_) => {
                    // The broker is away: try again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while let Some(next) = batch.next().await {
                let Ok(msg) = next else {
                    break; // fetch again
                };
                let done = self
                    .import(
                        msg.subject.as_str(),
                        msg.headers.as_ref(),
                        &msg.payload,
                        true,
                    )
                    .await;
                let acked = match done {
                    Imported::Done => msg.ack().await,
                    Imported::Rejected => msg.ack_with(jetstream::AckKind::Term).await,
                    Imported::Retry => {
                        msg.ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(200))))
                            .await
                    }
                };
                // An ack lost to a disconnect means a redelivery, which the
                // local dedup recognises.
                let _ = acked;
            }
        }
    }

    async fn import(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        durable: bool,
    ) -> Imported {
        let origin = wire::header(headers, wire::ORIGIN);
        if origin == Some(self.origin.as_str()) {
            return Imported::Done; // its own export, echoed back
        }
        let event_id = wire::header(headers, wire::EVENT_ID).map(str::to_owned);
        if payload.len() > self.max_payload {
            return self
                .reject(
                    subject,
                    RejectReason::Oversize {
                        limit: self.max_payload,
                    },
                    payload,
                    event_id,
                )
                .await;
        }
        let topic = self
            .topic_of(subject)
            .filter(|t| !t.starts_with("tidings.") && self.imports.iter().any(|p| p.matches(t)));
        let Some(topic) = topic.filter(|t| self.bus.registry().by_name(t).is_some()) else {
            return self
                .reject(subject, RejectReason::NotAllowed, payload, event_id)
                .await;
        };
        let event = match self.format.decode(&self.bus, topic, payload) {
            Ok(event) => event,
            Err(e) => {
                return self
                    .reject(
                        subject,
                        RejectReason::Malformed(e.to_string()),
                        payload,
                        event_id,
                    )
                    .await
            }
        };
        let key = wire::header(headers, wire::IDEMPOTENCY_KEY).or(event_id.as_deref());
        let mut options = PublishOptions::new().origin(self.origin.as_str());
        if let Some(key) = key {
            options = options.idempotency_key(key);
        }
        match self.bus.publish_dyn(event, options).await {
            Ok(receipt) if receipt.is_duplicate() => {
                self.count(&self.counters.duplicates, "tidings_bridge_duplicates_total");
                Imported::Done
            }
            Ok(_) => {
                self.count(&self.counters.imported, "tidings_bridge_imported_total");
                Imported::Done
            }
            Err(_) if durable => Imported::Retry,
            Err(e) => {
                self.reject(
                    subject,
                    RejectReason::Refused(e.to_string()),
                    payload,
                    event_id,
                )
                .await
            }
        }
    }

    async fn reject(
        &self,
        subject: &str,
        reason: RejectReason,
        payload: &[u8],
        event_id: Option<String>,
    ) -> Imported {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "tidings_bridge_rejected_total",
            "bridge" => self.name.clone(),
            "reason" => reason.label()
        )
        .increment(1);
        warn(&self.name, subject, &format!("message rejected: {reason}"));
        let rejected = Rejected {
            bridge: self.name.clone(),
            subject: subject.to_owned(),
            reason,
            raw: payload[..payload.len().min(self.raw_limit)].to_vec(),
            raw_len: payload.len(),
            event_id,
        };
        // Waits for room in a full `Block` reader of rejections, like any
        // publisher; after a bus shutdown it is counted and logged above.
        let _ = self.bus.publish(rejected).await;
        Imported::Rejected
    }
}

/// Ready once the bridge is told to stop.
async fn stopping(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// How many messages an importer pulls at once, and how long a pull waits
/// for them: also how long a stopping importer may take to see the stop.
const IMPORT_BATCH: usize = 256;
const IMPORT_WAIT: Duration = Duration::from_millis(250);

fn warn(bridge: &str, topic: &str, message: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(bridge, topic, "tidings bridge: {message}");
    #[cfg(not(feature = "tracing"))]
    let _ = (bridge, topic, message);
}

/// A running bridge between a bus and NATS. Dropping it stops its tasks at
/// once; [`shutdown`](Bridge::shutdown) stops importing, then sends what its
/// export subscriptions still hold.
pub struct Bridge {
    ctx: Arc<Ctx>,
    exports: Vec<JoinHandle<()>>,
    imports: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Bridge {
    /// Starts setting up a bridge between `bus` and the NATS connection
    /// `client`.
    pub fn builder(bus: &Bus, client: async_nats::Client) -> BridgeBuilder {
        BridgeBuilder {
            bus: bus.clone(),
            client,
            name: "tidings".to_owned(),
            prefix: None,
            exports: Vec::new(),
            imports: Vec::new(),
            format: Arc::new(Json),
            max_payload: 1 << 20,
            raw_limit: 4096,
            durable: None,
            error: None,
        }
    }

    /// The bridge's numbers now.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.ctx.counters;
        BridgeStats {
            exported: c.exported.load(Ordering::Relaxed),
            export_retries: c.export_retries.load(Ordering::Relaxed),
            export_failures: c.export_failures.load(Ordering::Relaxed),
            export_duplicates: c.export_duplicates.load(Ordering::Relaxed),
            imported: c.imported.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }

    /// The origin this bridge marks imported events with
    /// ([`Envelope::origin`](crate::Envelope::origin)).
    pub fn origin(&self) -> &str {
        &self.ctx.origin
    }

    /// Stops importing (every message already received or fetched is
    /// still handed to the local bus, counted and acknowledged), sends what
    /// the export subscriptions still hold (in durable mode, until the
    /// stream acknowledged it), flushes the connection, and returns the
    /// final numbers: a bridge started again later takes up exactly where
    /// this one left off.
    pub async fn shutdown(mut self) -> BridgeStats {
        let _ = self.stop.send(true);
        for task in self.imports.drain(..) {
            let _ = task.await;
        }
        for task in self.exports.drain(..) {
            let _ = task.await;
        }
        let _ = self.ctx.client.flush().await;
        self.stats()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for task in self.imports.iter().chain(&self.exports) {
            task.abort();
        }
    }
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("name", &self.ctx.name)
            .field("origin", &self.ctx.origin)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
