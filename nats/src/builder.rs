//! Setting a bridge up: [`BridgeBuilder`](crate::BridgeBuilder).

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{self, Conn};
use super::ctx::{origin_id, Ctx};
use super::stats::Counters;
use super::wire::{Format, Ids, Json};
use super::{export, import, js, Bridge, BridgeError, Connect, Durable};
use tidings::{Bus, Event, Pattern};

/// Sets up a [`Bridge`](crate::Bridge); made by [`Bridge::builder`](crate::Bridge::builder).
#[must_use = "a bridge does nothing until .start().await"]
pub struct BridgeBuilder {
    bus: Bus,
    connect: Connect,
    name: String,
    prefix: Option<String>,
    exports: Vec<String>,
    imports: Vec<String>,
    format: Arc<dyn Format>,
    max_payload: usize,
    raw_limit: usize,
    max_held: usize,
    durable: Option<Durable>,
    share_keys: bool,
    queue_group: Option<String>,
    error: Option<BridgeError>,
}

impl BridgeBuilder {
    pub(crate) fn new(bus: &Bus, connect: Connect) -> Self {
        BridgeBuilder {
            bus: bus.clone(),
            connect,
            name: "tidings".to_owned(),
            prefix: None,
            exports: Vec::new(),
            imports: Vec::new(),
            format: Arc::new(Json),
            max_payload: 1 << 20,
            raw_limit: 4096,
            max_held: 64 << 20,
            durable: None,
            share_keys: false,
            queue_group: None,
            error: None,
        }
    }

    /// Names the bridge: in stats, metrics, logs, its origin and its durable
    /// consumers' names (default `tidings`): 1 to 64 characters of
    /// `[A-Za-z0-9_-]`. Two processes importing the same subjects in
    /// durable mode each need their own name, unless they share the work in
    /// a [`group`](Self::group), whose name their consumers take.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Makes this bridge's imports one member of a group of replicas that
    /// share the work (1 to 64 characters of `[A-Za-z0-9_-]`, like
    /// [`name`](Self::name)): every bridge started with the same group
    /// imports each message once between them.
    ///
    /// - **Core NATS**: the group is a NATS queue group; the server hands
    ///   each message to one member, at most once (a member that dies loses
    ///   what was on its way to it, as core NATS always may).
    /// - **Durable**: the members share one durable consumer per subject,
    ///   named after the group (not after each bridge's name). The server
    ///   hands each stored message to one member at a time; a member
    ///   acknowledges it once every subscription of its bus is done with
    ///   the event (its handlers ran), so a member that dies with messages
    ///   taken but not acknowledged leaves them to be delivered to another
    ///   member after the consumer's `ack_wait`. Only an event it had
    ///   finished handling but whose acknowledgement had not reached the
    ///   broker is handled twice. On a topic with a retained log the
    ///   acknowledgement goes at acceptance instead (the log holds events
    ///   past their handling).
    ///
    /// Without a group, every bridge that imports a subject gets every
    /// message (in durable mode, through its own consumer).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.queue_group = Some(group.into());
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
    /// bus; a message whose topic is not registered is [rejected](crate::Rejected).
    pub fn import_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.imports.push(pattern.into());
        self
    }

    /// The payload format (default [`Json`]).
    pub fn format(mut self, format: impl Format) -> Self {
        self.format = Arc::new(format);
        self
    }

    /// The largest message imported, headers and payload (default 1 MiB);
    /// larger ones are rejected, keeping their first
    /// [`raw_limit`](BridgeBuilder::raw_limit) bytes, without ever being
    /// held whole.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How many bytes of a rejected payload its [`Rejected`](crate::Rejected) keeps (default
    /// 4 KiB).
    pub fn raw_limit(mut self, bytes: usize) -> Self {
        self.raw_limit = bytes;
        self
    }

    /// The most bytes of messages from NATS that may wait for the importer
    /// (default 64 MiB). In core mode a delivery that would go over it is
    /// dropped and counted ([`BridgeStats::dropped`](crate::BridgeStats::dropped)); in durable mode the
    /// importer pulls no more than fits.
    pub fn max_held_bytes(mut self, bytes: usize) -> Self {
        self.max_held = bytes;
        self
    }

    /// Durable mode, through JetStream (see the [crate docs](crate)).
    pub fn durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Lets idempotency keys from other processes count as duplicates of
    /// local keys (and the other way round). By default they live in a
    /// space of the bridge's own
    /// ([`PublishOptions::key_scope`](tidings::PublishOptions::key_scope)):
    /// a key a peer chose never suppresses a local publish.
    pub fn share_keys_with_local_publishers(mut self, share: bool) -> Self {
        self.share_keys = share;
        self
    }

    /// The checks `start` makes of the settings.
    fn check(&self) -> Result<(), BridgeError> {
        let config = |setting, problem: &str| BridgeError::Config {
            setting,
            problem: problem.to_owned(),
        };
        let word_ok = |w: &str| {
            !w.is_empty()
                && w.len() <= 64
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        let named = std::iter::once(("name", &self.name))
            .chain(self.queue_group.as_ref().map(|group| ("group", group)));
        for (setting, word) in named {
            if !word_ok(word) {
                return Err(config(
                    setting,
                    &format!("`{word}` must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"),
                ));
            }
        }
        if self.max_payload == 0 {
            return Err(config("max_payload", "must be at least 1 byte"));
        }
        if self.max_held < self.max_payload {
            return Err(config(
                "max_held_bytes",
                "must hold at least one message of max_payload bytes",
            ));
        }
        if let Some(prefix) = &self.prefix {
            let token_ok = |t: &str| {
                !t.is_empty() && !t.contains(['*', '>']) && t.chars().all(|c| c.is_ascii_graphic())
            };
            if !prefix.split('.').all(token_ok) {
                return Err(config(
                    "prefix",
                    &format!("`{prefix}` is not a NATS subject prefix (dot-separated tokens of printable ASCII, no wildcards)"),
                ));
            }
        }
        if let Some(d) = &self.durable {
            if d.max_deliver == 0 {
                return Err(config("durable.max_deliver", "must be at least 1"));
            }
            if d.window == 0 || d.window > super::config::MAX_WINDOW {
                return Err(config(
                    "durable.window",
                    &format!(
                        "{} publishes in flight: 1 to {} allowed",
                        d.window,
                        super::config::MAX_WINDOW
                    ),
                ));
            }
            if d.stream.is_empty() || d.stream.contains(['.', '*', '>', ' ']) {
                return Err(config(
                    "durable.stream",
                    "a stream name has no `.`, `*`, `>` or space",
                ));
            }
        }
        Ok(())
    }

    /// `pattern` and the registered, bridgeable topics it matches.
    fn resolve(&self, pattern: &str) -> Result<(Pattern, Vec<&'static str>), BridgeError> {
        let parsed = Pattern::parse(pattern)?;
        // Naming a topic exactly may bridge one of tidings' own; a wildcard
        // never picks them up.
        let exact = !pattern.contains(['*', '>']);
        let mut topics = Vec::new();
        for name in self.bus.topics() {
            if !parsed.matches(name) || (!exact && name.starts_with("tidings.")) {
                continue;
            }
            let Some(info) = self.bus.topic_info(name) else {
                continue;
            };
            if !info.serializable {
                return Err(BridgeError::NotSerializable {
                    topic: info.name,
                    type_name: info.type_name,
                });
            }
            topics.push(info.name);
        }
        if topics.is_empty() {
            return Err(BridgeError::NoMatch {
                pattern: pattern.to_owned(),
            });
        }
        Ok((parsed, topics))
    }

    /// Checks everything against the allow-list, connects, sets up
    /// JetStream in durable mode, and starts the bridge's tasks on the
    /// current runtime.
    ///
    /// # Errors
    /// [`BridgeError`] naming the topic, pattern, setting or step.
    pub async fn start(mut self) -> Result<Bridge, BridgeError> {
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        self.check()?;
        if !self.bus.is_registered::<crate::Rejected>() {
            return Err(BridgeError::Config {
                setting: "bus",
                problem: format!(
                    "the bus does not carry the bridge's topic `{}`: build it with `Bus::builder().bridge_topics()` (tidings_nats::BridgeTopics)",
                    crate::REJECTED_TOPIC
                ),
            });
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
        #[cfg(feature = "asyncapi")]
        let mut bridged = exported.clone();
        for pattern in &self.imports {
            let (pattern, _topics) = self.resolve(pattern)?;
            #[cfg(feature = "asyncapi")]
            bridged.extend(_topics.into_iter().filter(|t| !exported.contains(t)));
            imported.push(pattern);
        }
        let servers = self
            .connect
            .servers
            .iter()
            .map(|s| conn::Server::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| BridgeError::Config {
                setting: "connect",
                problem,
            })?;
        let spec = conn::Spec {
            servers,
            user: self.connect.user.clone(),
            token: self.connect.token.clone(),
            tls: self.connect.tls.clone(),
            name: self.name.clone(),
            ping_interval: self.connect.ping_interval.max(Duration::from_millis(10)),
            max_msg: self.max_payload,
            keep: self.raw_limit,
            budget: self.max_held,
        };
        let conn = Conn::connect(spec, self.connect.connect_timeout)
            .await
            .map_err(|e| BridgeError::Nats {
                what: "connect",
                message: e.to_string(),
            })?;
        let ids = Ids::new(origin_id(&self.name));
        let shared_origin: Arc<str> = ids.origin().into();
        let ctx = Arc::new(Ctx {
            shared_origin,
            ids,
            name: self.name.clone(),
            bus: self.bus.clone(),
            conn: conn.clone(),
            durable: self.durable.clone(),
            prefix: self.prefix.clone(),
            imports: imported.clone(),
            format: Arc::clone(&self.format),
            max_payload: self.max_payload,
            raw_limit: self.raw_limit,
            share_keys: self.share_keys,
            key_scope: format!("bridge:{}", self.name).into(),
            queue_group: self.queue_group.clone(),
            counters: Counters::default(),
            in_hand: AtomicU64::new(0),
            unacked: Arc::new(AtomicU64::new(0)),
            last_restart: parking_lot::Mutex::new(None),
            unanswered: parking_lot::Mutex::new((None, None)),
            refused_pulls: parking_lot::Mutex::new((None, None)),
            last_recreated: parking_lot::Mutex::new(None),
            max_held: self.max_held,
            rejection_log: parking_lot::Mutex::new((None, 0)),
        });
        let started = async {
            if let Some(durable) = &self.durable {
                js::ensure_stream(
                    &conn,
                    &durable.stream,
                    &durable.subjects,
                    durable.duplicate_window,
                )
                .await
                .map_err(|e| BridgeError::Nats {
                    what: "create the JetStream stream",
                    message: e.to_string(),
                })?;
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut imports = Vec::new();
            for pattern in &imported {
                imports.extend(import::start(&ctx, pattern, &stopped).await?);
            }
            let mut exports = Vec::new();
            for topic in exported {
                exports.push(export::start(&ctx, topic, &stopped)?);
            }
            // The server must have taken every subscription before `start`
            // returns, or a publish made right after could miss it.
            conn.round_trip(Duration::from_secs(30))
                .await
                .map_err(|e| BridgeError::Nats {
                    what: "confirm its subscriptions with the server",
                    message: e.to_string(),
                })?;
            Ok::<_, BridgeError>((imports, exports, stop))
        };
        match started.await {
            Ok((imports, exports, stop)) => Ok(Bridge {
                #[cfg(feature = "asyncapi")]
                contract: crate::contract::Contract {
                    servers: self.connect.servers.clone(),
                    topics: bridged,
                },
                ctx,
                exports,
                imports,
                stop,
            }),
            Err(e) => {
                conn.close();
                Err(e)
            }
        }
    }
}

impl fmt::Debug for BridgeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeBuilder")
            .field("connect", &self.connect)
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("exports", &self.exports)
            .field("imports", &self.imports)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}
