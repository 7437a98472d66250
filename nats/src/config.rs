//! Where and how a bridge connects ([`Connect`](crate::Connect)), and its JetStream
//! settings ([`Durable`](crate::Durable)).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::rustls;

/// Where and how a bridge connects: the servers, credentials and TLS. The
/// bridge owns its connection and makes it again whenever it is lost.
///
/// ```
/// use std::time::Duration;
/// use tidings_nats::Connect;
///
/// let connect = Connect::to("nats://10.0.0.1:4222")
///     .server("nats://10.0.0.2:4222")
///     .user_and_password("billing", "s3cret")
///     .ping_interval(Duration::from_secs(10));
/// # let _ = connect;
/// ```
#[derive(Clone)]
pub struct Connect {
    pub(crate) servers: Vec<String>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) token: Option<String>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) ping_interval: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Connect {
    /// Connects to `server` (`nats://host:port`, `tls://host:port`,
    /// `host:port`, or `host` for port 4222).
    pub fn to(server: impl Into<String>) -> Self {
        Connect {
            servers: vec![server.into()],
            user: None,
            token: None,
            tls: None,
            ping_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Another server to try, in turn, when one cannot be reached.
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.servers.push(server.into());
        self
    }

    /// Authenticates with a user and password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speaks TLS with this configuration (required for `tls://` servers
    /// and servers that require TLS). Bring your own crypto provider.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// How often the connection is checked (a PING); two unanswered make
    /// the bridge reconnect. Default 30 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// How long [`BridgeBuilder::start`](crate::BridgeBuilder::start) keeps trying to make the first
    /// connection. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

impl From<&str> for Connect {
    fn from(server: &str) -> Self {
        Connect::to(server)
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("servers", &self.servers)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("tls", &self.tls.is_some())
            .field("ping_interval", &self.ping_interval)
            .finish()
    }
}

/// Publishes in flight per exported topic unless [`Durable::window`] says.
const DEFAULT_WINDOW: usize = 256;
/// The largest window [`Durable::window`] accepts.
pub(crate) const MAX_WINDOW: usize = 65_536;

/// JetStream settings for [durable mode](crate::BridgeBuilder::durable). Both
/// sides of a bridge name the same stream with the same subjects.
#[derive(Clone, Debug)]
pub struct Durable {
    pub(crate) stream: String,
    pub(crate) subjects: Vec<String>,
    pub(crate) duplicate_window: Duration,
    pub(crate) max_deliver: u32,
    pub(crate) ack_wait: Duration,
    pub(crate) window: usize,
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
            max_deliver: 20,
            ack_wait: Duration::from_secs(10),
            window: DEFAULT_WINDOW,
        }
    }

    /// How long the broker remembers message ids to drop duplicates.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// How often a message may be delivered to an importer without being
    /// acknowledged (default 20). Then the consumer gives up on it and the
    /// bridge publishes a [`Rejected`](crate::Rejected) naming it ([`RejectReason::Undeliverable`](crate::RejectReason::Undeliverable)).
    pub fn max_deliver(mut self, deliveries: u32) -> Self {
        self.max_deliver = deliveries;
        self
    }

    /// How many publishes of one exported topic may wait for the stream's
    /// acknowledgement at once (default 256, at most 65,536). The exporter
    /// keeps the topic's order whatever the window: after any trouble it
    /// sends everything unacknowledged again, in order, under the same
    /// message ids (see the crate docs). A window of 1 waits for each
    /// acknowledgement in turn. While the window is full, the export
    /// subscription's queue fills under the topic's overflow policy.
    pub fn window(mut self, publishes: usize) -> Self {
        self.window = publishes;
        self
    }

    /// How long the consumer waits for an acknowledgement before it
    /// delivers a message again (default 10 s). The importer acknowledges
    /// an event once the local bus is done with it, and holds at most 256
    /// it has not seen handled: choose a wait longer than an event may
    /// take to be handled, or the broker delivers it again meanwhile (to
    /// another replica of a group, which handles it too).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }
}
