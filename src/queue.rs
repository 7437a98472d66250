//! The bounded queue of one subscription and the overflow policies.
//!
//! A subscription reads its events from one of two places:
//!
//! - **the topic's ring** (lossless subscriptions, `Block` and `Fail`, whose
//!   capacity fits the ring): the publisher writes each event once into a
//!   slot of a ring shared by the topic, and each subscription keeps its own
//!   cursor. The publisher never touches the subscription's lock on the hot
//!   path: it keeps a count of the room it last saw and looks again only when
//!   that runs out. Slots cannot be overwritten before every ring reader has
//!   passed them, because a full lossless subscription stops (or refuses)
//!   the publish first.
//! - **its own `VecDeque`** (the lossy policies, which evict or skip per
//!   subscription, and lossless subscriptions larger than the ring).
//!
//! Each subscription's state sits behind one `parking_lot` mutex, with lists
//! of wakers for consumers waiting for an event, publishers waiting for room
//! (under [`Overflow::Block`]) and shutdown waiting for the queue to drain.
//! No atomics carry state between threads: every decision is made under a
//! lock, and publishers of one topic additionally hold the topic's lock (see
//! `publish.rs`), so that an event is enqueued to all of a topic's
//! subscriptions, or to none, before the next event is considered.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::error::TryRecvError;
use crate::event::{Envelope, Published};
use crate::retry::Breaker;
use crate::stats::SubscriptionStats;
use crate::subscribe::{SubscriberKind, SubscriptionId};
use crate::telemetry::{self, RunOutcome, SubMetrics};
use crate::watch::{Finding, FindingKind, Watch, Watcher};

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
    /// An async handler did not finish within the subscription's timeout
    /// and was cancelled.
    TimedOut(std::time::Duration),
}

/// How an event's handling ended, after all its attempts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Final {
    Handled,
    /// Given up; `heard` when its dead letter reached a subscription (or
    /// was retained).
    DeadLettered {
        heard: bool,
    },
}

/// How a queue is set up, beyond its fixed facts.
pub(crate) struct QueueSetup<E> {
    /// Runners taking from it (stream: 1, handlers: their concurrency).
    pub(crate) consumers: usize,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Retained events it asked for, delivered before live ones.
    pub(crate) replay: VecDeque<Arc<Published<E>>>,
    pub(crate) start: crate::replay::Start,
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

/// The largest ring a topic gets; lossless subscriptions with a larger
/// capacity keep their own queue.
pub(crate) const MAX_RING: usize = 1 << 16;

/// One slot of a ring: the event last written there, and how many ring
/// readers have still to take it. The last one lets go of it, so the ring
/// keeps an event no longer than a queue of its own would.
struct RingSlot<E> {
    seq: u64,
    event: Option<Arc<Published<E>>>,
    readers: usize,
}

/// The ring of a topic, shared by its lossless subscriptions: slot
/// `seq % size` holds event `seq` until its readers have taken it.
pub(crate) struct Ring<E> {
    slots: Box<[Mutex<RingSlot<E>>]>,
    mask: u64,
    /// One past the last sequence number written. Read by consumers only to
    /// sample their queue depth for the high-water mark: it orders nothing.
    tail: AtomicU64,
    /// Ring readers waiting for the next event.
    waiters: Mutex<Vec<Waker>>,
}

impl<E> Ring<E> {
    /// A ring of at least `capacity` slots (a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let size = capacity.clamp(1, MAX_RING).next_power_of_two();
        Ring {
            slots: (0..size)
                .map(|_| {
                    Mutex::new(RingSlot {
                        seq: u64::MAX,
                        event: None,
                        readers: 0,
                    })
                })
                .collect(),
            mask: size as u64 - 1,
            tail: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    /// Publisher side, under the topic lock: stores the event for `readers`
    /// ring readers and wakes those waiting for it. The slot is free: its
    /// previous event was taken by all its readers, or the publish would have
    /// waited.
    pub(crate) fn write(&self, published: Arc<Published<E>>, readers: usize) {
        let seq = published.seq;
        let mut slot = self.slots[(seq & self.mask) as usize].lock();
        debug_assert_eq!(
            slot.readers, 0,
            "ring slot overwritten before all its readers took it"
        );
        *slot = RingSlot {
            seq,
            event: Some(published),
            readers,
        };
        drop(slot);
        self.tail.store(seq + 1, Ordering::Relaxed);
        self.wake_all();
    }

    /// Takes event `seq` for one reader, if it has been written. Each reader
    /// takes (or `release`s) each of its events exactly once.
    fn read(&self, seq: u64) -> Option<Arc<Published<E>>> {
        let mut slot = self.slots[(seq & self.mask) as usize].lock();
        if slot.seq != seq {
            return None;
        }
        if slot.readers <= 1 {
            slot.readers = 0;
            slot.event.take()
        } else {
            slot.readers -= 1;
            slot.event.clone()
        }
    }

    /// One reader gives up event `seq` without taking it.
    fn release(&self, seq: u64) {
        drop(self.read(seq));
    }

    /// Events queued for a reader at `next` (closed at `end`), sampled from
    /// a tail that may lag: never more than the real depth.
    fn depth(&self, next: u64, end: u64) -> usize {
        self.tail
            .load(Ordering::Relaxed)
            .min(end)
            .saturating_sub(next) as usize
    }

    /// Wakes every waiting reader. The list is swapped with a spare buffer
    /// kept by this thread, so that waking allocates nothing: on the hot
    /// path one reader registers and is woken per event, and a fresh list
    /// each time was a `malloc`/`free` pair per event.
    fn wake_all(&self) {
        thread_local! {
            static SPARE: std::cell::Cell<Vec<Waker>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut waiters = self.waiters.lock();
        if waiters.is_empty() {
            return;
        }
        let mut batch = SPARE.with(|spare| spare.take());
        std::mem::swap(&mut *waiters, &mut batch);
        drop(waiters);
        batch.drain(..).for_each(Waker::wake);
        SPARE.with(|spare| spare.set(batch));
    }
}

/// Where a subscription's events wait.
enum Buf<E> {
    Own(VecDeque<Slot<E>>),
    Ring {
        ring: Arc<Ring<E>>,
        /// The first sequence number this subscription accepted.
        start: u64,
        /// The next sequence number to read.
        next: u64,
        /// One past the last sequence number it accepted, once closed;
        /// `u64::MAX` while it takes events.
        end: u64,
    },
}

/// What the publisher side knows of a ring subscription: the topic's next
/// sequence number.
#[derive(Copy, Clone, Debug)]
pub(crate) struct RingView {
    pub(crate) tail: u64,
}

/// A subscription's numbers. All of them live under its lock and change in
/// the same critical sections as the queue and `in_flight`, so that every
/// snapshot, taken while handlers run or not, satisfies the identities the
/// stats promise (`delivered == handled + dead_lettered + in_flight`, …).
#[derive(Default)]
struct Counters {
    accepted: u64,
    delivered: u64,
    dropped_oldest: u64,
    dropped_newest: u64,
    discarded: u64,
    cut_off: u64,
    high_water: usize,
    /// Retained events queued for it when it subscribed (counted in
    /// `accepted`).
    replayed: u64,
    handled: u64,
    failures: u64,
    panics: u64,
    timeouts: u64,
    retried: u64,
    dead_lettered: u64,
    dead_letters_unheard: u64,
    runner_failures: u64,
    last_error: Option<String>,
}

struct State<E> {
    /// Retained events it asked for, read before `buf`.
    replay: VecDeque<Arc<Published<E>>>,
    buf: Buf<E>,
    closed: bool,
    /// Losses after the last queued event, not yet attached to an envelope.
    pending_missed: u64,
    /// Handler runs started and not yet finished.
    in_flight: usize,
    /// The shutdown deadline cut it off: runners stop.
    cut: bool,
    counters: Counters,
    /// One slot per consumer (stream: 1, handlers: their concurrency).
    consumers: Vec<Option<Waker>>,
    publishers: Vec<Waker>,
    idle: Vec<Waker>,
}

impl<E> State<E> {
    /// Whether nothing is left to read. Exact for a closed subscription; for
    /// an open ring subscription only the slot itself can tell.
    fn drained(&self) -> bool {
        if !self.replay.is_empty() {
            return false;
        }
        match &self.buf {
            Buf::Own(buf) => buf.is_empty(),
            Buf::Ring { next, end, .. } => next >= end,
        }
    }

    /// The queue depth after a take: exact for an own queue, sampled from
    /// the ring's tail for a ring reader.
    fn depth_hint(&self) -> usize {
        self.replay.len()
            + match &self.buf {
                Buf::Own(buf) => buf.len(),
                Buf::Ring {
                    ring, next, end, ..
                } => ring.depth(*next, *end),
            }
    }

    fn is_idle(&self) -> bool {
        self.closed && self.drained() && self.in_flight == 0
    }

    /// Whether nothing may be queued and no handler runs: exact for a queue
    /// of its own and a closed ring subscription; an open ring reader's
    /// sampled depth errs low, so this may say yes too early, never too
    /// late. Used to wake shutdown and `unsubscribe`, which then look
    /// exactly.
    fn maybe_quiet(&self) -> bool {
        self.in_flight == 0 && self.depth_hint() == 0
    }

    /// Whether nothing is queued and at most `own_runs` handler runs are
    /// going; `view` (the topic's next sequence number) makes it exact for
    /// an open ring subscription.
    fn is_quiet(&self, view: Option<RingView>, own_runs: usize) -> bool {
        if self.in_flight > own_runs || !self.replay.is_empty() {
            return false;
        }
        match &self.buf {
            Buf::Own(buf) => buf.is_empty(),
            Buf::Ring { next, end, .. } => {
                let end = match view {
                    Some(view) => view.tail.min(*end),
                    None => *end,
                };
                *next >= end
            }
        }
    }

    /// Wakes shutdown and `unsubscribe` if they may have something to see.
    #[inline]
    fn wake_idle(&mut self, wakeups: &mut Wakeups) {
        if !self.idle.is_empty() && (self.is_idle() || self.maybe_quiet()) {
            wakeups.take_all(&mut self.idle);
        }
    }

    /// Empties the queue, moving the in-band loss counts of what it held to
    /// `pending_missed` so that none of them goes uncounted. A ring
    /// subscription must be closed first (its `end` set).
    fn clear(&mut self) -> u64 {
        let replay = self.replay.len() as u64;
        self.replay.clear();
        replay
            + match &mut self.buf {
                Buf::Own(buf) => {
                    let n = buf.len() as u64;
                    for slot in buf.drain(..) {
                        self.pending_missed += slot.missed_before;
                    }
                    n
                }
                Buf::Ring {
                    ring, next, end, ..
                } => {
                    if *end == u64::MAX {
                        return replay; // still open: nothing in the ring is its own to clear
                    }
                    let n = end.saturating_sub(*next);
                    for seq in *next..*end {
                        ring.release(seq);
                    }
                    *next = (*next).max(*end);
                    n
                }
            }
    }

    /// Takes the next event, if there is one to take now.
    fn take(&mut self) -> Option<Slot<E>> {
        if let Some(published) = self.replay.pop_front() {
            return Some(Slot {
                published,
                missed_before: 0,
            });
        }
        match &mut self.buf {
            Buf::Own(buf) => buf.pop_front(),
            Buf::Ring {
                ring, next, end, ..
            } => {
                if next >= end {
                    return None;
                }
                let published = ring.read(*next)?;
                // The depth just before this take, sampled.
                let depth = ring.depth(*next, *end);
                self.counters.high_water = self.counters.high_water.max(depth);
                *next += 1;
                Some(Slot {
                    published,
                    missed_before: 0,
                })
            }
        }
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
    pub(crate) watch: Arc<Watch>,
    watcher: Watcher,
    metrics: SubMetrics,
    /// When drops were last reported, and how many since.
    drop_report: Mutex<(Option<std::time::Instant>, u64)>,
    /// The longest poll of an async handler, in nanoseconds (a statistic).
    worst_poll_ns: AtomicU64,
    state: Mutex<State<E>>,
    /// Signalled when the shutdown deadline cuts the queue off, to end the
    /// waits of sync runners (retry delays, an open breaker) at once.
    cut_signal: parking_lot::Condvar,
    /// Whether an unheard dead letter was logged (once per subscription).
    unheard_warned: std::sync::atomic::AtomicBool,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Where a subscription that asked for retained events started.
    pub(crate) start: crate::replay::Start,
    /// The tasks of an async handler's runners, to stop at a deadline.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<E> Queue<E> {
    /// A queue of its own, or, with `ring` (the topic's ring and its next
    /// sequence number), a cursor into the topic's ring.
    pub(crate) fn new(
        info: SubInfo,
        watch: Arc<Watch>,
        setup: QueueSetup<E>,
        ring: Option<(Arc<Ring<E>>, u64)>,
    ) -> Self {
        let QueueSetup {
            consumers,
            breaker,
            replay,
            start,
        } = setup;
        let buf = match ring {
            Some((ring, tail)) => Buf::Ring {
                ring,
                start: tail,
                next: tail,
                end: u64::MAX,
            },
            None => Buf::Own(VecDeque::with_capacity(info.capacity.min(1024))),
        };
        let replayed = replay.len() as u64;
        let own = matches!(buf, Buf::Own(_));
        Queue {
            state: Mutex::new(State {
                replay,
                buf,
                closed: false,
                pending_missed: 0,
                in_flight: 0,
                cut: false,
                counters: Counters {
                    replayed,
                    // An own queue counts what it accepts as it goes; a ring
                    // reader's count is worked out from the ring, plus this.
                    accepted: if own { replayed } else { 0 },
                    ..Counters::default()
                },
                consumers: vec![None; consumers],
                publishers: Vec::new(),
                idle: Vec::new(),
            }),
            metrics: SubMetrics::new(&info),
            info,
            watch,
            watcher: Watcher::default(),
            drop_report: Mutex::new((None, 0)),
            worst_poll_ns: AtomicU64::new(0),
            cut_signal: parking_lot::Condvar::new(),
            unheard_warned: std::sync::atomic::AtomicBool::new(false),
            breaker,
            start,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Publisher side, own queue: is there room for one more event? A closed
    /// queue takes nothing, so it never makes a publisher wait. With `cx`, a
    /// publisher that finds no room is woken when room appears.
    #[inline]
    pub(crate) fn has_room(&self, cx: Option<&mut Context<'_>>) -> bool {
        let mut s = self.state.lock();
        let full = match &s.buf {
            Buf::Own(buf) => buf.len() >= self.info.capacity,
            Buf::Ring { .. } => false,
        };
        if s.closed || !full {
            return true;
        }
        if let Some(cx) = cx {
            register(&mut s.publishers, cx.waker());
        }
        false
    }

    /// Publisher side, ring subscription, under the topic lock: how many more
    /// events fit, with `tail` the topic's next sequence number. With `cx`, a
    /// publisher that finds no room is woken when room appears.
    pub(crate) fn ring_room(&self, tail: u64, cx: Option<&mut Context<'_>>) -> usize {
        let mut s = self.state.lock();
        let Buf::Ring { next, .. } = &s.buf else {
            return usize::MAX;
        };
        if s.closed {
            return usize::MAX;
        }
        let queued = (tail - *next) as usize;
        s.counters.high_water = s.counters.high_water.max(queued);
        let room = self.info.capacity.saturating_sub(queued);
        if room == 0 {
            if let Some(cx) = cx {
                register(&mut s.publishers, cx.waker());
            }
        }
        room
    }

    /// Publisher side, own queue: offers one accepted event to this
    /// subscription. Called with the topic lock held, after `has_room` said
    /// yes for every `Block` and `Fail` subscription; only consumers touch
    /// the queue in between, and they only make room.
    pub(crate) fn push(&self, published: &Arc<Published<E>>) -> Push {
        let mut s = self.state.lock();
        if s.closed {
            return Push::Closed;
        }
        let s = &mut *s;
        let Buf::Own(buf) = &mut s.buf else {
            // Ring subscriptions read the ring; the publisher never pushes.
            return Push::Enqueued;
        };
        s.counters.accepted += 1;
        let mut outcome = Push::Enqueued;
        if buf.len() >= self.info.capacity {
            match self.info.policy {
                Overflow::DropNewest => {
                    s.counters.dropped_newest += 1;
                    s.pending_missed += 1;
                    self.dropped();
                    return Push::DroppedNewest;
                }
                Overflow::DropOldest => {
                    if let Some(old) = buf.pop_front() {
                        s.counters.dropped_oldest += 1;
                        self.dropped();
                        let carry = old.missed_before + 1;
                        match buf.front_mut() {
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
        buf.push_back(Slot {
            published: Arc::clone(published),
            missed_before,
        });
        s.counters.high_water = s.counters.high_water.max(buf.len());
        self.metrics.enqueued(buf.len());
        if let Some(waker) = s.consumers.iter_mut().find_map(Option::take) {
            waker.wake();
        }
        outcome
    }

    /// One event lost to the overflow policy: counted by the caller,
    /// reported here (at most once per report interval).
    fn dropped(&self) {
        self.metrics.dropped();
        let now = std::time::Instant::now();
        let mut report = self.drop_report.lock();
        report.1 += 1;
        let due = match report.0 {
            None => true,
            Some(last) => now.duration_since(last) >= self.watch.report_interval(),
        };
        if due {
            let n = std::mem::take(&mut report.1);
            report.0 = Some(now);
            drop(report);
            telemetry::warn_drops(&self.info, n);
        }
    }

    fn pop_locked(&self, s: &mut State<E>, wakeups: &mut Wakeups) -> Option<Envelope<E>> {
        let slot = s.take()?;
        s.counters.delivered += 1;
        self.metrics.delivered(|| s.depth_hint());
        if self.info.kind != SubscriberKind::Stream {
            s.in_flight += 1;
        }
        wakeups.take_all(&mut s.publishers);
        s.wake_idle(wakeups);
        Some(Envelope::new(slot.published, slot.missed_before))
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
        if s.closed && s.drained() {
            return Poll::Ready(None);
        }
        if let Buf::Ring { ring, .. } = &s.buf {
            // Register with the ring, then look again: a publisher writes
            // the slot before it takes the ring's waiters, so either this
            // look sees the event or the publisher sees this waker.
            let ring = Arc::clone(ring);
            let mut waiters = ring.waiters.lock();
            if let Some(env) = self.pop_locked(&mut s, &mut wakeups) {
                drop(waiters);
                drop(s);
                wakeups.wake();
                return Poll::Ready(Some(env));
            }
            register(&mut waiters, cx.waker());
            return Poll::Pending;
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
            None if s.closed && s.drained() => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Handler side: one attempt at event `event_id` ended after `took`.
    /// Returns the outcome for the run's span, and the error of a failed
    /// attempt.
    pub(crate) fn attempted(
        &self,
        event_id: u64,
        outcome: Outcome,
        took: std::time::Duration,
    ) -> (RunOutcome, Option<String>) {
        let (run, error) = match outcome {
            Outcome::Ok => (RunOutcome::Ok, None),
            Outcome::Failed(msg) => {
                telemetry::warn_failure(&self.info, event_id, &msg);
                (RunOutcome::Failed, Some(msg))
            }
            Outcome::Panicked(msg) => {
                telemetry::warn_panic(&self.info, event_id, &msg);
                (RunOutcome::Panicked, Some(format!("panic: {msg}")))
            }
            Outcome::TimedOut(limit) => {
                telemetry::warn_timeout(&self.info, event_id, took, true);
                (
                    RunOutcome::TimedOut,
                    Some(format!("timed out after {limit:?}")),
                )
            }
        };
        if let Some(error) = &error {
            let mut s = self.state.lock();
            let c = &mut s.counters;
            match run {
                RunOutcome::Failed => c.failures += 1,
                RunOutcome::Panicked => c.panics += 1,
                RunOutcome::TimedOut => c.timeouts += 1,
                RunOutcome::Ok => {}
            }
            c.last_error = Some(error.clone());
        }
        self.metrics.handled(run, took);
        (run, error)
    }

    /// Handler side: a sync handler ran past its timeout (it could not be
    /// cancelled; its result stands).
    pub(crate) fn overran(&self, event_id: u64, took: std::time::Duration) {
        self.state.lock().counters.timeouts += 1;
        telemetry::warn_timeout(&self.info, event_id, took, false);
    }

    /// Handler side: a failed event will be tried again.
    pub(crate) fn retrying(&self) {
        self.state.lock().counters.retried += 1;
        self.metrics.retried();
    }

    /// Handler side: a dead letter reached no subscription; logged once per
    /// subscription (and counted when the event is done).
    pub(crate) fn unheard(&self, event_id: u64, error: &str) {
        if !self.unheard_warned.swap(true, Ordering::Relaxed) {
            telemetry::warn_unheard_dead_letter(&self.info, event_id, error);
        }
    }

    /// Handler side: the circuit breaker changed state.
    pub(crate) fn breaker_changed(&self, change: Option<crate::retry::Change>) {
        if let Some(change) = change {
            telemetry::breaker_changed(&self.info, change.to, change.consecutive);
        }
    }

    /// Handler side: an event's handling is over, after all its attempts.
    /// Counted in the same critical section that ends its run, so no
    /// snapshot sees it in neither or both.
    pub(crate) fn done(&self, how: Final) {
        if let Final::DeadLettered { .. } = how {
            self.metrics.dead_lettered();
        }
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        match how {
            Final::Handled => s.counters.handled += 1,
            Final::DeadLettered { heard } => {
                s.counters.dead_lettered += 1;
                if !heard {
                    s.counters.dead_letters_unheard += 1;
                }
            }
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        s.wake_idle(&mut wakeups);
        drop(s);
        wakeups.wake();
    }

    /// Handler side: the runner itself (not the handler) failed with
    /// `message`, e.g. a panic in code the bus runs around the handler.
    /// Counted, kept as the last error, reported as a finding.
    pub(crate) fn runner_failed(&self, event_id: Option<u64>, message: &str) {
        {
            let mut s = self.state.lock();
            s.counters.runner_failures += 1;
            s.counters.last_error = Some(format!("runner failed: {message}"));
        }
        telemetry::warn_runner_failed(&self.info, event_id, message);
        self.finding(FindingKind::RunnerFailed, std::time::Duration::ZERO);
    }

    /// Sync runner side: waits `delay`, or less if the shutdown deadline
    /// cuts the queue off first. Returns whether it was cut off.
    pub(crate) fn sleep_unless_cut(&self, delay: std::time::Duration) -> bool {
        let until = std::time::Instant::now().checked_add(delay);
        let mut s = self.state.lock();
        while !s.cut {
            match until {
                Some(until) => {
                    if self.cut_signal.wait_until(&mut s, until).timed_out() {
                        break;
                    }
                }
                None => self.cut_signal.wait(&mut s),
            }
        }
        s.cut
    }

    /// One poll of an async handler took `took`.
    pub(crate) fn polled(&self, took: std::time::Duration, threshold: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.worst_poll_ns.fetch_max(ns, Ordering::Relaxed);
        if took > threshold {
            self.finding(FindingKind::SlowPoll, took);
        }
    }

    /// One occurrence of a finding: recorded, and reported if one is due.
    pub(crate) fn finding(&self, kind: FindingKind, took: std::time::Duration) {
        if let Some(due) = self
            .watcher
            .record(kind, took, self.watch.report_interval())
        {
            telemetry::warn_finding(&self.info, &due);
        }
        self.metrics.finding(kind, self.watcher.totals(kind).1);
    }

    pub(crate) fn findings(&self, out: &mut Vec<Finding>) {
        self.watcher
            .findings(&self.info, self.watch.report_interval(), out);
    }

    /// Closes the queue, under the topic lock: it takes no new event and its
    /// consumers end once it is empty. With `discard`, what it still holds is
    /// dropped and counted as discarded; without, a ring subscription that
    /// leaves the topic (`leaving`) copies what it has still to read out of
    /// the ring, which will be overwritten once it no longer holds the
    /// publisher back. `view` is the publisher side's knowledge of a ring
    /// subscription. Returns how many events were discarded.
    pub(crate) fn close(&self, discard: bool, leaving: bool, view: Option<RingView>) -> u64 {
        let mut wakeups = Wakeups::default();
        let mut guard = self.state.lock();
        let s = &mut *guard;
        if !s.closed {
            if let (Buf::Ring { start, end, .. }, Some(view)) = (&mut s.buf, view) {
                *end = view.tail;
                s.counters.accepted = view.tail - *start + s.counters.replayed;
            }
        }
        s.closed = true;
        let discarded = if discard { s.clear() } else { 0 };
        s.counters.discarded += discarded;
        self.metrics.discarded(discarded);
        let mut ring_readers = None;
        if let Buf::Ring {
            ring, next, end, ..
        } = &s.buf
        {
            ring_readers = Some(Arc::clone(ring));
            if leaving {
                let own: VecDeque<Slot<E>> = (*next..*end)
                    .filter_map(|seq| ring.read(seq))
                    .map(|published| Slot {
                        published,
                        missed_before: 0,
                    })
                    .collect();
                s.buf = Buf::Own(own);
            }
        }
        for w in s.consumers.iter_mut().filter_map(Option::take) {
            wakeups.push(w);
        }
        wakeups.take_all(&mut s.publishers);
        s.wake_idle(&mut wakeups);
        drop(guard);
        wakeups.wake();
        if let Some(ring) = ring_readers {
            ring.wake_all();
        }
        discarded
    }

    pub(crate) fn add_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().push(task);
    }

    /// Under the topic lock, for shutdown: whether nothing is queued and at
    /// most `own_runs` handler runs are going (the caller's own, when a
    /// handler shuts the bus down). If not, `cx` is woken when it may be.
    pub(crate) fn poll_quiet(
        &self,
        view: Option<RingView>,
        own_runs: usize,
        cx: &mut Context<'_>,
    ) -> bool {
        let mut s = self.state.lock();
        if s.is_quiet(view, own_runs) {
            return true;
        }
        register(&mut s.idle, cx.waker());
        false
    }

    /// Whether it is closed, empty and no handler runs (an unsubscribed
    /// subscription that finished draining).
    pub(crate) fn is_idle(&self) -> bool {
        self.state.lock().is_idle()
    }

    /// Wakes the publishers waiting for room in it, so that they look at
    /// the bus again (it began to shut down).
    pub(crate) fn wake_publishers(&self) {
        let publishers = std::mem::take(&mut self.state.lock().publishers);
        publishers.into_iter().for_each(Waker::wake);
    }

    /// The subscription's numbers; `view` is needed for an open ring
    /// subscription.
    pub(crate) fn stats(&self, view: Option<RingView>) -> SubscriptionStats {
        let (slow_polls, _) = self.watcher.totals(FindingKind::SlowPoll);
        let (over_budget, worst_run) = self.watcher.totals(FindingKind::SyncOverBudget);
        let (publishers_blocked, worst_publisher_wait) =
            self.watcher.totals(FindingKind::PublisherBlocked);
        let s = self.state.lock();
        let c = &s.counters;
        let (accepted, queue_depth, high_water) = match (&s.buf, view) {
            (Buf::Own(buf), _) => (c.accepted, buf.len(), c.high_water),
            // Open: the publisher side knows how far the topic has gone.
            (Buf::Ring { start, next, .. }, Some(view)) if !s.closed => {
                let queued = (view.tail - next) as usize;
                (
                    view.tail - start + c.replayed,
                    queued,
                    c.high_water.max(queued),
                )
            }
            // Closed: `close` recorded the final numbers.
            (Buf::Ring { next, end, .. }, _) => {
                (c.accepted, end.saturating_sub(*next) as usize, c.high_water)
            }
        };
        let queue_depth = queue_depth + s.replay.len();
        let (breaker, breaker_opened) = match &self.breaker {
            Some(b) => {
                let (state, opened) = b.snapshot();
                (Some(state), opened)
            }
            None => (None, 0),
        };
        SubscriptionStats {
            id: self.info.id,
            name: self.info.name.to_string(),
            topic: self.info.topic,
            kind: self.info.kind,
            policy: self.info.policy,
            capacity: self.info.capacity,
            closed: s.closed,
            queue_depth,
            high_water,
            accepted,
            delivered: c.delivered,
            dropped_oldest: c.dropped_oldest,
            dropped_newest: c.dropped_newest,
            discarded: c.discarded,
            cut_off: c.cut_off,
            missed_unreported: s.pending_missed,
            in_flight: s.in_flight,
            handled: c.handled,
            failures: c.failures,
            panics: c.panics,
            timeouts: c.timeouts,
            retried: c.retried,
            dead_lettered: c.dead_lettered,
            dead_letters_unheard: c.dead_letters_unheard,
            runner_failures: c.runner_failures,
            breaker,
            breaker_opened,
            replayed: c.replayed,
            last_error: c.last_error.clone(),
            slow_polls,
            worst_poll: std::time::Duration::from_nanos(self.worst_poll_ns.load(Ordering::Relaxed)),
            over_budget,
            worst_run,
            publishers_blocked,
            worst_publisher_wait,
        }
    }
}

/// What shutdown needs of a queue without knowing its event type.
pub(crate) trait ErasedQueue: Send + Sync {
    /// Ready once the queue is closed, empty and no handler runs.
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()>;
    /// The deadline passed: drop what is queued (counted as cut off) and stop
    /// async handler tasks, returning them to wait for (a task in the middle
    /// of a poll stops only once that poll is over). The queue is closed
    /// already.
    fn cut_off(&self) -> Vec<tokio::task::JoinHandle<()>>;
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

    fn cut_off(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut wakeups = Wakeups::default();
        {
            let mut s = self.state.lock();
            s.closed = true;
            s.cut = true;
            let n = s.clear();
            s.counters.cut_off += n;
            self.metrics.discarded(n);
            for w in s.consumers.iter_mut().filter_map(Option::take) {
                wakeups.push(w);
            }
            s.wake_idle(&mut wakeups);
        }
        self.cut_signal.notify_all();
        wakeups.wake();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in &tasks {
            task.abort();
        }
        tasks
    }
}
