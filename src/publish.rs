//! The publish path: a topic's subscriptions, all-or-nothing enqueueing, and
//! the typed [`Publisher`] handle.
//!
//! A publish takes the topic's lock, checks that every `Block` and `Fail`
//! subscription has room, and only then gives the event a sequence number
//! and enqueues it everywhere. Room only grows while the lock is held (only
//! publishers add, and they hold the lock), so the check cannot go stale
//! before the enqueue. A publisher that has to wait leaves nothing behind:
//! dropping its future enqueues nothing.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::future::Future;
use std::ops::RangeBounds;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::context::BusId;
use crate::dedup::{Dedup, Duplicate, PublishOptions};
use crate::erased::{Codec, DynEvent};
use crate::error::{PublishError, SubscribeError};
use crate::event::{EventId, Meta, Published};
use crate::queue::{ErasedQueue, Overflow, Push, Queue, QueueSetup, Ring, RingView};
use crate::replay::{self, Replayed, StartAt};
use crate::retry::Breaker;
use crate::stats::{SubscriptionStats, TopicStats};
use crate::subscribe::SubscriptionId;
use crate::subscribe::{AnyOptions, AnyStream, Erased};
use crate::telemetry::{self, TopicMetrics};
use crate::topic::{ErasedTopic, TopicConfig};
use crate::watch::{self, Finding, FindingKind, WatchSlot};
use crate::Event;

/// What a successful publish did.
///
/// ```
/// # use tidings::{Bus, Event, Overflow};
/// # #[derive(Event)] #[event(topic = "ticks")] struct Tick(u64);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<Tick>().build()?;
/// let _all = bus.subscribe::<Tick>().stream()?;
/// let _latest = bus.subscribe::<Tick>().capacity(1).overflow(Overflow::DropNewest).stream()?;
/// let first = bus.publish(Tick(1)).await?;
/// assert_eq!((first.seq, first.enqueued, first.dropped_newest), (1, 2, 0));
/// let second = bus.publish(Tick(2)).await?; // `_latest` is full and drops it
/// assert_eq!((second.seq, second.enqueued, second.dropped_newest), (2, 1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The event's process-wide unique id.
    pub id: EventId,
    /// The event's sequence number on its topic.
    pub seq: u64,
    /// Subscriptions that enqueued the event.
    pub enqueued: usize,
    /// Of those, subscriptions that evicted their oldest queued event to make
    /// room ([`Overflow::DropOldest`]).
    pub evicted_oldest: usize,
    /// Subscriptions that discarded this event because they were full
    /// ([`Overflow::DropNewest`]).
    pub dropped_newest: usize,
    /// Set when the publish carried an idempotency key the topic had already
    /// accepted within its [`DedupWindow`](crate::DedupWindow): the event was
    /// not delivered again, and `id` and `seq` are the original's.
    pub duplicate: Option<Duplicate>,
}

impl PublishReceipt {
    /// Whether the publish was a duplicate and delivered nothing.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate.is_some()
    }
}

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

/// The metadata of a publish with a key or an origin.
#[cold]
#[inline(never)]
fn meta(opts: &PublishOptions) -> Box<Meta> {
    Box::new(Meta {
        key: opts.key.clone(),
        origin: opts.origin.clone(),
    })
}

/// Adds an accepted event to a topic's retained log of `retain` events.
#[inline(never)]
fn keep<E>(log: &mut VecDeque<Arc<Published<E>>>, retain: usize, published: &Arc<Published<E>>) {
    if log.len() == retain {
        log.pop_front();
    }
    log.push_back(Arc::clone(published));
}

/// A waiting publisher's place in its topic's line.
struct Turn<'a, E: Event> {
    topic: &'a TopicState<E>,
    ticket: Option<u64>,
}

impl<E: Event> Drop for Turn<'_, E> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.topic.leave(ticket);
        }
    }
}

/// Under the topic lock: whether a caller that may wait must wait its turn
/// (and what to name as the full subscription), refreshing its waker in the
/// line. `None`: it is first in line, or nobody waits, so it looks for room.
#[cold]
#[inline(never)]
fn wait_in_line<E>(
    inner: &mut TopicInner<E>,
    turn: &mut Option<u64>,
    cx: &mut Context<'_>,
) -> Option<FullSub<E>> {
    let first = inner.line.front().map(|(ticket, _)| *ticket)?;
    let blocking = inner.blocking.as_ref()?;
    let full = FullSub {
        queue: Arc::clone(blocking),
    };
    match *turn {
        Some(mine) if mine == first => None,
        Some(mine) => {
            if let Some((_, waker)) = inner.line.iter_mut().find(|(t, _)| *t == mine) {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            Some(full)
        }
        None => {
            let ticket = inner.next_ticket;
            inner.next_ticket += 1;
            inner.line.push_back((ticket, cx.waker().clone()));
            *turn = Some(ticket);
            Some(full)
        }
    }
}

/// Under the topic lock: takes `turn`'s ticket out of the line; if it was
/// first, returns the waker of the new first, to wake once the lock is
/// released.
#[inline(never)]
fn leave_line<E>(inner: &mut TopicInner<E>, turn: &mut Option<u64>) -> Option<Waker> {
    let ticket = turn.take()?;
    let at = inner.line.iter().position(|(t, _)| *t == ticket)?;
    inner.line.remove(at);
    if inner.line.is_empty() {
        inner.blocking = None;
    }
    if at == 0 {
        inner.line.front().map(|(_, waker)| waker.clone())
    } else {
        None
    }
}

/// A subscription with no room, as found by a publish.
struct FullSub<E> {
    queue: Arc<Queue<E>>,
}

impl<E: Event> FullSub<E> {
    fn of(queue: &Arc<Queue<E>>) -> Self {
        FullSub {
            queue: Arc::clone(queue),
        }
    }

    /// The refusal of a publish that could not wait for this subscription.
    fn refuse(self, event: E) -> PublishError<E> {
        let info = &self.queue.info;
        PublishError::Full {
            topic: E::TOPIC,
            subscription: Arc::clone(&info.name),
            id: info.id,
            capacity: info.capacity,
            policy: info.policy,
            event,
        }
    }

    /// The refusal of a publish that waited `waited` and gave up.
    fn timed_out(self, event: E, waited: Duration) -> PublishError<E> {
        let info = &self.queue.info;
        PublishError::Timeout {
            topic: E::TOPIC,
            subscription: Arc::clone(&info.name),
            id: info.id,
            capacity: info.capacity,
            waited,
            event,
        }
    }
}

/// A publish that did not happen (yet).
enum NotNow<E> {
    /// A `Block` subscription is full; the caller may wait (its waker is
    /// registered when a context was given).
    Wait(E, FullSub<E>),
    Refused(PublishError<E>),
}

/// A subscription as its topic's publishers see it.
pub(crate) struct SubEntry<E> {
    pub(crate) queue: Arc<Queue<E>>,
    /// For a subscription that reads the topic's ring: what publishers know
    /// of it without taking its lock.
    ring: Option<RingRoom>,
}

struct RingRoom {
    /// Room left when last looked at; only publishes use it up, so while it
    /// is above 0 there is room without looking again.
    room: usize,
}

impl<E> SubEntry<E> {
    fn view(&self, tail: u64) -> Option<RingView> {
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
    pub(crate) kind: crate::SubscriberKind,
    pub(crate) policy: Overflow,
    pub(crate) capacity: usize,
    /// Runners taking from it (stream: 1, handlers: their concurrency).
    pub(crate) consumers: usize,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) start: StartAt,
}

pub(crate) struct TopicInner<E> {
    pub(crate) subs: Vec<SubEntry<E>>,
    /// Subscriptions that left with `unsubscribe()` while they still held
    /// events or ran their handler: shutdown waits for them and reports
    /// them. Pruned once idle, except after shutdown began.
    draining: Vec<Arc<Queue<E>>>,
    /// Publishes refused because the bus was shutting down or shut down.
    refused: u64,
    /// The last accepted events, when the topic retains any.
    retained: VecDeque<Arc<Published<E>>>,
    /// Idempotency keys seen within the topic's window.
    dedup: Dedup,
    /// The ring read by lossless subscriptions, while there are any.
    ring: Option<Arc<Ring<E>>>,
    ring_subs: usize,
    phase: Phase,
    next_seq: u64,
    published: u64,
    unsubscribed: u64,
    discarded_on_unsubscribe: u64,
    /// The last subscriptions that left, for their watch findings (a
    /// handler may still be finishing when its subscription leaves).
    retired: std::collections::VecDeque<Arc<Queue<E>>>,
    /// Publishers waiting for room, oldest first, with their wakers. Only
    /// the first looks for room (and is woken by the subscription that
    /// makes some); the others wait their turn, so room goes to publishers
    /// in the order they started waiting instead of to whoever wins a race.
    line: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    /// The subscription the first in line last found full: what a waiting
    /// publisher's timeout names.
    blocking: Option<Arc<Queue<E>>>,
}

/// How many departed subscriptions a topic keeps for their findings.
const RETIRED: usize = 64;

/// A registered topic at run time: its subscriptions and sequence counter.
pub(crate) struct TopicState<E> {
    pub(crate) config: TopicConfig,
    /// The bus it belongs to: whose handlers may still publish while it
    /// drains.
    bus: BusId,
    pub(crate) inner: Mutex<TopicInner<E>>,
    watch: WatchSlot,
    metrics: TopicMetrics,
}

impl<E: Event> TopicState<E> {
    pub(crate) fn new(config: TopicConfig, watch: WatchSlot, bus: BusId) -> Self {
        TopicState {
            config: config.clone(),
            bus,
            watch,
            metrics: TopicMetrics::new(E::TOPIC),
            inner: Mutex::new(TopicInner {
                subs: Vec::new(),
                draining: Vec::new(),
                refused: 0,
                retained: VecDeque::new(),
                dedup: Dedup::new(config.dedup_window()),
                ring: None,
                ring_subs: 0,
                phase: Phase::Open,
                next_seq: 1,
                published: 0,
                unsubscribed: 0,
                discarded_on_unsubscribe: 0,
                retired: std::collections::VecDeque::new(),
                line: VecDeque::new(),
                next_ticket: 0,
                blocking: None,
            }),
        }
    }

    /// One attempt to publish. With `cx`, a full `Block` subscription
    /// registers the caller to be woken when it has room.
    ///
    /// `turn` is the caller's place in the line of waiting publishers, for a
    /// publish that may wait (a `try_publish` passes `None` and never
    /// queues). A caller that has to wait joins the line; while others are
    /// ahead of it, it waits its turn without looking for room.
    fn try_enqueue(
        &self,
        mut cx: Option<&mut Context<'_>>,
        event: E,
        opts: &PublishOptions,
        mut turn: Option<&mut Option<u64>>,
    ) -> Result<PublishReceipt, NotNow<E>> {
        let key = match opts.key {
            None => None,
            Some(_) => match self.keyed(opts) {
                Ok(key) => key,
                Err((key, reason)) => {
                    return Err(NotNow::Refused(PublishError::InvalidKey {
                        topic: E::TOPIC,
                        key,
                        reason,
                        event,
                    }))
                }
            },
        };
        let key = key.as_ref();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.phase != Phase::Open && !self.may_publish(inner.phase) {
            inner.refused += 1;
            return Err(NotNow::Refused(PublishError::Closed {
                topic: E::TOPIC,
                event,
            }));
        }
        if !inner.line.is_empty() {
            if let (Some(turn), Some(cx)) = (turn.as_deref_mut(), cx.as_deref_mut()) {
                if let Some(full) = wait_in_line(inner, turn, cx) {
                    return Err(NotNow::Wait(event, full));
                }
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
        for entry in &mut inner.subs {
            let q = &entry.queue;
            let policy = q.info.policy;
            if !matches!(policy, Overflow::Block | Overflow::Fail) {
                continue;
            }
            let wait = match policy {
                Overflow::Block => cx.as_deref_mut(),
                _ => None,
            };
            let has_room = match &mut entry.ring {
                Some(r) => {
                    if r.room == 0 {
                        r.room = q.ring_room(tail, wait);
                    }
                    r.room > 0
                }
                None => q.has_room(wait),
            };
            if !has_room {
                if policy == Overflow::Fail {
                    return Err(NotNow::Refused(FullSub::of(q).refuse(event)));
                }
                blocked.get_or_insert_with(|| FullSub::of(q));
            }
        }
        if let Some(full) = blocked {
            if let (Some(turn), Some(cx)) = (turn, cx) {
                if turn.is_none() {
                    let ticket = inner.next_ticket;
                    inner.next_ticket += 1;
                    inner.line.push_back((ticket, cx.waker().clone()));
                    *turn = Some(ticket);
                }
                inner.blocking = Some(Arc::clone(&full.queue));
            }
            return Err(NotNow::Wait(event, full));
        }
        // The caller's turn is over: the next in line looks for room now.
        let next = match turn {
            Some(turn @ Some(_)) => leave_line(inner, turn),
            _ => None,
        };

        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.published += 1;
        self.metrics.published();
        let id = EventId::next();
        let meta = (key.is_some() || opts.origin.is_some()).then(|| meta(opts));
        let published = Arc::new(Published {
            event,
            id,
            seq,
            at: self.config.timestamp_clock().now(),
            meta,
        });
        if let (Some(key), Some(now)) = (key, now) {
            remember(&mut inner.dedup, key, id, seq, now);
        }
        let retain = self.config.retained();
        if retain > 0 {
            keep(&mut inner.retained, retain, &published);
        }
        let mut receipt = PublishReceipt {
            id,
            seq,
            enqueued: 0,
            evicted_oldest: 0,
            dropped_newest: 0,
            duplicate: None,
        };
        for entry in &mut inner.subs {
            if let Some(r) = &mut entry.ring {
                r.room = r.room.saturating_sub(1);
                receipt.enqueued += 1;
                continue;
            }
            match entry.queue.push(&published) {
                Push::Enqueued => receipt.enqueued += 1,
                Push::EvictedOldest => {
                    receipt.enqueued += 1;
                    receipt.evicted_oldest += 1;
                }
                Push::DroppedNewest => receipt.dropped_newest += 1,
                Push::Closed => {}
            }
        }
        // Last, so that the ring takes the publisher's own reference to the
        // event instead of another one (an atomic increment and decrement
        // fewer per publish).
        if inner.ring_subs > 0 {
            if let Some(ring) = &inner.ring {
                ring.write(published, inner.ring_subs);
            }
        }
        drop(guard);
        if let Some(next) = next {
            next.wake();
        }
        Ok(receipt)
    }

    pub(crate) fn try_publish(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        self.try_publish_with(event, &PublishOptions::PLAIN)
    }

    pub(crate) fn try_publish_with(
        &self,
        event: E,
        opts: &PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        let span = telemetry::publish_span(E::TOPIC);
        let result = telemetry::in_span(&span, || self.try_enqueue(None, event, opts, None))
            .map_err(|not_now| match not_now {
                NotNow::Refused(err) => err,
                NotNow::Wait(event, full) => full.refuse(event),
            });
        if let Ok(receipt) = &result {
            telemetry::record_receipt(&span, receipt);
        }
        result
    }

    pub(crate) async fn publish(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        self.publish_until(event, None, &PublishOptions::PLAIN)
            .await
    }

    pub(crate) async fn publish_timeout(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.publish_until(event, Some(timeout), &PublishOptions::PLAIN)
            .await
    }

    pub(crate) async fn publish_with(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.publish_until(event, options.timeout, &options).await
    }

    /// Publishes, waiting for room under `Block` at most `timeout` (forever
    /// when `None`). The event lives in this future until it is enqueued, so
    /// dropping the future enqueues nothing.
    async fn publish_until(
        &self,
        event: E,
        timeout: Option<Duration>,
        opts: &PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        // The timer starts at the first wait, so a publish that never waits
        // needs no timer (nor a runtime to drive one), and no clock reading.
        let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut waiting: Option<(Instant, FullSub<E>)> = None;
        let mut pending = Some(event);
        // Its place in the line; leaving it (done, timed out, or dropped)
        // hands the turn on.
        let mut turn = Turn {
            topic: self,
            ticket: None,
        };
        let span = telemetry::publish_span(E::TOPIC);
        let result = telemetry::instrument(
            poll_fn(|cx| {
                let event = pending
                    .take()
                    .expect("publish future polled after it completed");
                match self.try_enqueue(Some(cx), event, opts, Some(&mut turn.ticket)) {
                    Ok(receipt) => Poll::Ready(Ok(receipt)),
                    Err(NotNow::Refused(err)) => Poll::Ready(Err(err)),
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
            self.waited(since.elapsed(), &full.queue);
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

    /// Takes `ticket` out of the line and wakes whoever is first now.
    fn leave(&self, ticket: u64) {
        let next = {
            let mut inner = self.inner.lock();
            let mut turn = Some(ticket);
            leave_line(&mut inner, &mut turn)
        };
        if let Some(next) = next {
            next.wake();
        }
    }

    /// A publish waited `took` for room in `queue`.
    fn waited(&self, took: Duration, queue: &Queue<E>) {
        self.metrics.waited(took);
        if queue
            .watch
            .publish_wait_threshold()
            .is_some_and(|threshold| took > threshold)
        {
            queue.finding(FindingKind::PublisherBlocked, took);
        }
    }

    /// Adds a subscription, under the topic lock. A lossless subscription
    /// whose capacity fits reads the topic's ring; others get their own
    /// queue. All or nothing: everything that can refuse it is checked
    /// before anything shared changes.
    pub(crate) fn attach(&self, request: SubRequest) -> Result<Arc<Queue<E>>, SubscribeError> {
        let topic = E::TOPIC;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.phase != Phase::Open {
            return Err(SubscribeError::Closed { topic });
        }
        inner.prune_draining();
        let name = inner.unique_name(topic, request.name)?;
        // Under the lock every publish takes: the retained events copied
        // here and the live ones from `next_seq` on meet without a gap.
        let (replay, start) = replay::plan(
            request.start,
            &inner.retained,
            self.config.retained(),
            inner.next_seq,
        )?;
        let info = crate::queue::SubInfo {
            id: crate::subscribe::SubscriptionId::next(),
            name,
            topic,
            kind: request.kind,
            policy: request.policy,
            capacity: request.capacity,
        };
        let lossless = matches!(info.policy, Overflow::Block | Overflow::Fail);
        let ring = if lossless && info.capacity <= crate::queue::MAX_RING {
            match &inner.ring {
                Some(ring) if ring.size() >= info.capacity => Some(Arc::clone(ring)),
                Some(_) => None,
                None => Some(Arc::new(Ring::new(
                    info.capacity.max(self.config.default_capacity()),
                ))),
            }
        } else {
            None
        };
        let setup = QueueSetup {
            consumers: request.consumers,
            breaker: request.breaker,
            replay,
            start,
        };
        let capacity = info.capacity;
        let queue = Arc::new(Queue::new(
            info,
            watch::current(&self.watch),
            setup,
            ring.as_ref().map(|ring| (Arc::clone(ring), inner.next_seq)),
        ));
        // Nothing below can fail.
        let room = ring.map(|ring| {
            inner.ring.get_or_insert(ring);
            inner.ring_subs += 1;
            RingRoom { room: capacity }
        });
        inner.subs.push(SubEntry {
            queue: Arc::clone(&queue),
            ring: room,
        });
        self.metrics.subscriptions(inner.subs.len());
        Ok(queue)
    }

    /// Retained events with sequence numbers in `range`.
    pub(crate) fn replay(&self, range: impl RangeBounds<u64>) -> Replayed<E> {
        let inner = self.inner.lock();
        replay::fetch(&inner.retained, inner.next_seq, range)
    }

    /// Removes a subscription; with `discard`, what it still holds is dropped
    /// and counted. A subscription that leaves while it still holds events
    /// or runs its handler goes on the topic's draining list, where shutdown
    /// finds it.
    pub(crate) fn detach(&self, queue: &Arc<Queue<E>>, discard: bool) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let tail = inner.next_seq;
        let position = inner
            .subs
            .iter()
            .position(|e| e.queue.info.id == queue.info.id);
        let view = position.and_then(|i| inner.subs[i].view(tail));
        // After shutdown the subscription stays listed, so that the shutdown
        // report shows it; nothing is published to it any more anyway.
        let leaving = inner.phase != Phase::Closed && position.is_some();
        if leaving {
            if let Some(i) = position {
                let entry = inner.subs.remove(i);
                inner.unsubscribed += 1;
                if inner.retired.len() == RETIRED {
                    inner.retired.pop_front();
                }
                inner.retired.push_back(Arc::clone(&entry.queue));
                self.metrics.subscriptions(inner.subs.len());
                if entry.ring.is_some() {
                    inner.ring_subs -= 1;
                    if inner.ring_subs == 0 {
                        // Nobody reads the ring: let go of the events it holds.
                        inner.ring = None;
                    }
                }
            }
        }
        // Closed under the topic lock: no publish sees the queue half gone,
        // and the ring cannot move on before a leaving reader has copied
        // what it still has to read.
        inner.discarded_on_unsubscribe += queue.close(discard, leaving, view);
        // Discarding or not, a handler run may still be going: it counts.
        if leaving && !queue.is_idle() {
            inner.draining.push(Arc::clone(queue));
        }
        inner.prune_draining();
    }

    /// One subscription's numbers, as exact as the topic's.
    pub(crate) fn sub_stats(&self, queue: &Queue<E>) -> SubscriptionStats {
        let inner = self.inner.lock();
        let view = inner
            .subs
            .iter()
            .find(|e| e.queue.info.id == queue.info.id)
            .and_then(|e| e.view(inner.next_seq));
        queue.stats(view)
    }
}

impl<E> TopicInner<E> {
    /// Forgets unsubscribed subscriptions that finished draining, while the
    /// bus runs; once it shuts down they stay, for the report.
    fn prune_draining(&mut self) {
        if self.phase == Phase::Open && !self.draining.is_empty() {
            self.draining.retain(|q| !q.is_idle());
        }
    }

    /// Whether a listed or draining subscription has this name.
    fn name_taken(&self, name: &str) -> bool {
        self.subs.iter().any(|e| &*e.queue.info.name == name)
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
            subscriptions: inner
                .subs
                .iter()
                .map(|e| e.queue.stats(e.view(inner.next_seq)))
                .collect(),
            draining: inner.draining.iter().map(|q| q.stats(None)).collect(),
        }
    }

    fn findings(&self, out: &mut Vec<Finding>) {
        let inner = self.inner.lock();
        for queue in &inner.retired {
            queue.findings(out);
        }
        for entry in &inner.subs {
            entry.queue.findings(out);
        }
    }

    fn codec(&self) -> Option<Codec> {
        E::__codec()
    }

    fn subscribe_any(
        &self,
        bus: &crate::Bus,
        options: &AnyOptions,
    ) -> Result<AnyStream, SubscribeError> {
        let sub = options.apply(bus.subscribe::<E>())?;
        Ok(Box::new(Erased(sub)))
    }

    fn publish_dyn(
        &self,
        event: DynEvent,
        options: PublishOptions,
    ) -> futures::future::BoxFuture<'_, Result<PublishReceipt, PublishError<DynEvent>>> {
        Box::pin(async move {
            match event.downcast::<E>() {
                Ok(event) => self
                    .publish_with(event, options)
                    .await
                    .map_err(|err| err.map_event(DynEvent::new)),
                Err(event) => Err(PublishError::UnknownTopic {
                    topic: event.topic,
                    event,
                }),
            }
        })
    }

    fn begin_drain(&self) {
        let mut wake = Vec::new();
        let queues: Vec<_> = {
            let mut inner = self.inner.lock();
            if inner.phase == Phase::Open {
                inner.phase = Phase::Draining;
            }
            // Everyone waiting looks again: publishers from outside the
            // bus's handlers leave with `Closed`, handlers wait on.
            wake.extend(inner.line.iter().map(|(_, waker)| waker.clone()));
            inner.subs.iter().map(|e| Arc::clone(&e.queue)).collect()
        };
        wake.into_iter().for_each(Waker::wake);
        for queue in queues {
            queue.wake_publishers();
        }
    }

    fn poll_quiet(&self, cx: &mut Context<'_>, caller: Option<SubscriptionId>) -> Option<u64> {
        let inner = self.inner.lock();
        let tail = inner.next_seq;
        let own = |q: &Queue<E>| usize::from(caller == Some(q.info.id));
        for e in &inner.subs {
            if !e.queue.poll_quiet(e.view(tail), own(&e.queue), cx) {
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
        let mut inner = self.inner.lock();
        inner.phase = Phase::Closed;
        let tail = inner.next_seq;
        for e in &inner.subs {
            e.queue.close(false, false, e.view(tail));
        }
    }

    fn cut_off(&self, caller: Option<SubscriptionId>) -> Vec<tokio::task::JoinHandle<()>> {
        let queues: Vec<Arc<Queue<E>>> = {
            let mut inner = self.inner.lock();
            inner.phase = Phase::Closed;
            let tail = inner.next_seq;
            for e in &inner.subs {
                e.queue.close(false, false, e.view(tail));
            }
            inner
                .subs
                .iter()
                .map(|e| Arc::clone(&e.queue))
                .chain(inner.draining.iter().cloned())
                .collect()
        };
        let mut tasks = Vec::new();
        for queue in queues {
            let stopped = ErasedQueue::cut_off(&*queue);
            // The caller's own task cannot wait for itself.
            if caller != Some(queue.info.id) {
                tasks.extend(stopped);
            }
        }
        tasks
    }
}

/// A typed handle for publishing one event type, resolved once: no allow-list
/// look-up per publish. Cheap to clone; get one with
/// [`Bus::publisher`](crate::Bus::publisher).
///
/// ```
/// # use tidings::{Bus, Event};
/// # #[derive(Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut sub = bus.subscribe::<OrderCreated>().stream()?;
/// let orders = bus.publisher::<OrderCreated>()?;
/// let receipt = orders.publish(OrderCreated { id: 7 }).await?;
/// assert_eq!(receipt.enqueued, 1);
/// assert_eq!(sub.recv().await.map(|e| e.id), Some(7));
/// # Ok(()) }
/// ```
pub struct Publisher<E> {
    pub(crate) topic: Arc<TopicState<E>>,
}

impl<E: Event> Publisher<E> {
    /// Publishes `event` to every subscription of its topic, waiting for room
    /// in full [`Overflow::Block`] subscriptions.
    ///
    /// All or nothing: the event is enqueued to every subscription or to none.
    /// Dropping the returned future before it completes enqueues nothing.
    ///
    /// # Errors
    /// [`PublishError::Closed`] after shutdown began; [`PublishError::Full`]
    /// when an [`Overflow::Fail`] subscription is full. The event is handed
    /// back in both.
    pub async fn publish(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.publish(event).await
    }

    /// Publishes `event` without ever waiting.
    ///
    /// # Errors
    /// As [`publish`](Publisher::publish), and [`PublishError::Full`] where
    /// `publish` would wait.
    pub fn try_publish(&self, event: E) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.try_publish(event)
    }

    /// Publishes `event`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`publish`](Publisher::publish), and [`PublishError::Timeout`] when
    /// no room appeared in time; nothing was enqueued then.
    ///
    /// # Panics
    /// Outside a tokio runtime with the time driver enabled, if it has to wait.
    pub async fn publish_timeout(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.publish_timeout(event, timeout).await
    }

    /// Publishes `event` with [`PublishOptions`]: an idempotency key, a
    /// timeout.
    ///
    /// # Errors
    /// As [`publish`](Publisher::publish), and [`PublishError::Timeout`] with
    /// a timeout.
    pub async fn publish_with(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.publish_with(event, options).await
    }

    /// Publishes `event` with an idempotency key, without ever waiting (the
    /// options' timeout does not apply).
    ///
    /// # Errors
    /// As [`try_publish`](Publisher::try_publish).
    pub fn try_publish_with(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError<E>> {
        self.topic.try_publish_with(event, &options)
    }

    /// The topic this handle publishes to.
    pub fn topic(&self) -> &'static str {
        E::TOPIC
    }

    /// Statistics of the current subscriptions of this topic.
    pub fn subscriptions(&self) -> Vec<SubscriptionStats> {
        self.topic.stats().subscriptions
    }
}

impl<E> Clone for Publisher<E> {
    fn clone(&self) -> Self {
        Publisher {
            topic: Arc::clone(&self.topic),
        }
    }
}

impl<E: Event> fmt::Debug for Publisher<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &E::TOPIC)
            .finish()
    }
}
