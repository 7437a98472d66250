//! Options of one publish ([`PublishOptions`]: an idempotency key, its
//! scope, an origin, a timeout) and how long a topic remembers keys
//! ([`DedupWindow`]).

use std::sync::Arc;
use std::time::Duration;

use crate::id::{Cause, EventRef};

/// Options of one publish ([`Bus::publish_with`](crate::Bus::publish_with)).
///
/// ```
/// # use tidings::{Bus, Event, PublishOptions};
/// # #[derive(Event)] #[event(topic = "orders.placed")] struct OrderPlaced { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderPlaced>().build()?;
/// let first = bus.publish_with(OrderPlaced { id: 42 }, PublishOptions::new().idempotency_key("order-42")).await?;
/// let again = bus.publish_with(OrderPlaced { id: 42 }, PublishOptions::new().idempotency_key("order-42")).await?;
/// assert_eq!(first.duplicate, None);
/// assert_eq!(again.duplicate.map(|d| d.original), Some(first.id)); // not delivered again
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    pub(crate) key: Option<Arc<str>>,
    pub(crate) scope: Option<Arc<str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) origin: Option<Arc<str>>,
    /// The options few publishes use, boxed: a plain publish checks one
    /// pointer for all of them.
    pub(crate) extra: Option<Box<Extra>>,
}

/// The rarer options of a publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    pub(crate) done: Option<Arc<OnDone>>,
    pub(crate) cause: Option<Cause>,
    pub(crate) remote: Option<Arc<str>>,
    #[cfg(feature = "opentelemetry")]
    pub(crate) parent: Option<opentelemetry::trace::SpanContext>,
}

/// What [`PublishOptions::on_done`] runs, once: a plain function, or,
/// for an event fed to one subscription by a storage layer
/// (`tidings::feed`), one told how the event was settled.
pub(crate) struct OnDone(parking_lot::Mutex<Option<DoneFn>>);

pub(crate) enum DoneFn {
    Plain(Box<dyn FnOnce() + Send>),
    Settled(Box<dyn FnOnce(Settlement) + Send>),
}

/// How a subscription was done with an event it was fed
/// (`tidings::feed::Feed`): what a storage layer commits. An event
/// let go of without being settled (cut off at a shutdown deadline,
/// discarded by an unsubscribe, its handler run cancelled) is `None` to
/// the callback: it was not done, and is owed again.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Settled {
    /// A handler returned success.
    Handled,
    /// A handler gave up on it: it became a dead letter.
    DeadLettered,
    /// A stream handed it to its reader, who let go of the envelope.
    Read,
}

/// How a fed event ended for its subscription
/// (`tidings::feed::Fed::on_done`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settlement {
    /// How the subscription settled it; `None` when it let go of it
    /// unsettled (cut off at a shutdown deadline, discarded, a run
    /// cancelled): it is owed again.
    pub how: Option<Settled>,
    /// Why a handler gave up on it, for a dead letter (the
    /// [`DeadLetter::error`](crate::DeadLetter::error) the bus published).
    pub error: Option<String>,
}

impl Settled {
    pub(crate) fn code(self) -> u8 {
        match self {
            Settled::Handled => 1,
            Settled::DeadLettered => 2,
            Settled::Read => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Settled> {
        match code {
            1 => Some(Settled::Handled),
            2 => Some(Settled::DeadLettered),
            3 => Some(Settled::Read),
            _ => None,
        }
    }
}

impl OnDone {
    pub(crate) fn settled(f: impl FnOnce(Settlement) + Send + 'static) -> Self {
        OnDone(parking_lot::Mutex::new(Some(DoneFn::Settled(Box::new(f)))))
    }

    /// Runs the function, if nobody has yet.
    pub(crate) fn run(&self, how: Option<Settled>, error: Option<String>) {
        let f = self.0.lock().take();
        match f {
            Some(DoneFn::Plain(f)) => f(),
            Some(DoneFn::Settled(f)) => f(Settlement { how, error }),
            None => {}
        }
    }
}

impl std::fmt::Debug for OnDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnDone")
    }
}

/// Options are equal when they share the same function (a clone).
impl PartialEq for OnDone {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for OnDone {}

impl PublishOptions {
    pub(crate) const PLAIN: PublishOptions = PublishOptions {
        key: None,
        scope: None,
        timeout: None,
        origin: None,
        extra: None,
    };

    /// A plain publish that waits at most `timeout`.
    pub(crate) fn waiting_at_most(timeout: Duration) -> Self {
        PublishOptions {
            timeout: Some(timeout),
            ..PublishOptions::PLAIN
        }
    }

    /// No key, no timeout: a plain publish.
    pub fn new() -> Self {
        PublishOptions::default()
    }

    /// Publishes at most once per key within the topic's [`DedupWindow`].
    /// Keys are per topic (and per [scope](PublishOptions::key_scope));
    /// envelopes carry theirs
    /// ([`Envelope::idempotency_key`](crate::Envelope::idempotency_key)).
    ///
    /// A key is 1 to [`DedupWindow::max_key_len`] bytes (default 256) with
    /// no control character (no CR, LF, NUL, …); anything else is refused
    /// with [`Refusal::InvalidKey`](crate::error::Refusal::InvalidKey).
    pub fn idempotency_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Puts the idempotency key in a space of its own: a key counts as a
    /// duplicate only of the same key in the same scope. The default (no
    /// scope) is the application's own space. A bridge imports its peers'
    /// keys under a scope of its own, so that a key chosen by another
    /// process never suppresses a local publish that happens to use it.
    /// Same rules as a key.
    pub fn key_scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The key the topic's window remembers: the key, or scope and key
    /// (joined by a NUL, which neither may hold).
    pub(crate) fn dedup_key(&self) -> Option<Arc<str>> {
        let key = self.key.as_ref()?;
        Some(match &self.scope {
            None => Arc::clone(key),
            Some(scope) => format!("{scope}\0{key}").into(),
        })
    }

    /// Checks the key and scope against `max_len`: `Err` says what is wrong.
    pub(crate) fn check_key(&self, max_len: usize) -> Result<(), (String, String)> {
        for (what, value) in [("key", &self.key), ("key scope", &self.scope)] {
            let Some(value) = value else { continue };
            let problem = if value.is_empty() {
                Some("is empty".to_owned())
            } else if value.len() > max_len {
                Some(format!(
                    "is {} bytes long; the topic's limit is {max_len}",
                    value.len()
                ))
            } else if value.chars().any(char::is_control) {
                Some("holds a control character (CR, LF, NUL, …)".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                let shown: String = value
                    .chars()
                    .take(64)
                    .flat_map(char::escape_debug)
                    .collect();
                return Err((shown, format!("the {what} {problem}")));
            }
        }
        Ok(())
    }

    /// Says where the event came from, e.g. the bridge that imported it.
    /// Envelopes carry it ([`Envelope::origin`](crate::Envelope::origin)); a
    /// bridge never exports an event carrying its own origin, which is how
    /// imported events are kept from going round in a loop.
    pub fn origin(mut self, origin: impl Into<Arc<str>>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Runs `f` once every subscription that received the event is done
    /// with it: its handler finished (after any retries, and the dead
    /// letter), its stream dropped the envelope, its overflow policy
    /// evicted it, or a shutdown cut it off; at once if no subscription
    /// took it. Not run if the publish is refused or is a duplicate (the
    /// event was not accepted). A process that dies first never runs it:
    /// that is what makes it an acknowledgement. A bridge acknowledges a
    /// message to its broker this way, so that a replica killed with events
    /// in hand has them delivered again.
    ///
    /// What holds an event back is a subscription that queued it and the
    /// envelopes it handed out (a clone of an envelope, and an
    /// [`AnyEvent`](crate::AnyEvent) made from one, hold it too). A copy
    /// kept by a log does not: a topic's retained events
    /// ([`TopicConfig::retain`](crate::TopicConfig::retain)), the event a
    /// [`DeadLetter`](crate::DeadLetter) carries, a
    /// [`SharedEvent`](crate::SharedEvent) kept by the application.
    ///
    /// `f` runs on the thread that releases the last hold (a handler's, a
    /// runtime worker, or the publisher's), never while the bus holds a
    /// lock of its own, so it may read the stats or publish; keep it short
    /// and never block in it. A panic in it is caught: counted in
    /// [`TopicStats::callback_panics`](crate::TopicStats::callback_panics)
    /// and listed by [`Bus::health`](crate::Bus::health). Options cloned
    /// share `f`: it runs once, for the first of their events to be
    /// done.
    ///
    /// ```
    /// # use std::sync::atomic::{AtomicBool, Ordering};
    /// # use std::sync::Arc;
    /// # use tidings::{Bus, Event, PublishOptions};
    /// # #[derive(Event)] #[event(topic = "orders.placed")] struct OrderPlaced { id: u64 }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderPlaced>().build()?;
    /// let mut orders = bus.subscribe::<OrderPlaced>().stream()?;
    /// let done = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&done);
    /// let options = PublishOptions::new().on_done(move || flag.store(true, Ordering::Release));
    /// bus.publish_with(OrderPlaced { id: 7 }, options).await?;
    /// let order = orders.recv().await.expect("delivered");
    /// assert!(!done.load(Ordering::Acquire)); // still in hand
    /// drop(order);
    /// assert!(done.load(Ordering::Acquire));
    /// # Ok(()) }
    /// ```
    pub fn on_done(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.extra().done = Some(Arc::new(OnDone(parking_lot::Mutex::new(Some(
            DoneFn::Plain(Box::new(f)),
        )))));
        self
    }

    /// Publishes the event as caused by `cause`: its
    /// [`caused_by`](crate::Envelope::caused_by) is `cause`, its
    /// [`correlation`](crate::Envelope::correlation) the root of `cause`'s
    /// chain. A publish from inside a handler of the bus gets this without
    /// asking (the event being handled); a stream subscriber says it.
    ///
    /// ```
    /// # use tidings::{Bus, Event, PublishOptions};
    /// # #[derive(Event)] #[event(topic = "orders.placed")] struct OrderPlaced { id: u64 }
    /// # #[derive(Event)] #[event(topic = "orders.charged")] struct OrderCharged { id: u64 }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderPlaced>().topic::<OrderCharged>().build()?;
    /// let mut placed = bus.subscribe::<OrderPlaced>().stream()?;
    /// let mut charged = bus.subscribe::<OrderCharged>().stream()?;
    /// bus.publish(OrderPlaced { id: 7 }).await?;
    /// let order = placed.recv().await.expect("delivered");
    /// bus.publish_with(OrderCharged { id: order.id }, PublishOptions::new().follows(&order)).await?;
    /// let charge = charged.recv().await.expect("delivered");
    /// assert_eq!(charge.caused_by(), Some(&order.reference()));
    /// assert_eq!(charge.correlation(), Some(&order.reference())); // the order is the root
    /// # Ok(()) }
    /// ```
    pub fn follows<E: crate::Event>(mut self, cause: &crate::Envelope<E>) -> Self {
        self.extra().cause = Some(cause.inner.cause_of_follow_ups());
        self
    }

    /// Sets what caused the event outright: for a bridge, which carries
    /// both across processes.
    pub fn cause(mut self, caused_by: EventRef, correlation: EventRef) -> Self {
        self.extra().cause = Some(Cause {
            caused_by,
            correlation,
            topic: None,
        });
        self
    }

    /// Sets what caused the event, topic and all (for the bus's own
    /// publishes: dead letters).
    pub(crate) fn caused(mut self, cause: Cause) -> Self {
        self.extra().cause = Some(cause);
        self
    }

    /// The id the event has in the process it came from (for a bridge):
    /// events caused by it name it by this id
    /// ([`Envelope::reference`](crate::Envelope::reference)).
    pub fn remote_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.extra().remote = Some(id.into());
        self
    }

    /// The OpenTelemetry span the event was published in, when it was not
    /// the current one: for a bridge, which carries it across processes
    /// (the W3C `traceparent`). Without it, a publish takes the span
    /// context of the current `tracing` span.
    #[cfg(feature = "opentelemetry")]
    pub fn trace_parent(mut self, parent: opentelemetry::trace::SpanContext) -> Self {
        self.extra().parent = Some(parent);
        self
    }

    /// Waits at most `timeout` for room, as
    /// [`Bus::publish_timeout`](crate::Bus::publish_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How long a topic remembers idempotency keys: the last `max_keys` keys,
/// each for at most `max_age` after its event was accepted, whichever ends
/// first. Memory is bounded in bytes: keys are at most `max_key_len` bytes
/// (default 256; longer ones are refused), so a window holds at most
/// `max_keys × (max_key_len + about 100)` bytes (2.5 MiB by default).
///
/// A key that has left the window is forgotten: publishing it again
/// delivers a new event. Size the window to cover the longest time a client
/// may retry (and its number of keys at peak rate).
///
/// The default keeps 10,000 keys for 5 minutes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DedupWindow {
    pub(crate) max_keys: usize,
    pub(crate) max_age: Duration,
    pub(crate) max_key_len: usize,
}

impl DedupWindow {
    /// The default window: 10,000 keys, 5 minutes, keys of up to 256 bytes.
    pub const fn new() -> Self {
        DedupWindow {
            max_keys: 10_000,
            max_age: Duration::from_secs(300),
            max_key_len: 256,
        }
    }

    /// The longest key accepted, in bytes (default 256); publishing with a
    /// longer one is refused. Bounds the window's memory with `max_keys`.
    pub const fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// The longest key accepted, in bytes.
    pub const fn key_len_limit(&self) -> usize {
        self.max_key_len
    }

    /// Remember at most this many keys (the oldest go first).
    pub const fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Remember a key at most this long after its event was accepted.
    pub const fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }
}

impl Default for DedupWindow {
    fn default() -> Self {
        DedupWindow::new()
    }
}
