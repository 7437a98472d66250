//! The bridge's own NATS connection, over which everything that comes from
//! other processes arrives (imports, JetStream deliveries, advisories).
//!
//! One task owns the socket: it writes the commands the bridge sends
//! ([`Conn::publish`], subscriptions, round trips) and parses what the
//! server sends with the lenient parser of `proto.rs`, so a hostile frame
//! is the problem of its one message, never of the connection. It keeps the
//! connection alive (PING every interval; two unanswered, it reconnects),
//! reconnects on any failure to the next server with a growing delay (up to
//! 2 s), subscribes again, and counts every disconnect.
//!
//! Messages wait for their reader under a byte budget shared by all
//! subscriptions: a delivery that would go over it is dropped and counted
//! ([`ConnStats::dropped`]); at-most-once core NATS loses it either way
//! (the server would drop it, or cut a slow reader off), but this way the
//! loss is counted, the connection stays up, and memory stays bounded.
//! Subscriptions fed by pulls (JetStream) ask for no more than fits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::proto::{self, Msg};

mod task;
mod transport;
use task::Task;

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Spec {
    pub(crate) servers: Vec<Server>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) token: Option<String>,
    pub(crate) tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    pub(crate) name: String,
    pub(crate) ping_interval: Duration,
    /// Messages over this many bytes are skipped (keeping `keep` bytes).
    pub(crate) max_msg: usize,
    pub(crate) keep: usize,
    /// Bytes of deliveries that may wait for their readers.
    pub(crate) budget: usize,
}

/// One server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Server {
    /// `nats://host:port`, `tls://host:port`, `host:port` or `host`
    /// (port 4222).
    pub(crate) fn parse(url: &str) -> Result<Server, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!("`{url}`: unknown scheme `{scheme}` (nats or tls)"))
            }
            None => (false, url),
        };
        // user:pass@ in the URL is not taken: credentials are set apart.
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("`{url}`: bad port `{port}`"))?,
            ),
            _ => (rest, 4222),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Server {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// What one delivery is.
#[derive(Debug)]
pub(crate) enum Delivery {
    Msg(Msg),
    /// Over the size limit: its first bytes and whole length.
    Oversize {
        subject: Bytes,
        reply: Option<Bytes>,
        len: usize,
        head: Bytes,
    },
}

/// What a held delivery costs beyond its bytes, counted against the byte
/// budget with them: its message and lease, their `Bytes` handles and the
/// channel's slot. Measured (`tests/flood_small.rs`): a held 24-byte order
/// on a 14-byte subject made the process about 245 bytes larger; counted at
/// its 38 bytes alone, a flood of them held 6.3 times the budget.
pub(crate) const DELIVERY_COST: usize = 256;

/// A delivery and its share of the byte budget, given back on drop.
#[derive(Debug)]
pub(crate) struct Leased {
    pub(crate) delivery: Delivery,
    size: usize,
    budget: Arc<AtomicUsize>,
}

impl Drop for Leased {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// A connection's numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnStats {
    /// Whether it is connected now.
    pub(crate) connected: bool,
    /// Connections lost (and made again).
    pub(crate) disconnects: u64,
    /// Times the connection task failed (a panic) and was started again.
    pub(crate) restarts: u64,
    /// Deliveries dropped because the byte budget was full.
    pub(crate) dropped: u64,
    /// Frames the server sent that could not be parsed (each one ended the
    /// connection).
    pub(crate) broken_frames: u64,
    /// `-ERR` lines from the server.
    pub(crate) server_errors: u64,
    /// Publishes dropped because too many bytes waited, or never written
    /// because the connection was lost with them.
    pub(crate) unwritten: u64,
}

#[derive(Default)]
struct Counters {
    disconnects: AtomicU64,
    restarts: AtomicU64,
    dropped: AtomicU64,
    broken_frames: AtomicU64,
    server_errors: AtomicU64,
    unwritten: AtomicU64,
}

/// Most bytes of publishes that may wait to be written (while the socket is
/// slow, or the connection is being made again). A publish that must not be
/// lost waits for room ([`Conn::publish_wait`]: backpressure up to the
/// bus); one that may be (acknowledgements, pulls: the server redelivers)
/// is dropped and counted.
const MAX_PENDING_WRITE: usize = 8 << 20;

/// Where a subscription's deliveries go.
enum Sink {
    /// To a [`Subscription`].
    Channel(mpsc::UnboundedSender<Leased>),
    /// Replies to requests, by the token that ends their subject.
    Replies,
}

enum Cmd {
    Sub {
        sid: u64,
        subject: String,
        queue: Option<String>,
        sink: Sink,
    },
    Unsub {
        sid: u64,
    },
    /// A publish, with the bytes of room it holds.
    Pub(Bytes, usize),
    /// A publish written only on the connection of this generation: never
    /// held while the connection is down, never carried over to the next
    /// one (see [`Conn::publish_on`]).
    PubOn(u64, Bytes, usize),
    RoundTrip(oneshot::Sender<()>),
    /// Close once what is queued is written; tell how many publishes could
    /// not be (the connection was down).
    Close(Option<oneshot::Sender<u64>>),
}

/// State shared by the handle and the connection task.
struct Shared {
    counters: Counters,
    budget: Arc<AtomicUsize>,
    next_sid: AtomicU64,
    /// Room for publishes waiting to be written (see `MAX_PENDING_WRITE`).
    room: tokio::sync::Semaphore,
    /// The last server error, for stats and messages.
    last_error: Mutex<Option<String>>,
    connected: std::sync::atomic::AtomicBool,
    /// Requests waiting for their reply, by token.
    replies: Mutex<HashMap<u64, oneshot::Sender<Msg>>>,
    next_token: AtomicU64,
    /// When each kind of trouble was last seen.
    last_seen: Mutex<[Option<std::time::Instant>; 4]>,
}

/// Kinds of trouble a connection remembers the time of.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Trouble {
    Disconnect = 0,
    Restart = 1,
    Dropped = 2,
    ServerError = 3,
}

impl Shared {
    fn saw(&self, trouble: Trouble) {
        self.last_seen.lock()[trouble as usize] = Some(std::time::Instant::now());
    }
}

/// A handle to the connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    /// Bumped on every new connection; readers of pulls re-pull on it.
    generation: watch::Receiver<u64>,
    inbox: Arc<str>,
}

/// A subscription's deliveries.
pub(crate) struct Subscription {
    sid: u64,
    rx: mpsc::UnboundedReceiver<Leased>,
    conn: Conn,
}

impl Subscription {
    /// The next delivery; `None` once the connection is closed for good.
    pub(crate) async fn next(&mut self) -> Option<Leased> {
        self.rx.recv().await
    }

    /// Deliveries already received, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<Leased> {
        self.rx.try_recv().ok()
    }

    /// Stops the server sending more; what was received can still be read.
    pub(crate) fn unsubscribe(&mut self) {
        self.conn.send(Cmd::Unsub { sid: self.sid });
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.conn.send(Cmd::Unsub { sid: self.sid });
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

impl Conn {
    /// Connects (trying each server until one answers, for up to
    /// `first_try`), then keeps the connection up in a task of its own.
    pub(crate) async fn connect(spec: Spec, first_try: Duration) -> Result<Conn, ConnectError> {
        let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            budget: Arc::new(AtomicUsize::new(0)),
            next_sid: AtomicU64::new(1),
            room: tokio::sync::Semaphore::new(MAX_PENDING_WRITE),
            last_error: Mutex::new(None),
            connected: std::sync::atomic::AtomicBool::new(false),
            replies: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            last_seen: Mutex::new([None; 4]),
        });
        let (gen_tx, generation) = watch::channel(0);
        let mut task = Task::new(spec, rx, Arc::clone(&shared), gen_tx);
        let deadline = tokio::time::Instant::now() + first_try;
        let first = loop {
            match task.open().await {
                Ok(transport) => break transport,
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let inbox: Arc<str> = format!("_INBOX.{}", random_token()).into();
        let replies = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        task.take_replies(replies, format!("{inbox}.r.*"));
        tokio::spawn(task.run(first));
        Ok(Conn {
            tx,
            shared,
            generation,
            inbox,
        })
    }

    fn send(&self, cmd: Cmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// A subject unique to this connection, under its inbox prefix.
    pub(crate) fn inbox(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.inbox)
    }

    /// Subscribes to `subject` (in queue group `queue`).
    pub(crate) fn subscribe(&self, subject: &str, queue: Option<&str>) -> Subscription {
        let sid = self.shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Cmd::Sub {
            sid,
            subject: subject.to_owned(),
            queue: queue.map(str::to_owned),
            sink: Sink::Channel(tx),
        });
        Subscription {
            sid,
            rx,
            conn: self.clone(),
        }
    }

    /// Publishes without waiting. `false` if it was dropped (and counted):
    /// the connection is closed, or too many bytes wait to be written.
    pub(crate) fn publish(
        &self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        let Some((frame, len)) = self.framed_with_room(subject, reply, headers, payload) else {
            self.shared
                .counters
                .unwritten
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        self.send(Cmd::Pub(frame, len))
    }

    /// The frame of a publish, if there is room to hold it now (the room
    /// taken, with its size).
    fn framed_with_room(
        &self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Option<(Bytes, usize)> {
        let frame = frame(subject, reply, headers, payload);
        let len = room_for(frame.len());
        self.shared.room.try_acquire_many(len).ok()?.forget();
        Some((frame, len as usize))
    }

    /// Publishes on the connection of `generation` only, without waiting:
    /// `false` if there is no room now. A publish made for a connection
    /// that is gone (or not up) is dropped, never written on the next one,
    /// so a publisher that resends everything unacknowledged once it sees a
    /// new generation keeps its order: nothing it sent before the break can
    /// reach the server after what it sends again.
    pub(crate) fn publish_on(
        &self,
        generation: u64,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        match self.framed_with_room(subject, reply, headers, payload) {
            Some((frame, len)) => self.send(Cmd::PubOn(generation, frame, len)),
            None => false,
        }
    }

    /// Publishes, waiting for room to write it: `false` only if the
    /// connection is closed for good.
    pub(crate) async fn publish_wait(
        &self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        let frame = frame(subject, reply, headers, payload);
        let len = room_for(frame.len());
        match self.shared.room.acquire_many(len).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.send(Cmd::Pub(frame, len as usize))
    }

    /// Waits until the server has processed everything sent before (a
    /// PING answered by its PONG), for at most `timeout`.
    pub(crate) async fn round_trip(&self, timeout: Duration) -> Result<(), ConnectError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Cmd::RoundTrip(tx)) {
            return Err(ConnectError::Protocol("the connection is closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ConnectError::Protocol("the connection is closed".into())),
            Err(_) => Err(ConnectError::Protocol(format!(
                "no answer from the server within {timeout:?}"
            ))),
        }
    }

    /// Sends a request and waits for its first reply.
    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Msg, ConnectError> {
        self.request_with(subject.as_bytes(), None, payload, timeout)
            .await
    }

    /// Sends a request with headers and waits for its first reply.
    pub(crate) async fn request_with(
        &self,
        subject: &[u8],
        headers: Option<&[u8]>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Msg, ConnectError> {
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.replies.lock().insert(token, tx);
        // Removes the waiter however this ends (answered, timed out, dropped).
        struct Waiting<'a>(&'a Shared, u64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.replies.lock().remove(&self.1);
            }
        }
        let _waiting = Waiting(&self.shared, token);
        let reply = format!("{}.r.{token}", self.inbox);
        if !self
            .publish_wait(subject, Some(reply.as_bytes()), headers, payload)
            .await
        {
            return Err(ConnectError::Protocol("the connection is closed".into()));
        }
        let subject = String::from_utf8_lossy(subject);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(_)) => Err(ConnectError::Protocol("the connection is closed".into())),
            Err(_) => Err(ConnectError::Protocol(format!(
                "no reply to `{subject}` within {timeout:?}"
            ))),
        }
    }

    /// The connection's generation: changes each time it reconnects.
    pub(crate) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// Bytes of deliveries waiting for their readers now.
    pub(crate) fn held(&self) -> usize {
        self.shared.budget.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> ConnStats {
        let c = &self.shared.counters;
        ConnStats {
            connected: self.shared.connected.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            broken_frames: c.broken_frames.load(Ordering::Relaxed),
            server_errors: c.server_errors.load(Ordering::Relaxed),
            unwritten: c.unwritten.load(Ordering::Relaxed),
        }
    }

    /// When `trouble` was last seen, if ever.
    pub(crate) fn last_seen(&self, trouble: Trouble) -> Option<std::time::Instant> {
        self.shared.last_seen.lock()[trouble as usize]
    }

    /// The last `-ERR` the server sent, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// Closes the connection (after writing what is queued).
    pub(crate) fn close(&self) {
        let _ = self.tx.send(Cmd::Close(None));
    }

    /// Closes the connection once what is queued is written, and tells how
    /// many publishes could not be (it was down); waits at most `timeout`
    /// (then counts none it cannot know of).
    pub(crate) async fn close_and_count(&self, timeout: Duration) -> u64 {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(Some(tx))).is_err() {
            return 0;
        }
        tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    }
}

/// One publish, as the protocol writes it.
fn frame(subject: &[u8], reply: Option<&[u8]>, headers: Option<&[u8]>, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(
        subject.len() + headers.map_or(0, <[u8]>::len) + payload.len() + 64,
    );
    proto::write::publish(&mut out, subject, reply, headers, payload);
    out.freeze()
}

/// The room a frame of `len` bytes holds (a frame larger than all the room
/// takes all of it, and waits until nothing else is pending).
fn room_for(len: usize) -> u32 {
    u32::try_from(len.min(MAX_PENDING_WRITE)).unwrap_or(u32::MAX)
}

/// 64 unpredictable bits, as hex: `RandomState` keys come from the
/// operating system's randomness.
pub(crate) fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let s = |u| Server::parse(u).unwrap();
        assert_eq!(
            s("nats://127.0.0.1:4223"),
            Server {
                host: "127.0.0.1".into(),
                port: 4223,
                tls: false
            }
        );
        assert!(s("tls://nats.example:443").tls);
        assert_eq!(s("example").port, 4222);
        assert_eq!(s("nats://u:p@example:1").host, "example");
        assert_eq!(s("[::1]:4222").host, "::1");
        assert!(Server::parse("http://x").is_err());
        assert!(Server::parse("nats://:1").is_err());
        assert!(Server::parse("x:99999").is_err());
    }
}
