//! The topic core: one registered topic at run time, its subscriptions and
//! everything a publish and a subscriber meet.
//!
//! A publish takes the topic's lock, checks that every `Block` and `Fail`
//! subscription has room, and only then gives the event a sequence number
//! and enqueues it everywhere (`publish.rs`). Room only grows while the
//! lock is held (only publishers add, and they hold the lock), so the check
//! cannot go stale before the enqueue. A publisher that has to wait leaves
//! nothing behind: dropping its future enqueues nothing; waiting publishers
//! take turns (`line.rs`).
//!
//! Each file owns a type or one path through the topic: the state of the
//! topic and what the bus asks of it (here), the publish path
//! (`publish.rs`), the line of waiting publishers and their turns
//! (`line.rs`), subscribing and leaving (`attach.rs`), a subscription fed
//! by a storage layer (`feed.rs`), the ring lossless subscriptions read
//! (`ring/`: the slots, a reader's `Cursor`, the publisher's `Writer`), a
//! subscription's state and every method on it (`subscription/`: its
//! publisher side, its readers, its end, its handler runners' side, and
//! its bounded queue), events let go of under a lock and dropped after it
//! (`deferred.rs`), the retained log (`retained.rs`), the idempotency-key
//! window (`keys.rs`), and a subscription's circuit breaker at run time
//! (`breaker.rs`).

mod attach;
mod breaker;
mod deferred;
mod feed;
mod keys;
mod line;
mod publish;
mod retained;
mod ring;
mod subscription;

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Waker};

use parking_lot::Mutex;

pub(crate) use attach::{SubName, SubRequest};
pub(crate) use breaker::{Breaker, Permit};
pub(crate) use feed::Offered;
use keys::Dedup;
use line::Line;
use ring::{ReaderRoom, Writer};
use subscription::RingView;
pub(crate) use subscription::{ErasedQueue, Final, SubscriptionState};

use crate::any::DynEvent;
use crate::codec::Codec;
use crate::config::{PublishOptions, TopicConfig};
use crate::errors::{PublishError, Refusal};
use crate::event::Event;
use crate::event::Published;
use crate::id::{BusId, SubscriptionId};
use crate::pool::PoolSlot;
use crate::receipt::PublishReceipt;
use crate::stats::TopicStats;
use crate::telemetry::{CauseCount, TopicMetrics};
use crate::watch::{CallbackLog, CallbackPanics, Finding, WatchSlot};
use deferred::Deferred;

/// A subscription as its topic's publishers see it.
pub(crate) struct SubEntry<E> {
    subscription: Arc<SubscriptionState<E>>,
    /// For a subscription that reads the topic's ring: the room it had
    /// when publishers last looked, so that they need not take its lock
    /// until the topic reaches it.
    ring: Option<ReaderRoom>,
}

impl<E> SubEntry<E> {
    pub(crate) fn view(&self, tail: u64) -> Option<RingView> {
        self.ring.as_ref().map(|_| RingView { tail })
    }
}

/// Where a topic stands in the bus's life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// The bus is shutting down: publishes from the bus's own handlers are
    /// accepted (chains of handlers finish), all others refused.
    Draining,
    /// Shut down: every publish is refused.
    Closed,
}

pub(crate) struct TopicInner<E> {
    subs: Vec<SubEntry<E>>,
    /// Subscriptions that left with `unsubscribe()` while they still held
    /// events or ran their handler: shutdown waits for them and reports
    /// them. Pruned once idle, except after shutdown began.
    draining: Vec<Arc<SubscriptionState<E>>>,
    /// Publishes refused because the bus was shutting down or shut down.
    refused: u64,
    /// The last accepted events, when the topic retains any.
    retained: VecDeque<Arc<Published<E>>>,
    /// Idempotency keys seen within the topic's window.
    dedup: Dedup,
    /// The ring read by lossless subscriptions, its readers and their
    /// lowest room: below it a publish looks at none of them.
    ring: Writer<E>,
    /// Subscriptions with a queue of their own (lossy ones, and lossless
    /// ones larger than the ring), which a publish visits one by one.
    own_subs: usize,
    phase: Phase,
    next_seq: u64,
    published: u64,
    unsubscribed: u64,
    discarded_on_unsubscribe: u64,
    /// The last subscriptions that left, for their watch findings (a
    /// handler may still be finishing when its subscription leaves).
    retired: std::collections::VecDeque<Arc<SubscriptionState<E>>>,
    /// Publishers waiting for room, first come, first served.
    line: Line<E>,
}

impl<E> TopicState<E> {
    /// The topic's first subscription (tests that look inside one).
    #[cfg(test)]
    pub(crate) fn first_subscription(&self) -> Arc<SubscriptionState<E>> {
        Arc::clone(&self.inner.lock().subs[0].subscription)
    }
}

/// How many departed subscriptions a topic keeps for their findings.
pub(crate) const RETIRED: usize = 64;

/// A registered topic at run time: its subscriptions and sequence counter.
pub(crate) struct TopicState<E> {
    config: TopicConfig,
    /// The bus it belongs to: whose handlers may still publish while it
    /// drains.
    bus: BusId,
    inner: Mutex<TopicInner<E>>,
    watch: WatchSlot,
    /// The bus's worker pools, for its blocking handlers.
    pools: PoolSlot,
    metrics: TopicMetrics,
    /// Accepted events with a cause, by the cause's topic (an entry per
    /// topic name of the program's event types, and one for causes known
    /// by id only: bounded by the program, whatever arrives). Locked while
    /// `inner` is, never the other way round. Not in `inner`: there, a
    /// publish without a cause measured 4 instructions more (the icount
    /// gate's `publish_block`).
    caused_by: Mutex<Vec<CauseCount>>,
    /// Panics of the callbacks it runs (`on_done`, events' `Drop`s).
    callbacks: Arc<CallbackLog>,
}

impl<E> TopicState<E> {
    /// The topic's settings, as the bus was built with them.
    pub(crate) fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// The bus the topic belongs to.
    pub(crate) fn bus(&self) -> BusId {
        self.bus
    }

    /// The bus's worker pools, for the topic's blocking handlers.
    pub(crate) fn pools(&self) -> &PoolSlot {
        &self.pools
    }

    /// Where the panics of the callbacks the topic runs are counted.
    pub(crate) fn callbacks(&self) -> &Arc<CallbackLog> {
        &self.callbacks
    }
}

impl<E: Event> TopicState<E> {
    pub(crate) fn new(config: TopicConfig, watch: WatchSlot, pools: PoolSlot, bus: BusId) -> Self {
        TopicState {
            config: config.clone(),
            bus,
            watch,
            pools,
            metrics: TopicMetrics::new(E::TOPIC),
            caused_by: Mutex::new(Vec::new()),
            callbacks: Arc::new(CallbackLog::new(E::TOPIC)),
            inner: Mutex::new(TopicInner {
                subs: Vec::new(),
                draining: Vec::new(),
                refused: 0,
                retained: VecDeque::new(),
                dedup: Dedup::new(config.dedup_window()),
                ring: Writer::new(),
                own_subs: 0,
                phase: Phase::Open,
                next_seq: 1,
                published: 0,
                unsubscribed: 0,
                discarded_on_unsubscribe: 0,
                retired: std::collections::VecDeque::new(),
                line: Line::new(),
            }),
        }
    }
}

/// What the bus needs of a topic without knowing its event type.
pub(crate) trait ErasedTopic: Send + Sync {
    fn stats(&self) -> TopicStats;
    /// Adds the findings of the blocked-runtime watch to `out`.
    fn findings(&self, out: &mut Vec<Finding>);
    /// The panics of its callbacks, if any, for `health()`.
    fn callback_panics(&self) -> Option<CallbackPanics>;
    /// Shutdown begins: publishes from outside the bus's handlers are
    /// refused from now on, and publishers waiting for room look again.
    fn begin_drain(&self);
    /// Whether no subscription of the topic (listed, or unsubscribed and
    /// still draining) holds an event or runs its handler, `caller`'s own
    /// run aside; then `Some` of the topic's count of accepted publishes.
    /// If not, `cx` is woken when that may have changed.
    fn poll_quiet(
        &self,
        cx: &mut std::task::Context<'_>,
        caller: Option<SubscriptionId>,
    ) -> Option<u64>;
    /// Shutdown ends: every publish is refused and every subscription
    /// closed, so that streams and runners end once drained.
    fn finish(&self);
    /// The shutdown deadline passed: closes the topic and drops what its
    /// subscriptions still hold (counted as cut off), stopping their async
    /// runners; returns those tasks, but `caller`'s, to wait for.
    fn cut_off(&self, caller: Option<SubscriptionId>) -> Vec<tokio::task::JoinHandle<()>>;
    /// How its events are (de)serialized, if they can be.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    fn codec(&self) -> Option<Codec>;
    /// How many accepted events it retains.
    fn retained(&self) -> usize;
    /// Publishes a type-erased event of this topic.
    fn publish_dyn(
        &self,
        event: DynEvent,
        options: PublishOptions,
    ) -> futures::future::BoxFuture<'_, Result<PublishReceipt, PublishError<DynEvent>>>;
}

impl<E: Event> ErasedTopic for TopicState<E> {
    fn stats(&self) -> TopicStats {
        let mut inner = self.inner.lock();
        inner.prune_draining();
        TopicStats {
            topic: E::TOPIC,
            published: inner.published,
            unsubscribed: inner.unsubscribed,
            discarded_on_unsubscribe: inner.discarded_on_unsubscribe,
            refused: inner.refused,
            callback_panics: self.callbacks.count(),
            caused_by: self
                .caused_by
                .lock()
                .iter()
                .map(|c| c.row.clone())
                .collect(),
            subscriptions: inner
                .subs
                .iter()
                .map(|e| e.subscription.stats(e.view(inner.next_seq)))
                .collect(),
            draining: inner.draining.iter().map(|q| q.stats(None)).collect(),
        }
    }

    fn findings(&self, out: &mut Vec<Finding>) {
        let inner = self.inner.lock();
        for subscription in &inner.retired {
            subscription.findings(out);
        }
        for entry in &inner.subs {
            entry.subscription.findings(out);
        }
    }

    fn callback_panics(&self) -> Option<CallbackPanics> {
        let every = crate::watch::current(&self.watch).report_interval();
        self.callbacks.entry(every)
    }

    fn codec(&self) -> Option<Codec> {
        E::__codec()
    }

    fn retained(&self) -> usize {
        self.config.retained()
    }

    fn publish_dyn(
        &self,
        event: DynEvent,
        options: PublishOptions,
    ) -> futures::future::BoxFuture<'_, Result<PublishReceipt, PublishError<DynEvent>>> {
        Box::pin(async move {
            match event.downcast::<E>() {
                Ok(event) => self
                    .publish(event, &options)
                    .await
                    .map_err(|err| err.map_event(DynEvent::new)),
                Err(event) => Err(PublishError::new(
                    Refusal::UnknownTopic {
                        topic: event.topic(),
                    },
                    event,
                )),
            }
        })
    }

    fn begin_drain(&self) {
        let mut wake = Vec::new();
        let subscriptions: Vec<_> = {
            let mut inner = self.inner.lock();
            if inner.phase == Phase::Open {
                inner.phase = Phase::Draining;
            }
            // Everyone waiting looks again: publishers from outside the
            // bus's handlers leave with `Closed`, handlers wait on.
            wake.extend(inner.line.wakers());
            inner
                .subs
                .iter()
                .map(|e| Arc::clone(&e.subscription))
                .collect()
        };
        wake.into_iter().for_each(Waker::wake);
        for subscription in subscriptions {
            subscription.wake_publishers();
        }
    }

    fn poll_quiet(&self, cx: &mut Context<'_>, caller: Option<SubscriptionId>) -> Option<u64> {
        let inner = self.inner.lock();
        let tail = inner.next_seq;
        let own = |q: &SubscriptionState<E>| usize::from(caller == Some(q.info.id));
        for e in &inner.subs {
            if !e
                .subscription
                .poll_quiet(e.view(tail), own(&e.subscription), cx)
            {
                return None;
            }
        }
        for q in &inner.draining {
            if !q.poll_quiet(None, own(q), cx) {
                return None;
            }
        }
        Some(inner.published)
    }

    fn finish(&self) {
        let mut dropped = Deferred::new();
        {
            let mut inner = self.inner.lock();
            inner.phase = Phase::Closed;
            let tail = inner.next_seq;
            for e in &inner.subs {
                e.subscription
                    .close(false, false, e.view(tail), &mut dropped);
            }
        }
        dropped.finish(&self.callbacks);
    }

    fn cut_off(&self, caller: Option<SubscriptionId>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut dropped = Deferred::new();
        let subscriptions: Vec<Arc<SubscriptionState<E>>> = {
            let mut inner = self.inner.lock();
            inner.phase = Phase::Closed;
            let tail = inner.next_seq;
            for e in &inner.subs {
                e.subscription
                    .close(false, false, e.view(tail), &mut dropped);
            }
            inner
                .subs
                .iter()
                .map(|e| Arc::clone(&e.subscription))
                .chain(inner.draining.iter().cloned())
                .collect()
        };
        dropped.finish(&self.callbacks);
        let mut tasks = Vec::new();
        for subscription in subscriptions {
            let stopped = ErasedQueue::cut_off(&*subscription);
            // The caller's own task cannot wait for itself.
            if caller != Some(subscription.info.id) {
                tasks.extend(stopped);
            }
        }
        tasks
    }
}
