//! A live view of a bus in a browser (feature `view`).
//!
//! [`serve`] (or [`ViewBuilder`] for the settings) starts a small read-only
//! HTTP server on the caller's tokio runtime. Its page shows every topic and
//! subscription with their rates, breakers, findings, the latest dead
//! letters and the causation graph, updated once a second without a reload;
//! there is no JavaScript build chain, the page is three static files
//! embedded in the crate.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/api/snapshot` | the latest [snapshot](#the-snapshot), plain JSON, for scripts |
//! | `/api/events` | the same snapshots as server-sent events (`text/event-stream`), one per interval |
//! | `/asyncapi.json` | the allow-list as an AsyncAPI 3.0 document ([`AsyncApi`]) |
//!
//! # Safety of exposure
//!
//! The view binds where it is told, `127.0.0.1` in the examples. Bound to
//! any other address it requires a [token](ViewBuilder::token): every
//! request for data (`/api/*`, `/asyncapi.json`) must carry `Authorization:
//! Bearer <token>` or `?token=<token>`; the page, which holds no data, passes
//! on the one in its own address (`http://host:port/?token=...`). It only reads: no
//! request changes the bus. A peer that sends junk gets a `400`, `404`,
//! `405` or `431`, never more than 8 KiB of its request is held, a request
//! head must arrive within 10 seconds, and at most 64 connections are open
//! at once (more are closed at once).
//!
//! # The snapshot
//!
//! One sampler task takes [`Bus::stats`] and [`Bus::health`] once per
//! interval (default 1 s) and makes one JSON document, whatever the number
//! of clients:
//!
//! ```text
//! {
//!   "view": 1,                   // version of this format
//!   "at_ms": 1796000000000,      // when it was taken, ms since the Unix epoch
//!   "interval_ms": 1000,
//!   "stats": { "topics": [..], "pools": [..] },      // BusStats, as serialized
//!   "health": { "findings": [..], "callback_panics": [..], "pools": [..] },
//!   "advice": { "SlowPoll": ".." },   // what to do, for each kind of finding present
//!   "rates": {                   // per second over the last interval; absent in the first snapshot
//!     "topics": { "<topic>": { "published": 0.0 } },
//!     "subscriptions": { "<id>": { "delivered": 0.0, "handled": 0.0, "dropped": 0.0,
//!                                  "failed": 0.0, "dead_lettered": 0.0,
//!                                  "lag_seconds": 0.0 } }
//!   },
//!   "dead_letters": [ { "topic": "..", "subscription": "..", "seq": 1, "event_id": 1,
//!                       "attempts": 3, "error": "..", "published_at_ms": 0,
//!                       "payload": {..} } ],   // newest last, at most 50
//!   "sections": { "<name>": {..} }           // ViewBuilder::section
//! }
//! ```
//!
//! `lag_seconds` is an estimate: the subscription's queue depth divided by
//! its delivery rate over the last interval (`null` when nothing was
//! delivered). A dead letter's `payload` is the event serialized to JSON
//! when its topic is `#[event(serde)]`, else `null`; payloads over 16 KiB
//! are replaced by a note. The durations in `stats` and `health` are serde's
//! `{ "secs", "nanos" }`.
//!
//! To show the latest dead letters the view holds one stream subscription,
//! `tidings.view`, on [`DEAD_LETTER_TOPIC`](crate::DEAD_LETTER_TOPIC), with a
//! queue of 64 that drops its oldest: it never slows the bus, and it shows
//! in the stats like any other.
//!
//! # Example
//!
//! ```no_run
//! use tidings::{Bus, Event};
//!
//! #[derive(Debug, Event)]
//! #[event(topic = "orders.placed")]
//! struct OrderPlaced { id: u64 }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().topic::<OrderPlaced>().build()?;
//! let view = tidings::view::serve(&bus, "127.0.0.1:9898").await?;
//! println!("the bus, live: http://{}/", view.local_addr());
//! # Ok(()) }
//! ```

mod http;
mod sample;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{watch, Semaphore};

use crate::asyncapi::AsyncApi;
use crate::Bus;

/// The shortest interval between two snapshots.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval between two snapshots.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The longest token.
pub const MAX_TOKEN_LEN: usize = 256;

/// Why a view did not start. Nothing was bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The address could not be bound.
    #[error("the view could not bind {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The address is not a loopback address and no token was set.
    #[error(
        "the view would listen on {addr}, which is not a loopback address: set a token (ViewBuilder::token)"
    )]
    TokenRequired {
        /// The address it bound.
        addr: SocketAddr,
    },
    /// The token is empty, longer than [`MAX_TOKEN_LEN`], or holds
    /// characters other than visible ASCII.
    #[error("the view's token must be 1 to {MAX_TOKEN_LEN} visible ASCII characters")]
    BadToken,
    /// The interval is outside [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    #[error("the view's interval {interval:?} is outside {MIN_INTERVAL:?}..={MAX_INTERVAL:?}")]
    Interval {
        /// The interval given.
        interval: Duration,
    },
    /// The section name is empty, longer than 64 bytes, or given twice.
    #[error("view section `{name}` is empty, longer than 64 bytes, or given twice")]
    Section {
        /// The name given.
        name: String,
    },
    /// The dead-letter subscription of the view could not be made.
    #[error("the view could not subscribe to dead letters: {0}")]
    Subscribe(#[from] crate::error::SubscribeError),
}

type SectionFn = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Settings of a view: [`ViewBuilder::new`], then [`serve`](ViewBuilder::serve).
#[must_use = "a view builder does nothing until served"]
pub struct ViewBuilder {
    bus: Bus,
    token: Option<String>,
    interval: Duration,
    sections: Vec<(String, SectionFn)>,
    asyncapi: Option<AsyncApi>,
}

impl std::fmt::Debug for ViewBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewBuilder")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("interval", &self.interval)
            .field(
                "sections",
                &self.sections.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Serves a view of `bus` on `addr` with the default settings: see the
/// [module docs](self).
pub async fn serve(
    bus: &Bus,
    addr: impl ToSocketAddrs + std::fmt::Debug,
) -> Result<View, ViewError> {
    ViewBuilder::new(bus).serve(addr).await
}

impl ViewBuilder {
    /// A view of `bus`: snapshots every second, no token.
    pub fn new(bus: &Bus) -> Self {
        ViewBuilder {
            bus: bus.clone(),
            token: None,
            interval: Duration::from_secs(1),
            sections: Vec::new(),
            asyncapi: None,
        }
    }

    /// Requires every request to carry this token (`Authorization: Bearer
    /// <token>`, or `?token=<token>` in the address). Required when the view
    /// listens on anything but a loopback address.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How often a snapshot is taken and sent to open pages
    /// ([`MIN_INTERVAL`]..=[`MAX_INTERVAL`]; default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Adds a section to every snapshot: `f`'s value, serialized, under
    /// `sections.<name>`, shown on the page as a table. A bridge's
    /// stats or a durable topic's store are sections (see their crates).
    /// `f` runs on the sampler task once per interval; a panic in it shows
    /// as `{"error": ...}` in that section.
    pub fn section<T, F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        T: serde::Serialize,
        F: Fn() -> T + Send + Sync + 'static,
    {
        let f = move || serde_json::to_value(f()).unwrap_or_else(|e| error_value(&e.to_string()));
        self.sections.push((name.into(), Box::new(f)));
        self
    }

    /// The AsyncAPI document served at `/asyncapi.json`; default
    /// [`AsyncApi::new(&bus)`](AsyncApi::new) taken when the view starts.
    pub fn asyncapi(mut self, doc: AsyncApi) -> Self {
        self.asyncapi = Some(doc);
        self
    }

    /// Binds `addr` and starts the server and its sampler on the current
    /// tokio runtime. They stop when the [`View`] is dropped.
    pub async fn serve(
        self,
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<View, ViewError> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(ViewError::Interval {
                interval: self.interval,
            });
        }
        if let Some(token) = &self.token {
            if token.is_empty()
                || token.len() > MAX_TOKEN_LEN
                || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ViewError::BadToken);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (name, _) in &self.sections {
            if name.is_empty() || name.len() > 64 || !names.insert(name.as_str()) {
                return Err(ViewError::Section { name: name.clone() });
            }
        }
        let shown = format!("{addr:?}");
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ViewError::Bind {
                addr: shown.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ViewError::Bind {
            addr: shown,
            source,
        })?;
        if self.token.is_none() && !local.ip().is_loopback() {
            return Err(ViewError::TokenRequired { addr: local });
        }
        let dead_letters = self
            .bus
            .dead_letters()
            .name("tidings.view")
            .capacity(sample::DEAD_LETTER_QUEUE)
            .overflow(crate::Overflow::DropOldest)
            .stream()?;
        let asyncapi = self
            .asyncapi
            .unwrap_or_else(|| AsyncApi::new(&self.bus))
            .to_json()
            .to_string();

        let mut sampler =
            sample::Sampler::new(self.bus, self.interval, self.sections, dead_letters);
        let (tx, rx) = watch::channel(sampler.take());
        let sampler = tokio::spawn(sampler.run(tx));
        let server = Arc::new(http::Server {
            token: self.token,
            snapshots: rx,
            asyncapi: asyncapi.into(),
            connections: Arc::new(Semaphore::new(http::MAX_CONNECTIONS)),
        });
        let server = tokio::spawn(http::accept(listener, server));
        Ok(View {
            local,
            tasks: [sampler, server],
        })
    }
}

/// A running view. Dropping it stops the server, its open streams and its
/// sampler (and ends its dead-letter subscription).
#[derive(Debug)]
pub struct View {
    local: SocketAddr,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl View {
    /// The address it listens on (the port the system chose for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for View {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn error_value(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}
