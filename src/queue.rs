//! The bounded queue of one subscription and the overflow policies.
//!
//! Every queue is a `VecDeque` behind a `parking_lot` mutex, with three lists
//! of wakers: consumers waiting for an event, publishers waiting for room
//! (under [`Overflow::Block`]) and shutdown waiting for the queue to drain.
//! No atomics carry state between threads here: every decision is made under
//! the queue's lock, and publishers of one topic additionally hold the topic's
//! lock (see `publish.rs`), so that an event is enqueued to all of a topic's
//! subscriptions, or to none, before the next event is considered.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::error::TryRecvError;
use crate::event::{Envelope, Published};
use crate::stats::SubscriptionStats;
use crate::subscribe::{SubscriberKind, SubscriptionId};

/// What a subscription does when its queue is full and another event arrives.
///
/// | policy | the publisher | this subscription | use it for |
/// |---|---|---|---|
/// | `Block` (default) | waits for room (`try_publish` fails instead) | gets every event | work that must not be lost: payments, audit |
/// | `DropOldest` | never waits | loses its oldest queued event | latest-state feeds: prices, positions, UI refresh |
/// | `DropNewest` | never waits | loses the new event | samples, metrics, best-effort notifications |
/// | `Fail` | gets [`PublishError::Full`](crate::error::PublishError::Full); nothing is enqueued anywhere | gets every accepted event | callers that must react to overload themselves |
///
/// Losses are never silent: each [`Envelope`] says how many events its
/// subscription missed just before it ([`Envelope::missed`]), and the
/// subscription's [stats](crate::SubscriptionStats) count them.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Overflow {
    /// Publishers wait until the subscription has room. Lossless.
    #[default]
    Block,
    /// The oldest queued event is evicted to make room for the new one.
    DropOldest,
    /// The new event is discarded for this subscription.
    DropNewest,
    /// The publish fails with [`PublishError::Full`](crate::error::PublishError::Full)
    /// and nothing is enqueued to any subscription.
    Fail,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop-oldest",
            Overflow::DropNewest => "drop-newest",
            Overflow::Fail => "fail",
        })
    }
}

/// What was decided about one event for one subscription.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Enqueued,
    /// Enqueued after evicting the oldest queued event.
    EvictedOldest,
    /// Not enqueued: the queue was full under `DropNewest`.
    DroppedNewest,
    /// Not enqueued: the subscription is closing.
    Closed,
}

/// How a handler run ended.
pub(crate) enum Outcome {
    Ok,
    Failed(String),
    Panicked(String),
}

/// The fixed facts of a subscription.
#[derive(Debug)]
pub(crate) struct SubInfo {
    pub(crate) id: SubscriptionId,
    pub(crate) name: Arc<str>,
    pub(crate) topic: &'static str,
    pub(crate) kind: SubscriberKind,
    pub(crate) policy: Overflow,
    pub(crate) capacity: usize,
}

struct Slot<E> {
    published: Arc<Published<E>>,
    /// Events this subscription lost just before this one.
    missed_before: u64,
}

#[derive(Default)]
struct Counters {
    accepted: u64,
    delivered: u64,
    dropped_oldest: u64,
    dropped_newest: u64,
    discarded: u64,
    cut_off: u64,
    high_water: usize,
}

struct State<E> {
    buf: VecDeque<Slot<E>>,
    closed: bool,
    /// Losses after the last queued event, not yet attached to an envelope.
    pending_missed: u64,
    /// Handler runs started and not yet finished.
    in_flight: usize,
    counters: Counters,
    /// One slot per consumer (stream: 1, handlers: their concurrency).
    consumers: Vec<Option<Waker>>,
    publishers: Vec<Waker>,
    idle: Vec<Waker>,
}

impl<E> State<E> {
    fn is_idle(&self) -> bool {
        self.closed && self.buf.is_empty() && self.in_flight == 0
    }

    /// Empties the queue, moving the in-band loss counts of what it held to
    /// `pending_missed` so that none of them goes uncounted.
    fn clear(&mut self) -> u64 {
        let n = self.buf.len() as u64;
        for slot in self.buf.drain(..) {
            self.pending_missed += slot.missed_before;
        }
        n
    }
}

/// Wakers taken out under the lock, woken after it is released. Taking a
/// list moves its buffer instead of copying it; on the hot path (nobody
/// waiting) everything here is a no-op.
#[derive(Default)]
struct Wakeups(Vec<Waker>);

impl Wakeups {
    #[inline]
    fn push(&mut self, waker: Waker) {
        self.0.push(waker);
    }

    #[inline]
    fn take_all(&mut self, list: &mut Vec<Waker>) {
        if list.is_empty() {
            return;
        }
        if self.0.is_empty() {
            std::mem::swap(&mut self.0, list);
        } else {
            self.0.append(list);
        }
    }

    #[inline]
    fn wake(self) {
        if !self.0.is_empty() {
            self.0.into_iter().for_each(Waker::wake);
        }
    }
}

fn register(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

/// The queue of one subscription.
pub(crate) struct Queue<E> {
    pub(crate) info: SubInfo,
    state: Mutex<State<E>>,
    handled: AtomicU64,
    failures: AtomicU64,
    panics: AtomicU64,
    last_error: Mutex<Option<String>>,
    aborts: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl<E> Queue<E> {
    pub(crate) fn new(info: SubInfo, consumers: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                buf: VecDeque::with_capacity(info.capacity.min(1024)),
                closed: false,
                pending_missed: 0,
                in_flight: 0,
                counters: Counters::default(),
                consumers: vec![None; consumers],
                publishers: Vec::new(),
                idle: Vec::new(),
            }),
            info,
            handled: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            last_error: Mutex::new(None),
            aborts: Mutex::new(Vec::new()),
        }
    }

    /// Publisher side: is there room for one more event? A closed queue
    /// takes nothing, so it never makes a publisher wait. With `cx`, a
    /// publisher that finds no room is woken when room appears.
    #[inline]
    pub(crate) fn has_room(&self, cx: Option<&mut Context<'_>>) -> bool {
        let mut s = self.state.lock();
        if s.closed || s.buf.len() < self.info.capacity {
            return true;
        }
        if let Some(cx) = cx {
            register(&mut s.publishers, cx.waker());
        }
        false
    }

    /// Publisher side: offers one accepted event to this subscription.
    /// Called with the topic lock held, after `has_room` said yes for every
    /// `Block` and `Fail` subscription; only consumers touch the queue in
    /// between, and they only make room.
    pub(crate) fn push(&self, published: &Arc<Published<E>>) -> Push {
        let mut s = self.state.lock();
        if s.closed {
            return Push::Closed;
        }
        s.counters.accepted += 1;
        let mut outcome = Push::Enqueued;
        if s.buf.len() >= self.info.capacity {
            match self.info.policy {
                Overflow::DropNewest => {
                    s.counters.dropped_newest += 1;
                    s.pending_missed += 1;
                    return Push::DroppedNewest;
                }
                Overflow::DropOldest => {
                    if let Some(old) = s.buf.pop_front() {
                        s.counters.dropped_oldest += 1;
                        let carry = old.missed_before + 1;
                        match s.buf.front_mut() {
                            Some(next) => next.missed_before += carry,
                            None => s.pending_missed += carry,
                        }
                    }
                    outcome = Push::EvictedOldest;
                }
                // Room was checked under the topic lock and can only have
                // grown since; should it ever not have, the event is kept
                // rather than lost.
                Overflow::Block | Overflow::Fail => {}
            }
        }
        let missed_before = std::mem::take(&mut s.pending_missed);
        s.buf.push_back(Slot {
            published: Arc::clone(published),
            missed_before,
        });
        s.counters.high_water = s.counters.high_water.max(s.buf.len());
        let waker = s.consumers.iter_mut().find_map(Option::take);
        drop(s);
        if let Some(waker) = waker {
            waker.wake();
        }
        outcome
    }

    fn pop_locked(&self, s: &mut State<E>, wakeups: &mut Wakeups) -> Option<Envelope<E>> {
        let slot = s.buf.pop_front()?;
        s.counters.delivered += 1;
        if self.info.kind != SubscriberKind::Stream {
            s.in_flight += 1;
        }
        wakeups.take_all(&mut s.publishers);
        if s.is_idle() {
            wakeups.take_all(&mut s.idle);
        }
        Some(Envelope {
            inner: slot.published,
            missed: slot.missed_before,
        })
    }

    /// Consumer side: the next event, `None` once closed and drained.
    pub(crate) fn poll_pop(
        &self,
        cx: &mut Context<'_>,
        consumer: usize,
    ) -> Poll<Option<Envelope<E>>> {
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        if let Some(env) = self.pop_locked(&mut s, &mut wakeups) {
            drop(s);
            wakeups.wake();
            return Poll::Ready(Some(env));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        match &mut s.consumers[consumer] {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Consumer side, never waiting.
    pub(crate) fn try_pop(&self) -> Result<Envelope<E>, TryRecvError> {
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        match self.pop_locked(&mut s, &mut wakeups) {
            Some(env) => {
                drop(s);
                wakeups.wake();
                Ok(env)
            }
            None if s.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Handler side: one handler run ended.
    pub(crate) fn finish(&self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => {
                self.handled.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(msg) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(msg);
            }
            Outcome::Panicked(msg) => {
                self.panics.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(format!("panic: {msg}"));
            }
        }
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        s.in_flight -= 1;
        if s.is_idle() {
            wakeups.take_all(&mut s.idle);
        }
        drop(s);
        wakeups.wake();
    }

    /// Closes the queue: it takes no new event and its consumers end once it
    /// is empty. With `discard`, what it still holds is dropped and counted as
    /// discarded. Returns how many events were discarded.
    pub(crate) fn close(&self, discard: bool) -> u64 {
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        s.closed = true;
        let discarded = if discard { s.clear() } else { 0 };
        s.counters.discarded += discarded;
        for w in s.consumers.iter_mut().filter_map(Option::take) {
            wakeups.push(w);
        }
        wakeups.take_all(&mut s.publishers);
        if s.is_idle() {
            wakeups.take_all(&mut s.idle);
        }
        drop(s);
        wakeups.wake();
        discarded
    }

    pub(crate) fn add_abort_handle(&self, handle: tokio::task::AbortHandle) {
        self.aborts.lock().push(handle);
    }

    pub(crate) fn stats(&self) -> SubscriptionStats {
        let s = self.state.lock();
        let c = &s.counters;
        SubscriptionStats {
            id: self.info.id,
            name: self.info.name.to_string(),
            topic: self.info.topic,
            kind: self.info.kind,
            policy: self.info.policy,
            capacity: self.info.capacity,
            closed: s.closed,
            queue_depth: s.buf.len(),
            high_water: c.high_water,
            accepted: c.accepted,
            delivered: c.delivered,
            dropped_oldest: c.dropped_oldest,
            dropped_newest: c.dropped_newest,
            discarded: c.discarded,
            cut_off: c.cut_off,
            missed_unreported: s.pending_missed,
            in_flight: s.in_flight,
            handled: self.handled.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// What shutdown needs of a queue without knowing its event type.
pub(crate) trait ErasedQueue: Send + Sync {
    /// Ready once the queue is closed, empty and no handler runs.
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()>;
    /// The deadline passed: drop what is queued (counted as cut off) and stop
    /// async handler tasks.
    fn cut_off(&self);
    fn stats(&self) -> SubscriptionStats;
}

impl<E: Send + Sync + 'static> ErasedQueue for Queue<E> {
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock();
        if s.is_idle() {
            return Poll::Ready(());
        }
        register(&mut s.idle, cx.waker());
        Poll::Pending
    }

    fn cut_off(&self) {
        {
            let mut s = self.state.lock();
            s.closed = true;
            let n = s.clear();
            s.counters.cut_off += n;
        }
        for handle in self.aborts.lock().drain(..) {
            handle.abort();
        }
    }

    fn stats(&self) -> SubscriptionStats {
        Queue::stats(self)
    }
}
