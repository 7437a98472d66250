//! The bounded queue of one subscription: where its events wait, either a
//! cursor into the topic's ring (lossless subscriptions) or a `VecDeque`
//! of its own (the lossy policies, which evict or skip per subscription,
//! and lossless subscriptions larger than the ring); its numbers; and the
//! wakers of whoever waits on it. Everything here lives under the
//! subscription's one lock, but for a ring reader's cursor, which a stream
//! moves without it (`ring/cursor.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use crate::event::Published;
use crate::resume::Started;
use crate::topic::breaker::Breaker;
use crate::topic::deferred::Deferred;
use crate::topic::ring::Cursor;
use crate::watch::CallbackLog;

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

/// How a queue is set up, beyond its fixed facts.
pub(crate) struct QueueSetup<E> {
    /// Runners taking from it (stream: 1, handlers: their concurrency).
    pub(crate) consumers: usize,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Retained events it asked for, delivered before live ones.
    pub(crate) replay: VecDeque<Arc<Published<E>>>,
    pub(crate) start: Started,
    /// Its topic's log of callback panics, for the events it lets go of.
    pub(crate) callbacks: Arc<CallbackLog>,
}

pub(super) struct Slot<E> {
    pub(super) published: Arc<Published<E>>,
    /// Events this subscription lost just before this one.
    pub(super) missed_before: u64,
}

/// Where a subscription's events wait.
pub(super) enum Buf<E> {
    Own(VecDeque<Slot<E>>),
    /// Its place in the topic's ring, shared with a stream's takes
    /// without the lock.
    Ring(Arc<Cursor<E>>),
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
/// A ring reader's deliveries and depth both come from one reading of its
/// cursor: a stream moves it without the lock, and a handler (which counts
/// `in_flight`) only under it.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) accepted: u64,
    /// Deliveries from retained events and a queue of its own; a ring
    /// reader's are worked out from its cursor (minus `ring_passed`).
    pub(super) delivered: u64,
    /// Sequence numbers a ring cursor passed without delivering them: cut
    /// off, discarded, or moved to a queue of its own as it left the ring.
    pub(super) ring_passed: u64,
    pub(super) dropped_oldest: u64,
    pub(super) dropped_newest: u64,
    pub(super) discarded: u64,
    pub(super) cut_off: u64,
    pub(super) high_water: usize,
    /// Retained events queued for it when it subscribed (counted in
    /// `accepted`).
    pub(super) replayed: u64,
    pub(super) handled: u64,
    pub(super) failures: u64,
    pub(super) panics: u64,
    pub(super) timeouts: u64,
    pub(super) retried: u64,
    pub(super) dead_lettered: u64,
    pub(super) dead_letters_unheard: u64,
    pub(super) cancelled: u64,
    pub(super) runner_failures: u64,
    pub(super) last_error: Option<String>,
}

pub(super) struct State<E> {
    /// Retained events it asked for, read before `buf`.
    pub(super) replay: VecDeque<Arc<Published<E>>>,
    pub(super) buf: Buf<E>,
    pub(super) closed: bool,
    /// Losses after the last queued event, not yet attached to an envelope.
    pub(super) pending_missed: u64,
    /// Handler runs started and not yet finished.
    pub(super) in_flight: usize,
    /// The shutdown deadline cut it off: runners stop.
    pub(super) cut: bool,
    pub(super) counters: Counters,
    /// One slot per consumer (stream: 1, handlers: their concurrency).
    pub(super) consumers: Vec<Option<Waker>>,
    /// A ring subscription's consumer that waits on the ring for all of
    /// them: its siblings wait in their slots, and whoever takes an event
    /// while nobody watches wakes one of them (which takes the next event or
    /// becomes the watcher). So a write wakes one runner per subscription,
    /// not every one of its siblings, which would find the event taken and
    /// wait again.
    pub(super) watcher: Option<usize>,
    pub(super) publishers: Vec<Waker>,
    pub(super) idle: Vec<Waker>,
}

impl<E> State<E> {
    /// Whether nothing is left to read. Exact for a closed subscription; for
    /// an open ring subscription only the slot itself can tell.
    pub(super) fn drained(&self) -> bool {
        if !self.replay.is_empty() {
            return false;
        }
        match &self.buf {
            Buf::Own(buf) => buf.is_empty(),
            Buf::Ring(cursor) => cursor.place().drained(),
        }
    }

    /// The queue depth after a take: exact for an own queue, sampled from
    /// the ring's tail for a ring reader.
    pub(super) fn depth_hint(&self) -> usize {
        self.replay.len()
            + match &self.buf {
                Buf::Own(buf) => buf.len(),
                Buf::Ring(cursor) => cursor.depth(),
            }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.closed && self.drained() && self.in_flight == 0
    }

    /// Whether nothing may be queued and no handler runs: exact for a queue
    /// of its own and a closed ring subscription; an open ring reader's
    /// sampled depth errs low, so this may say yes too early, never too
    /// late. Used to wake shutdown and `unsubscribe`, which then look
    /// exactly.
    pub(super) fn maybe_quiet(&self) -> bool {
        self.in_flight == 0 && self.depth_hint() == 0
    }

    /// Whether nothing is queued and at most `own_runs` handler runs are
    /// going; `view` (the topic's next sequence number) makes it exact for
    /// an open ring subscription.
    pub(super) fn is_quiet(&self, view: Option<RingView>, own_runs: usize) -> bool {
        if self.in_flight > own_runs || !self.replay.is_empty() {
            return false;
        }
        match &self.buf {
            Buf::Own(buf) => buf.is_empty(),
            Buf::Ring(cursor) => match view {
                Some(view) => cursor.place().queued(view.tail) == 0,
                None => cursor.place().drained(),
            },
        }
    }

    /// Wakes shutdown and `unsubscribe` if they may have something to see.
    #[inline]
    pub(super) fn wake_idle(&mut self, wakeups: &mut Wakeups) {
        if !self.idle.is_empty() && (self.is_idle() || self.maybe_quiet()) {
            wakeups.take_all(&mut self.idle);
        }
    }

    /// Empties the queue, moving the in-band loss counts of what it held to
    /// `pending_missed` so that none of them goes uncounted; the events go
    /// to `dropped`, to be let go of once the lock is released. A ring
    /// subscription must be closed first (its `end` set).
    pub(super) fn clear(&mut self, dropped: &mut Deferred<E>) -> u64 {
        let replay = self.replay.len() as u64;
        for published in self.replay.drain(..) {
            dropped.let_go(published);
        }
        replay
            + match &mut self.buf {
                Buf::Own(buf) => {
                    let n = buf.len() as u64;
                    for slot in buf.drain(..) {
                        self.pending_missed += slot.missed_before;
                        dropped.let_go(slot.published);
                    }
                    n
                }
                // Still open: nothing in the ring is its own to clear.
                Buf::Ring(cursor) => {
                    let n = cursor.take_rest(|published| dropped.let_go(published));
                    self.counters.ring_passed += n;
                    n
                }
            }
    }

    /// Takes the next event under the lock, if there is one to take now,
    /// counting it delivered (a ring reader's count is its cursor's).
    /// Inlined into the subscription's pop, as it was before the queue had
    /// a file of its own (callgrind: 16 instructions an event).
    #[inline]
    pub(super) fn take(&mut self) -> Option<Slot<E>> {
        if let Some(published) = self.replay.pop_front() {
            self.counters.delivered += 1;
            return Some(Slot {
                published,
                missed_before: 0,
            });
        }
        match &mut self.buf {
            Buf::Own(buf) => {
                let slot = buf.pop_front()?;
                self.counters.delivered += 1;
                Some(slot)
            }
            Buf::Ring(cursor) => {
                let (published, depth) = cursor.take_locked()?;
                // The depth is sampled (see `Cursor::take`); a full queue is
                // caught exactly anyway, by the publisher that finds no room.
                if let Some(depth) = depth {
                    self.counters.high_water = self.counters.high_water.max(depth);
                }
                Some(Slot {
                    published,
                    missed_before: 0,
                })
            }
        }
    }
}

/// Wakers taken out under the lock, woken after it is released. The first
/// is kept in place and the lists they come from are drained, not taken,
/// so that they keep their room: a publisher that waits again after being
/// woken allocates nothing, nor does a wake-up of one waiter (the usual
/// one: only the first publisher in a topic's line waits for room). On the
/// hot path (nobody waiting) everything here is a no-op.
#[derive(Default)]
pub(super) struct Wakeups {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakeups {
    #[inline]
    pub(super) fn push(&mut self, waker: Waker) {
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.rest.push(waker);
        }
    }

    #[inline]
    pub(super) fn take_all(&mut self, list: &mut Vec<Waker>) {
        if list.is_empty() {
            return;
        }
        for waker in list.drain(..) {
            self.push(waker);
        }
    }

    #[inline]
    pub(super) fn wake(self) {
        if self.first.is_none() {
            // Nothing to wake (`rest` fills only after `first`): forgotten,
            // so that no drop glue runs on every receive.
            std::mem::forget(self);
            return;
        }
        self.wake_all();
    }

    #[cold]
    fn wake_all(self) {
        self.first
            .into_iter()
            .chain(self.rest)
            .for_each(Waker::wake);
    }
}

pub(super) fn register(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}
