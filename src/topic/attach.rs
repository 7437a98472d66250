//! Subscribing and leaving: attaching a subscription to its topic (all or
//! nothing, under the topic lock), detaching it, its numbers, and the
//! retained events a late reader asks for.

use std::ops::RangeBounds;
use std::sync::Arc;

use super::deferred::Deferred;
use super::retained;
use super::subscription::QueueSetup;
use super::{Breaker, Phase, SubEntry, SubscriptionState, TopicInner, TopicState, RETIRED};
use crate::config::{Overflow, StartAt};
use crate::errors::SubscribeError;
use crate::event::Event;
use crate::id::SubscriptionId;
use crate::info::{SubInfo, SubscriberKind};
use crate::resume::Replayed;
use crate::stats::SubscriptionStats;
use crate::watch;

/// What a new subscription asked to be called.
pub(crate) enum SubName {
    /// Named by the application: must be unique on the topic.
    Given(String),
    /// The default (topic and call site): made unique with `#2`, `#3`, …
    Default(String),
}

/// A subscription to be attached to its topic.
pub(crate) struct SubRequest {
    pub(crate) name: SubName,
    pub(crate) kind: SubscriberKind,
    pub(crate) policy: Overflow,
    pub(crate) capacity: usize,
    /// Runners taking from it (stream: 1, handlers: their concurrency).
    pub(crate) consumers: usize,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) start: StartAt,
    /// Fed by a storage layer, not by the topic's publishes.
    pub(crate) fed: bool,
}

impl<E: Event> TopicState<E> {
    /// queue. All or nothing: everything that can refuse it is checked
    /// before anything shared changes.
    pub(crate) fn attach(
        &self,
        request: SubRequest,
    ) -> Result<Arc<SubscriptionState<E>>, SubscribeError> {
        let topic = E::TOPIC;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.phase != Phase::Open {
            return Err(SubscribeError::Closed { topic });
        }
        match (self.config.feeder(), request.fed) {
            (Some(owner), false) => return Err(SubscribeError::Fed { topic, owner }),
            (None, true) => return Err(SubscribeError::NotFed { topic }),
            _ => {}
        }
        inner.prune_draining();
        let name = inner.unique_name(topic, request.name)?;
        // Under the lock every publish takes: the retained events copied
        // here and the live ones from `next_seq` on meet without a gap.
        let (replay, start) = retained::plan(
            request.start,
            &inner.retained,
            self.config.retained(),
            inner.next_seq,
        )?;
        let info = SubInfo {
            id: SubscriptionId::next(),
            name,
            topic,
            kind: request.kind,
            policy: request.policy,
            capacity: request.capacity,
        };
        let lossless = info.policy.is_lossless();
        // A fed subscription has a queue of its own, which its feeder fills.
        let reads_ring = lossless && !request.fed && inner.ring.fits(info.capacity);
        // Each retained event it is given is held by it, as a live one is.
        replay.iter().for_each(|published| published.hold());
        let setup = QueueSetup {
            consumers: request.consumers,
            breaker: request.breaker,
            replay,
            start,
            callbacks: Arc::clone(&self.callbacks),
        };
        // Nothing below can fail.
        let (cursor, room) = if reads_ring {
            let (cursor, room) = inner.ring.add_reader(
                inner.next_seq,
                info.capacity,
                self.config.default_capacity(),
            );
            (Some(cursor), Some(room))
        } else {
            inner.own_subs += 1;
            (None, None)
        };
        let subscription = Arc::new(SubscriptionState::new(
            info,
            watch::current(&self.watch),
            setup,
            cursor,
        ));
        inner.subs.push(SubEntry {
            subscription: Arc::clone(&subscription),
            ring: room,
        });
        self.metrics.subscriptions(inner.subs.len());
        Ok(subscription)
    }

    /// Retained events with sequence numbers in `range`.
    pub(crate) fn replay(&self, range: impl RangeBounds<u64>) -> Replayed<E> {
        let inner = self.inner.lock();
        retained::fetch(&inner.retained, inner.next_seq, range)
    }

    /// Removes a subscription; with `discard`, what it still holds is dropped
    /// and counted. A subscription that leaves while it still holds events
    /// or runs its handler goes on the topic's draining list, where shutdown
    /// finds it.
    pub(crate) fn detach(&self, subscription: &Arc<SubscriptionState<E>>, discard: bool) {
        self.take_off(subscription, discard, true);
    }

    /// Takes back a subscription that was never handed to the application
    /// (a wildcard subscription refused on another topic): it leaves
    /// without being counted as unsubscribed or kept for its findings.
    /// What it was given meanwhile is discarded and counted.
    pub(crate) fn withdraw(&self, subscription: &Arc<SubscriptionState<E>>) {
        self.take_off(subscription, true, false);
    }

    fn take_off(&self, subscription: &Arc<SubscriptionState<E>>, discard: bool, counted: bool) {
        let mut dropped = Deferred::new();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let tail = inner.next_seq;
        let position = inner
            .subs
            .iter()
            .position(|e| e.subscription.info.id == subscription.info.id);
        let view = position.and_then(|i| inner.subs[i].view(tail));
        // After shutdown the subscription stays listed, so that the shutdown
        // report shows it; nothing is published to it any more anyway.
        let leaving = inner.phase != Phase::Closed && position.is_some();
        if leaving {
            if let Some(i) = position {
                let entry = inner.subs.remove(i);
                if counted {
                    inner.unsubscribed += 1;
                    if inner.retired.len() == RETIRED {
                        inner.retired.pop_front();
                    }
                    inner.retired.push_back(Arc::clone(&entry.subscription));
                }
                self.metrics.subscriptions(inner.subs.len());
                match &entry.ring {
                    Some(room) => inner
                        .ring
                        .remove_reader(room, inner.subs.iter().filter_map(|e| e.ring.as_ref())),
                    None => inner.own_subs -= 1,
                }
            }
        }
        // Closed under the topic lock: no publish sees the queue half gone,
        // and the ring cannot move on before a leaving reader has copied
        // what it still has to read.
        inner.discarded_on_unsubscribe += subscription.close(discard, leaving, view, &mut dropped);
        // Discarding or not, a handler run may still be going: it counts.
        // Once the bus drains, whatever leaves stays listed, so that the
        // shutdown report shows what it did during the drain.
        if leaving && (!subscription.is_idle() || inner.phase != Phase::Open) {
            inner.draining.push(Arc::clone(subscription));
        }
        inner.prune_draining();
        drop(guard);
        dropped.finish(&self.callbacks);
    }

    /// One subscription's numbers, as exact as the topic's.
    pub(crate) fn sub_stats(&self, subscription: &SubscriptionState<E>) -> SubscriptionStats {
        let inner = self.inner.lock();
        let view = inner
            .subs
            .iter()
            .find(|e| e.subscription.info.id == subscription.info.id)
            .and_then(|e| e.view(inner.next_seq));
        subscription.stats(view)
    }
}

impl<E> TopicInner<E> {
    /// Forgets unsubscribed subscriptions that finished draining, while the
    /// bus runs; once it shuts down they stay, for the report.
    pub(super) fn prune_draining(&mut self) {
        if self.phase == Phase::Open && !self.draining.is_empty() {
            self.draining.retain(|q| !q.is_idle());
        }
    }

    /// Whether a listed or draining subscription has this name.
    fn name_taken(&self, name: &str) -> bool {
        self.subs.iter().any(|e| &*e.subscription.info.name == name)
            || self.draining.iter().any(|q| &*q.info.name == name)
    }

    /// The name a new subscription gets: a name of the application's own
    /// must be free on the topic (its stats and metric labels would merge
    /// with the other's); a default one is made unique.
    fn unique_name(&self, topic: &'static str, name: SubName) -> Result<Arc<str>, SubscribeError> {
        match name {
            SubName::Given(name) if self.name_taken(&name) => {
                Err(SubscribeError::NameTaken { topic, name })
            }
            SubName::Given(name) => Ok(name.into()),
            SubName::Default(base) => {
                if !self.name_taken(&base) {
                    return Ok(base.into());
                }
                let mut n: u64 = 2;
                loop {
                    let name = format!("{base}#{n}");
                    if !self.name_taken(&name) {
                        return Ok(name.into());
                    }
                    n = n.saturating_add(1);
                }
            }
        }
    }
}
