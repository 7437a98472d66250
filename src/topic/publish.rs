//! The publish path: one attempt under the topic lock (all or nothing),
//! and the two ways every publish comes to it: waiting for room, or not.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::deferred::Deferred;
use super::keys::Dedup;
use super::line::{FullSub, Turn};
use super::subscription::Push;
use super::{Phase, SubscriptionState, TopicState};
use crate::config::{Overflow, PublishOptions};
use crate::errors::{PublishError, Refusal};
use crate::event::Event;
use crate::event::{Done, Meta, Published};
use crate::id::EventId;
use crate::receipt::{Duplicate, PublishReceipt};
use crate::telemetry::{self, CauseCount};
use crate::watch::{CallbackLog, FindingKind};

/// The receipt of a publish whose key is within the window, if it is.
#[cold]
#[inline(never)]
fn duplicate_of(dedup: &mut Dedup, key: &str, now: Instant) -> Option<PublishReceipt> {
    let original = dedup.check(key, now)?;
    Some(PublishReceipt {
        id: original.original,
        seq: original.original_seq,
        enqueued: 0,
        evicted_oldest: 0,
        dropped_newest: 0,
        duplicate: Some(original),
    })
}

/// A publish through the bus to a topic a storage layer feeds.
#[cold]
#[inline(never)]
fn fed_elsewhere<E: Event>(owner: &'static str, event: E) -> PublishError<E> {
    let reason = Refusal::Fed {
        topic: E::TOPIC,
        owner,
    };
    PublishError::new(reason, event)
}

/// Records the key of an accepted publish.
#[cold]
#[inline(never)]
fn remember(dedup: &mut Dedup, key: &Arc<str>, id: EventId, seq: u64, now: Instant) {
    let original = Duplicate {
        original: id,
        original_seq: seq,
    };
    dedup.record(Arc::clone(key), original, now);
}

/// The metadata of a publish with a key, an origin, an `on_done` or a
/// cause; a cause is counted in the topic's `caused_by`.
#[cold]
#[inline(never)]
fn meta(
    opts: &PublishOptions,
    parent: Parent,
    topic: &'static str,
    caused_by: &Mutex<Vec<CauseCount>>,
    callbacks: &Arc<CallbackLog>,
) -> Box<Meta> {
    #[cfg(not(feature = "opentelemetry"))]
    let () = parent;
    let extra = opts.extra.as_deref();
    let meta = Box::new(Meta {
        key: opts.key.clone(),
        origin: opts.origin.clone(),
        done: extra
            .and_then(|e| e.done.clone())
            .map(|done| Arc::new(Done::new(done, Arc::clone(callbacks)))),
        cause: extra
            .and_then(|e| e.cause.clone())
            .or_else(crate::context::cause),
        remote: extra.and_then(|e| e.remote.clone()),
        #[cfg(feature = "opentelemetry")]
        parent: extra.and_then(|e| e.parent.clone()).or(parent),
        redelivered: false,
    });
    if let Some(cause) = &meta.cause {
        count_cause(&mut caused_by.lock(), topic, cause.topic);
    }
    meta
}

/// The span context a publish was made in, with the `opentelemetry`
/// feature.
#[cfg(feature = "opentelemetry")]
type Parent = Option<opentelemetry::trace::SpanContext>;
#[cfg(not(feature = "opentelemetry"))]
type Parent = ();

/// Counts an accepted event of `topic` caused by an event of `caused_by`.
#[inline(never)]
fn count_cause(counts: &mut Vec<CauseCount>, topic: &'static str, caused_by: Option<&'static str>) {
    match counts.iter_mut().find(|c| c.row.topic == caused_by) {
        Some(c) => c.count(),
        None => {
            let mut c = CauseCount::new(topic, caused_by);
            c.count();
            counts.push(c);
        }
    }
}

/// Adds an accepted event to a topic's retained log of `retain` events;
/// the one it pushes out goes to `dropped`.
#[inline(never)]
fn keep<E>(
    log: &mut VecDeque<Arc<Published<E>>>,
    retain: usize,
    published: &Arc<Published<E>>,
    dropped: &mut Deferred<E>,
) {
    if log.len() == retain {
        if let Some(old) = log.pop_front() {
            dropped.drop_copy(old);
        }
    }
    log.push_back(Arc::clone(published));
}

/// A publish that did not happen (yet).
pub(super) enum NotNow<E> {
    /// A `Block` subscription is full; the caller may wait (its waker is
    /// registered when a context was given).
    Wait(E, FullSub<E>),
    /// Publishers are waiting in line and the caller gave no context to
    /// join it with: it comes back with one.
    Later(E),
    Refused(PublishError<E>),
}

impl<E: Event> TopicState<E> {
    /// One attempt to publish. With `cx`, a full `Block` subscription
    /// registers the caller to be woken when it has room.
    ///
    /// `turn` is the caller's place in the line of waiting publishers, for a
    /// publish that may wait (a `try_publish` passes `None` and never
    /// queues). A caller that has to wait joins the line; while others are
    /// ahead of it, it waits its turn without looking for room.
    pub(super) fn try_enqueue(
        &self,
        mut cx: Option<&mut Context<'_>>,
        event: E,
        opts: &PublishOptions,
        mut turn: Option<&mut Option<u64>>,
    ) -> Result<PublishReceipt, NotNow<E>> {
        if let Some(owner) = self.config.feeder() {
            return Err(NotNow::Refused(fed_elsewhere(owner, event)));
        }
        let key = match opts.key {
            None => None,
            Some(_) => match self.keyed(opts) {
                Ok(key) => key,
                Err((key, problem)) => {
                    let reason = Refusal::InvalidKey {
                        topic: E::TOPIC,
                        key,
                        problem,
                    };
                    return Err(NotNow::Refused(PublishError::new(reason, event)));
                }
            },
        };
        let key = key.as_ref();
        // The timestamp is read before the lock, so that other publishers
        // do not wait for the clock (22 ns here for the precise one); the
        // wall clock orders nothing anyway, the sequence number does.
        let at = self.config.timestamp_clock().now();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.phase != Phase::Open && !self.may_publish(inner.phase) {
            inner.refused += 1;
            let reason = Refusal::Closed { topic: E::TOPIC };
            return Err(NotNow::Refused(PublishError::new(reason, event)));
        }
        if !inner.line.is_empty() {
            match (turn.as_deref_mut(), cx.as_deref_mut()) {
                (Some(turn), Some(cx)) => {
                    if let Some(full) = inner.line.wait_in_line(turn, cx) {
                        return Err(NotNow::Wait(event, full));
                    }
                }
                // A publish that may wait does not pass those already waiting.
                (Some(_), None) => return Err(NotNow::Later(event)),
                (None, _) => {}
            }
        }
        // Keyed publishes read the clock once, for the window.
        let now = key.map(|_| Instant::now());
        if let (Some(key), Some(now)) = (key, now) {
            if let Some(receipt) = duplicate_of(&mut inner.dedup, key, now) {
                return Ok(receipt);
            }
        }
        let tail = inner.next_seq;
        let mut blocked = None;
        // Below `ring_until` every ring subscription has room; only a
        // publish that reaches it, or a topic with queues of their own,
        // visits the subscriptions one by one (so that a fan-out to 64 ring
        // readers costs a publish no loop at all).
        if inner.ring.must_look(tail) || inner.own_subs > 0 {
            for entry in &mut inner.subs {
                let q = &entry.subscription;
                let policy = q.info.policy;
                let lossless = policy.is_lossless();
                let wait = match policy {
                    Overflow::Block => cx.as_deref_mut(),
                    _ => None,
                };
                let has_room = match &mut entry.ring {
                    Some(r) => {
                        if !r.fits(tail) {
                            if let Some(room) = q.ring_room(tail, wait) {
                                r.update(room);
                            }
                        }
                        r.fits(tail)
                    }
                    None if lossless => q.has_room(wait),
                    None => continue,
                };
                if !has_room {
                    if policy == Overflow::Fail {
                        return Err(NotNow::Refused(FullSub::of(q).refuse(event)));
                    }
                    blocked.get_or_insert_with(|| FullSub::of(q));
                }
            }
            // Exact once every ring subscription was looked at (a refusal
            // above leaves the old, lower bound: it only costs a look).
            if inner.ring.readers() > 0 {
                inner
                    .ring
                    .looked(inner.subs.iter().filter_map(|e| e.ring.as_ref()));
            }
        }
        if let Some(full) = blocked {
            if let (Some(turn), Some(cx)) = (turn, cx) {
                inner.line.wait_for(&full, turn, cx.waker());
            }
            return Err(NotNow::Wait(event, full));
        }
        // The caller's turn is over: the next in line looks for room now.
        let next = match turn {
            Some(turn @ Some(_)) => inner.line.leave(turn),
            _ => None,
        };

        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.published += 1;
        self.metrics.published();
        let id = EventId::next();
        // Published from a handler: caused by the event it handles.
        #[cfg(feature = "opentelemetry")]
        let parent = telemetry::trace_parent();
        #[cfg(not(feature = "opentelemetry"))]
        let parent = ();
        let plain = key.is_none()
            && opts.origin.is_none()
            && opts.extra.is_none()
            && !crate::context::handling();
        #[cfg(feature = "opentelemetry")]
        let plain = plain && parent.is_none();
        let meta = (!plain).then(|| meta(opts, parent, E::TOPIC, &self.caused_by, &self.callbacks));
        let published = Arc::new(Published {
            event,
            id,
            seq,
            at,
            meta,
        });
        if let (Some(key), Some(now)) = (key, now) {
            remember(&mut inner.dedup, key, id, seq, now);
        }
        // What this publish lets go of (evicted, pushed out of the log) is
        // dropped once the lock is released: that may run user code.
        let mut dropped = Deferred::new();
        let retain = self.config.retained();
        let may_let_go = retain > 0 || inner.own_subs > 0;
        if retain > 0 {
            keep(&mut inner.retained, retain, &published, &mut dropped);
        }
        let mut receipt = PublishReceipt {
            id,
            seq,
            enqueued: 0,
            evicted_oldest: 0,
            dropped_newest: 0,
            duplicate: None,
        };
        // The publisher holds an event with an `on_done` until it has
        // enqueued it everywhere, so that no subscription's release can run
        // it early; released once the lock is.
        let publishing = if plain {
            None
        } else {
            published.done().cloned()
        };
        // Ring subscriptions read the event from the ring; queues of their
        // own get it one by one.
        let ring_readers = inner.ring.readers();
        receipt.enqueued = ring_readers;
        if inner.own_subs > 0 {
            for entry in inner.subs.iter().filter(|e| e.ring.is_none()) {
                match entry.subscription.push(&published, &mut dropped) {
                    Push::Enqueued => receipt.enqueued += 1,
                    Push::EvictedOldest => {
                        receipt.enqueued += 1;
                        receipt.evicted_oldest += 1;
                    }
                    Push::DroppedNewest => receipt.dropped_newest += 1,
                    Push::Closed => {}
                }
            }
        }
        // Last, so that the ring takes the publisher's own reference to the
        // event instead of another one (an atomic increment and decrement
        // fewer per publish).
        if ring_readers > 0 {
            if let Some(done) = &publishing {
                done.hold(ring_readers);
            }
            let written = inner.ring.write(published);
            debug_assert!(written, "a ring write below every reader's room");
        }
        drop(guard);
        if let Some(next) = next {
            next.wake();
        }
        if may_let_go {
            dropped.finish(&self.callbacks);
        } else {
            // Empty: nothing to let go of, and no drop glue to run.
            std::mem::forget(dropped);
        }
        if let Some(done) = publishing {
            done.release();
        }
        Ok(receipt)
    }

    /// Publishes without ever waiting: where a `Block` subscription is
    /// full, refuses instead. What every `try_publish` of the bus and of a
    /// [`Publisher`](crate::Publisher) comes to.
    pub(crate) fn try_publish(
        &self,
        event: E,
        opts: &PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        let span = telemetry::publish_span(E::TOPIC);
        let result = telemetry::in_span(&span, || self.try_enqueue(None, event, opts, None))
            .map_err(|not_now| match not_now {
                NotNow::Refused(err) => err,
                NotNow::Wait(event, full) => full.refuse(event),
                NotNow::Later(_) => unreachable!("a try_publish never waits in line"),
            });
        if let Ok(receipt) = &result {
            telemetry::record_receipt(&span, receipt);
        }
        result
    }

    /// Publishes, waiting for room under `Block` at most `opts.timeout`
    /// (forever when `None`): what every waiting publish of the bus and of
    /// a [`Publisher`](crate::Publisher) comes to. The event lives in this
    /// future until it is enqueued, so dropping the future enqueues
    /// nothing.
    pub(crate) async fn publish(
        &self,
        event: E,
        opts: &PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        let span = telemetry::publish_span(E::TOPIC);
        // Most publishes find room at once: one attempt, with no future,
        // timer or place in the line of its own (callgrind: about 150
        // instructions a publish fewer than going through them).
        let mut first = None;
        let attempt = telemetry::in_span(&span, || {
            self.try_enqueue(None, event, opts, Some(&mut first))
        });
        let event = match attempt {
            Ok(receipt) => {
                telemetry::record_receipt(&span, &receipt);
                return Ok(receipt);
            }
            Err(NotNow::Refused(err)) => return Err(err),
            Err(NotNow::Wait(event, _) | NotNow::Later(event)) => event,
        };
        self.publish_waiting(event, opts, span).await
    }

    /// The rest of a publish that found no room at first: waits for room
    /// under `Block` at most `opts.timeout` (forever when `None`).
    #[inline(never)]
    async fn publish_waiting(
        &self,
        event: E,
        opts: &PublishOptions,
        span: telemetry::Span,
    ) -> Result<PublishReceipt, PublishError<E>> {
        let timeout = opts.timeout;
        // The timer starts at the first wait, so a publish that never waits
        // needs no timer (nor a runtime to drive one), and no clock reading.
        let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut waiting: Option<(Instant, FullSub<E>)> = None;
        let mut pending = Some(event);
        // Its place in the line; leaving it (done, timed out, or dropped)
        // hands the turn on.
        let mut turn = Turn::new(self);
        let result = telemetry::instrument(
            poll_fn(|cx| {
                let event = pending
                    .take()
                    .expect("publish future polled after it completed");
                match self.try_enqueue(Some(cx), event, opts, Some(&mut turn.ticket)) {
                    Ok(receipt) => Poll::Ready(Ok(receipt)),
                    Err(NotNow::Refused(err)) => Poll::Ready(Err(err)),
                    Err(NotNow::Later(_)) => {
                        unreachable!("a publish with a context joins the line")
                    }
                    Err(NotNow::Wait(event, full)) => {
                        let expired = match timeout {
                            Some(timeout) => sleep
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
                                .as_mut()
                                .poll(cx)
                                .is_ready(),
                            None => false,
                        };
                        if expired {
                            return Poll::Ready(Err(
                                full.timed_out(event, timeout.unwrap_or_default())
                            ));
                        }
                        let since = waiting.take().map_or_else(Instant::now, |(t, _)| t);
                        waiting = Some((since, full));
                        pending = Some(event);
                        Poll::Pending
                    }
                }
            }),
            &span,
        )
        .await;
        if let Some((since, full)) = waiting {
            self.waited(since.elapsed(), &full.subscription);
        }
        if let Ok(receipt) = &result {
            telemetry::record_receipt(&span, receipt);
        }
        result
    }

    /// The checked key a keyed publish is remembered by.
    #[cold]
    #[inline(never)]
    fn keyed(&self, opts: &PublishOptions) -> Result<Option<Arc<str>>, (String, String)> {
        opts.check_key(self.config.dedup_window().key_len_limit())?;
        Ok(opts.dedup_key())
    }

    /// Whether a publish may go ahead once the bus began to shut down: only
    /// one made by this bus's own handlers, while it drains.
    #[cold]
    #[inline(never)]
    fn may_publish(&self, phase: Phase) -> bool {
        phase == Phase::Draining && crate::context::inside(self.bus)
    }

    /// A publish waited `took` for room in `subscription`.
    fn waited(&self, took: Duration, subscription: &SubscriptionState<E>) {
        self.metrics.waited(took);
        if subscription
            .watch
            .publish_wait_threshold()
            .is_some_and(|threshold| took > threshold)
        {
            subscription.finding(FindingKind::PublisherBlocked, took);
        }
    }
}
