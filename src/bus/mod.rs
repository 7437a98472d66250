//! The bus: [`Bus`] (what applications hold), its builder, the allow-list
//! it is built from, the process-wide global bus, and shutdown.

mod builder;
mod global;
mod registry;
mod shutdown;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use builder::BusBuilder;
pub use global::{global, set_global, try_global, AlreadySet};
use registry::Registry;

use crate::any::DynEvent;
use crate::config::PublishOptions;
use crate::dead_letter::DeadLetter;
#[cfg(feature = "serde")]
use crate::errors::DecodeError;
use crate::errors::{PublishError, Refusal, SubscribeError, UnknownTopic};
use crate::event::Event;
use crate::info::TopicInfo;
use crate::name::Pattern;
use crate::publisher::Publisher;
use crate::receipt::PublishReceipt;
use crate::report::ShutdownReport;
use crate::resume::Replayed;
use crate::stats::BusStats;
use crate::subscribe::{Matched, PatternBuilder, SubscribeBuilder};
use crate::topic::{ErasedTopic, TopicState};
use crate::watch::Health;

///
/// Build one with [`Bus::builder`], naming every topic it carries (the
/// allow-list); publishing or subscribing to anything else is an error.
///
/// ```
/// use tidings::{Bus, Event};
///
/// #[derive(Debug, Event)]
/// #[event(topic = "orders.created")]
/// struct OrderCreated { id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut orders = bus.subscribe::<OrderCreated>().stream()?;
/// bus.publish(OrderCreated { id: 1 }).await?;
/// let e = orders.recv().await.expect("subscribed");
/// assert_eq!((e.id, e.seq()), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Registry,
    /// The numbers when shutdown was first called: the drain began then,
    /// and every report of it covers it from there.
    drain_began: parking_lot::Mutex<Option<crate::stats::BusStats>>,
}

impl Bus {
    fn new(registry: Registry) -> Self {
        Bus {
            shared: Arc::new(Shared {
                registry,
                drain_began: parking_lot::Mutex::new(None),
            }),
        }
    }

    /// Starts a bus with an empty allow-list.
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }

    fn topic<E: Event>(&self) -> Option<&TopicState<E>> {
        self.shared.registry.state::<E>()
    }

    /// Starts a subscription to `E`'s topic; see [`SubscribeBuilder`]. A
    /// topic that is not registered is refused when the subscription is
    /// made ([`SubscribeError::UnknownTopic`](crate::error::SubscribeError::UnknownTopic)).
    pub fn subscribe<E: Event>(&self) -> SubscribeBuilder<E> {
        let registry = &self.shared.registry;
        SubscribeBuilder::new(
            registry.state_arc::<E>(),
            registry.state_arc::<DeadLetter>(),
        )
    }

    /// A typed handle that publishes `E` without looking its topic up each
    /// time.
    ///
    /// # Errors
    /// [`UnknownTopic`] when `E`'s topic is not registered.
    pub fn publisher<E: Event>(&self) -> Result<Publisher<E>, UnknownTopic> {
        self.shared
            .registry
            .state_arc::<E>()
            .map(|topic| Publisher { topic })
            .ok_or(UnknownTopic { topic: E::TOPIC })
    }

    /// Publishes `event` to every subscription of its topic, waiting for room
    /// in full [`Overflow::Block`](crate::Overflow::Block) subscriptions.
    ///
    /// All or nothing: the event is enqueued to every subscription or to none.
    /// Dropping the returned future before it completes enqueues nothing.
    ///
    /// # Errors
    /// [`Refusal::UnknownTopic`](crate::error::Refusal::UnknownTopic), [`Refusal::Closed`](crate::error::Refusal::Closed), and
    /// [`Refusal::Full`](crate::error::Refusal::Full) when an [`Overflow::Fail`](crate::Overflow::Fail)
    /// subscription is full. Each hands the event back.
    pub async fn publish<E: Event>(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        match self.topic::<E>() {
            Some(topic) => topic.publish(event, &PublishOptions::PLAIN).await,
            None => Err(unknown(event)),
        }
    }

    /// Publishes `event` without ever waiting.
    ///
    /// # Errors
    /// As [`publish`](Bus::publish), and [`Refusal::Full`](crate::error::Refusal::Full) where
    /// `publish` would wait. Nothing is enqueued anywhere on error.
    pub fn try_publish<E: Event>(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        match self.topic::<E>() {
            Some(topic) => topic.try_publish(event, &PublishOptions::PLAIN),
            None => Err(unknown(event)),
        }
    }

    /// Publishes `event`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`publish`](Bus::publish), and [`Refusal::Timeout`](crate::error::Refusal::Timeout) when no
    /// room appeared in time (nothing was enqueued).
    ///
    /// # Panics
    /// Outside a tokio runtime with the time driver enabled, if it has to wait.
    pub async fn publish_timeout<E: Event>(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<PublishReceipt, PublishError<E>> {
        match self.topic::<E>() {
            Some(topic) => {
                topic
                    .publish(event, &PublishOptions::waiting_at_most(timeout))
                    .await
            }
            None => Err(unknown(event)),
        }
    }

    /// Publishes `event` with [`PublishOptions`]: an idempotency key (a
    /// second publish of a key within the topic's window is not delivered
    /// again; its receipt says [`duplicate`](PublishReceipt::duplicate)),
    /// a timeout.
    ///
    /// # Errors
    /// As [`publish`](Bus::publish), and [`Refusal::Timeout`](crate::error::Refusal::Timeout) with a
    /// timeout.
    pub async fn publish_with<E: Event>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        match self.topic::<E>() {
            Some(topic) => topic.publish(event, &options).await,
            None => Err(unknown(event)),
        }
    }

    /// Publishes `event` with an idempotency key without ever waiting (the
    /// options' timeout does not apply).
    ///
    /// # Errors
    /// As [`try_publish`](Bus::try_publish).
    pub fn try_publish_with<E: Event>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        match self.topic::<E>() {
            Some(topic) => topic.try_publish(event, &options),
            None => Err(unknown(event)),
        }
    }

    /// Publishes a type-erased event (from
    /// [`deserialize_event`](Bus::deserialize_event), say) to its topic.
    ///
    /// # Errors
    /// As [`publish_with`](Bus::publish_with); the event comes back as a
    /// [`DynEvent`].
    pub async fn publish_dyn(
        &self,
        event: DynEvent,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<DynEvent>> {
        match self.shared.registry.by_name(event.topic()) {
            Some(entry) => entry.erased.publish_dyn(event, options).await,
            None => {
                let reason = Refusal::UnknownTopic {
                    topic: event.topic(),
                };
                Err(PublishError::new(reason, event))
            }
        }
    }

    /// Makes an event of the topic named `topic` from any serde format,
    /// through the allow-list: only a registered topic whose type is marked
    /// `#[event(serde)]` decodes.
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// #[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
    /// #[event(topic = "orders.created", serde)]
    /// struct OrderCreated { id: u64 }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderCreated>().build()?;
    /// let mut json = serde_json::Deserializer::from_str(r#"{"id": 7}"#);
    /// let event = bus.deserialize_event("orders.created", &mut json)?;
    /// assert_eq!(event.downcast::<OrderCreated>().map(|o| o.id).ok(), Some(7));
    /// assert!(bus.deserialize_event("orders.shipped", &mut serde_json::Deserializer::from_str("{}")).is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`DecodeError`] naming the topic: not registered, not serializable,
    /// or a payload that does not fit its type.
    #[cfg(feature = "serde")]
    pub fn deserialize_event<'de, D: serde::Deserializer<'de>>(
        &self,
        topic: &str,
        deserializer: D,
    ) -> Result<DynEvent, DecodeError> {
        let entry =
            self.shared
                .registry
                .by_name(topic)
                .ok_or_else(|| DecodeError::UnknownTopic {
                    topic: topic.to_owned(),
                })?;
        let codec = entry.erased.codec().ok_or(DecodeError::NoCodec {
            topic: entry.name,
            type_name: entry.type_name,
        })?;
        let mut erased = <dyn erased_serde::Deserializer<'_>>::erase(deserializer);
        let event = (codec.deserialize)(&mut erased).map_err(|err| DecodeError::Payload {
            topic: entry.name,
            type_name: entry.type_name,
            message: err.to_string(),
        })?;
        Ok(DynEvent {
            topic: entry.name,
            type_name: entry.type_name,
            event,
        })
    }

    /// Subscribes to the dead letters of every subscription on this bus
    /// (the topic [`DEAD_LETTER_TOPIC`](crate::DEAD_LETTER_TOPIC)); finish with `.stream()`,
    /// `.handler()` or `.sync()`. Dead letters that reach no subscription
    /// (and are not retained) are counted per subscription as
    /// `dead_letters_unheard` and logged once per subscription.
    ///
    /// A dead-letter subscription is an ordinary one: under
    /// [`Overflow::Block`](crate::Overflow::Block) (the default) a reader
    /// that stops reading makes failing handlers wait once its queue is
    /// full, as it would any publisher. Choose `DropOldest` for a reader
    /// that may fall behind.
    pub fn dead_letters(&self) -> SubscribeBuilder<DeadLetter> {
        self.subscribe::<DeadLetter>()
    }

    /// Subscribes to every registered topic that `pattern` matches
    /// (NATS style: `*` one segment, a final `>` the rest; see [`Pattern`](crate::Pattern)),
    /// receiving type-erased [`AnyEvent`](crate::AnyEvent)s. The pattern is
    /// checked against the allow-list when subscribing: one that matches
    /// nothing is an error, never a subscription that silently receives
    /// nothing.
    pub fn subscribe_pattern(&self, pattern: impl Into<String>) -> PatternBuilder {
        let pattern = pattern.into();
        let registry = &self.shared.registry;
        let matched = Pattern::parse(&pattern)
            .map_err(SubscribeError::from)
            .and_then(|parsed| {
                let matched: Vec<Matched> = registry
                    .matching(&parsed)
                    .map(|e| Matched {
                        name: e.name,
                        state: Arc::clone(&e.state),
                        part: e.part,
                    })
                    .collect();
                if matched.is_empty() {
                    return Err(SubscribeError::NoMatch {
                        pattern: pattern.clone(),
                        registered: self.topics().join(", "),
                    });
                }
                Ok((parsed, matched))
            });
        PatternBuilder::new(pattern, matched)
    }

    /// The retained events of `E`'s topic with sequence numbers in `seqs`,
    /// and which of them are no longer retained: how a lossy subscription
    /// that saw [`Envelope::missed`](crate::Envelope::missed) recovers the
    /// events it lost, while they are still retained.
    ///
    /// ```
    /// # use tidings::{Bus, Event, Overflow, TopicConfig};
    /// # #[derive(Debug, Event)] #[event(topic = "ticks")] struct Tick(u64);
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic_with::<Tick>(TopicConfig::default().retain(3)).build()?;
    /// let mut ui = bus.subscribe::<Tick>().capacity(1).overflow(Overflow::DropOldest).stream()?;
    /// for i in 1..=5 { bus.publish(Tick(i)).await?; }
    /// let e = ui.recv().await.expect("open");
    /// assert_eq!((e.seq(), e.missed()), (5, 4)); // lost seq 1..5
    /// let back = bus.replay::<Tick>(e.seq() - e.missed()..e.seq())?;
    /// assert_eq!(back.events.iter().map(|e| e.0).collect::<Vec<_>>(), [3, 4]);
    /// assert_eq!(back.unrecoverable, 1..3); // told exactly what is gone
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`UnknownTopic`] if `E`'s topic is not registered.
    pub fn replay<E: Event>(
        &self,
        seqs: impl std::ops::RangeBounds<u64>,
    ) -> Result<Replayed<E>, UnknownTopic> {
        self.topic::<E>()
            .map(|topic| topic.replay(seqs))
            .ok_or(UnknownTopic { topic: E::TOPIC })
    }

    /// Whether `E`'s topic is on this bus's allow-list.
    pub fn is_registered<E: Event>(&self) -> bool {
        self.topic::<E>().is_some()
    }

    /// The registered topics, in name order.
    pub fn topics(&self) -> Vec<&'static str> {
        self.shared.registry.entries().map(|e| e.name).collect()
    }

    /// What the bus knows of the topic registered under `topic`: its Rust
    /// type, and whether that type is serializable (`#[event(serde)]`);
    /// `None` if it is not on the allow-list. For integrations (a bridge)
    /// that handle topics by name.
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated;
    /// let bus = Bus::builder().topic::<OrderCreated>().build()?;
    /// let info = bus.topic_info("orders.created").expect("registered");
    /// assert!(info.type_name.ends_with("OrderCreated") && !info.serializable);
    /// assert!(bus.topic_info("orders.shipped").is_none());
    /// # Ok::<(), tidings::error::BuildError>(())
    /// ```
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        self.shared.registry.by_name(topic).map(|e| TopicInfo {
            name: e.name,
            type_name: e.type_name,
            serializable: e.erased.codec().is_some(),
            retain: e.erased.retained(),
            fed_by: e.config.feeder(),
        })
    }

    /// The allow-list as an AsyncAPI 3.0 document, to finish with a title,
    /// a version, schemas and servers (feature `asyncapi`; the same as
    /// [`AsyncApi::new(&bus)`](crate::asyncapi::AsyncApi::new)).
    #[cfg(feature = "asyncapi")]
    pub fn asyncapi(&self) -> crate::asyncapi::AsyncApi {
        crate::asyncapi::AsyncApi::new(self)
    }

    /// A snapshot of every topic and subscription.
    pub fn stats(&self) -> BusStats {
        BusStats {
            topics: self
                .shared
                .registry
                .entries()
                .map(|e| e.erased.stats())
                .collect(),
            pools: crate::pool::current(&self.shared.registry.pools).stats(),
        }
    }

    /// What the blocked-runtime watch has found: async handlers whose polls
    /// held a runtime thread too long, blocking handlers over their budget
    /// (or still running past it), subscriptions that kept publishers
    /// waiting, and worker pools whose every worker was busy too long;
    /// worst first. Serve it from
    /// a health endpoint. See [`WatchConfig`](crate::WatchConfig).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tidings::{Bus, Event, WatchConfig, FindingKind};
    /// # #[derive(Event)] #[event(topic = "jobs")] struct Job;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder()
    ///     .topic::<Job>()
    ///     .watch(WatchConfig::default().slow_poll(Some(Duration::from_millis(5))))
    ///     .build()?;
    /// let h = bus
    ///     .subscribe::<Job>()
    ///     .name("oops")
    ///     .handler(|_| async { std::thread::sleep(Duration::from_millis(100)) })?; // blocks!
    /// bus.publish(Job).await?;
    /// h.unsubscribe().await;
    /// let health = bus.health();
    /// assert!(!health.is_healthy());
    /// assert_eq!(health.findings[0].kind, FindingKind::SlowPoll);
    /// assert_eq!(health.findings[0].subscription, "oops");
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> Health {
        let mut findings = Vec::new();
        let mut callback_panics = Vec::new();
        for entry in self.shared.registry.entries() {
            entry.erased.findings(&mut findings);
            callback_panics.extend(entry.erased.callback_panics());
        }
        findings.sort_by_key(|f| std::cmp::Reverse(f.worst));
        Health {
            findings,
            callback_panics,
            pools: crate::pool::current(&self.shared.registry.pools).findings(),
        }
    }

    /// Shuts the bus down, draining it first.
    ///
    /// From the call on, publishes fail with [`Refusal::Closed`](crate::error::Refusal::Closed) (the
    /// event handed back), and publishers waiting for room are released
    /// with the same error, except those made by this bus's own handlers
    /// (and the dead letters their runners publish): those are accepted
    /// while the bus drains, so that a handler's follow-on events reach
    /// their subscribers and a chain of handlers of any depth finishes.
    /// The drain is over when no subscription holds an event and no handler
    /// runs, counting subscriptions that unsubscribed and are still
    /// draining; then every subscription is closed: streams end, handler
    /// runners stop.
    ///
    /// If that has not happened within `deadline`, what is still queued is
    /// cut off, async handler runs are cancelled, and the report names
    /// both. The report is clean only if nothing was cut off, no handler run
    /// was left unfinished, no publish was refused and no event was
    /// dead-lettered during the drain.
    ///
    /// Called from inside one of the bus's handlers, it does not wait for
    /// that handler's own run (which is waiting for it), but events queued
    /// behind that run in a one-at-a-time subscription cannot be handled
    /// until it returns, so they wait for the deadline: call it from a task
    /// of its own (`tokio::spawn`) to drain them too.
    ///
    /// Calling it again returns a fresh report and changes nothing.
    /// Dropping the future before it completes leaves the bus draining
    /// (publishes from outside are still refused); a later call finishes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<OrderCreated>().build()?;
    /// let _billing = bus.subscribe::<OrderCreated>().sync(|_e| ())?;
    /// bus.publish(OrderCreated { id: 1 }).await?;
    /// let report = bus.shutdown(Duration::from_secs(5)).await;
    /// assert!(report.is_clean(), "{report}");
    /// assert!(bus.publish(OrderCreated { id: 2 }).await.is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// Outside a tokio runtime with the time driver enabled.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let caller = crate::context::current()
            .filter(|r| r.bus == self.shared.registry.bus)
            .map(|r| r.subscription);
        let before = {
            let mut began = self.shared.drain_began.lock();
            match &*began {
                Some(before) => before.clone(),
                None => began.insert(self.stats()).clone(),
            }
        };
        let topics: Vec<&dyn ErasedTopic> =
            self.shared.registry.entries().map(|e| &*e.erased).collect();
        let (elapsed, deadline_hit) = shutdown::drain(&topics, deadline, caller).await;
        // The subscriptions' final numbers; the pools' live state is in
        // `Bus::stats`.
        let mut after = self.stats();
        after.pools.clear();
        ShutdownReport::new(elapsed, deadline_hit, &before, after, caller)
    }
}

fn unknown<E: Event>(event: E) -> PublishError<E> {
    PublishError::new(Refusal::UnknownTopic { topic: E::TOPIC }, event)
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("topics", &self.topics())
            .finish()
    }
}
