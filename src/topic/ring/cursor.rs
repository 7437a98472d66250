//! A lossless subscription's place in its topic's ring: the sequence
//! numbers it has still to take, and the room it has for more. Its fields
//! are private to this file, so that each of its events is read once, in
//! order, whatever the rest of the crate does: the contract of the ring's
//! `read`. Only the ring's [`Writer`](super::Writer) makes one.
//!
//! A stream takes its events without its subscription's lock. The cursor's
//! next sequence number and three flags share one atomic word, `pos`:
//!
//! - `BUSY`: a take without the lock is reading the slot of `next`. It sets
//!   the flag (`fetch_or`, which also tells it whether `LOCKED` is set),
//!   reads, then moves `next` on and clears the flag in one `fetch_add`
//!   (release: the publisher, which reads the word before it writes the
//!   slot again, sees the read done). So `next` moves only after the read,
//!   and the room it gives the publisher never covers a slot being read;
//! - `LOCKED`: takes go through the subscription's lock (handlers, which
//!   count their runs in flight in the same critical section; a stream
//!   while it has retained events to read first; a closed cursor). Whoever
//!   sets it waits until `BUSY` is clear: from then on `next` moves only
//!   under the lock, and a take without the lock that finds `LOCKED` backs
//!   off without reading;
//! - `WAKE`: someone waits under the subscription's lock for the cursor to
//!   move (a publisher for room, shutdown for quiet). They set it after
//!   registering and read the room from what the `fetch_or` returns; the
//!   taker's `fetch_add` returns the word before it, so one of the two sees
//!   the other: the waiter sees the room, or the taker sees the flag and
//!   wakes the list under the lock. No wake-up is lost, and a take costs no
//!   lock while nobody waits.
//!
//! The loom models in `loom_models.rs` check these under every
//! interleaving: a take without the lock against a publish, a waiting
//! publisher, a snapshot and a close that takes the rest.

use std::sync::Arc;
use std::task::Waker;

use super::Ring;
use crate::event::Published;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// A take without the lock is reading the slot of `next`.
const BUSY: u64 = 1;
/// Takes go through the subscription's lock.
const LOCKED: u64 = 1 << 1;
/// Someone waits under the subscription's lock for the cursor to move.
const WAKE: u64 = 1 << 2;
/// `next` sits above the flags.
const SHIFT: u32 = 3;
/// One sequence number on.
const STEP: u64 = 1 << SHIFT;

/// A reader of a ring: it takes every sequence number from `start` on,
/// until `end` once closed.
pub(crate) struct Cursor<E> {
    ring: Arc<Ring<E>>,
    /// Which reader of its writer it is (unique in the process).
    id: u64,
    /// The first sequence number it reads.
    start: u64,
    /// The most events it may hold (its subscription's capacity, at most
    /// the ring's size).
    capacity: u64,
    /// `next << SHIFT` and the flags (see the module docs).
    pos: AtomicU64,
    /// One past the last one it reads, once closed; `u64::MAX` while open.
    /// Written once, under the subscription's lock with `LOCKED` set.
    end: AtomicU64,
    /// The deepest queue a take without the lock sampled.
    high_water: AtomicUsize,
}

/// How far one reader has room, as its cursor said: every sequence number
/// below `until`. Only a [`Cursor`] makes one, naming itself, so that the
/// [`Writer`](super::Writer) never takes one reader's room for another's.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Room {
    pub(super) id: u64,
    pub(super) until: u64,
}

impl Room {
    /// Whether event `seq` fits.
    pub(crate) fn fits(&self, seq: u64) -> bool {
        seq < self.until
    }
}

/// Where a cursor stood at one reading of it: every number a snapshot
/// needs comes from one, so that they agree with each other.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Place {
    start: u64,
    next: u64,
    end: u64,
    capacity: u64,
    id: u64,
}

impl Place {
    /// Whether it is closed: it reads no sequence number from `end` on.
    pub(crate) fn is_closed(&self) -> bool {
        self.end != u64::MAX
    }

    /// Whether nothing is left to read: exact once closed; while open, only
    /// the ring can tell (see [`queued`](Place::queued)).
    pub(crate) fn drained(&self) -> bool {
        self.next >= self.end
    }

    /// Events queued, with `tail` the topic's next sequence number.
    pub(crate) fn queued(&self, tail: u64) -> usize {
        usize::try_from(tail.min(self.end).saturating_sub(self.next)).unwrap_or(usize::MAX)
    }

    /// Events left once closed.
    pub(crate) fn left(&self) -> usize {
        self.queued(self.end)
    }

    /// Sequence numbers it has passed: taken, or given up by
    /// [`Cursor::take_rest`].
    pub(crate) fn passed(&self) -> u64 {
        self.next.saturating_sub(self.start)
    }

    /// The room it has: every sequence number below its next plus its
    /// capacity (whose slots it has passed), and all of them once it is
    /// closed and drained.
    pub(crate) fn room(&self) -> Room {
        let until = if self.is_closed() && self.drained() {
            u64::MAX
        } else {
            self.next.saturating_add(self.capacity)
        };
        Room { id: self.id, until }
    }
}

/// What a take without the lock found.
pub(crate) enum Take<E> {
    /// The next event; the depth before it on every 16th; and whether
    /// someone waits under the lock to hear that the cursor moved.
    Taken {
        published: Arc<Published<E>>,
        depth: Option<usize>,
        wake: bool,
    },
    /// The next event is not written yet.
    Empty,
    /// Takes go through the subscription's lock now (or another take
    /// without it is under way: only one reader may take so).
    Locked,
}

impl<E> Cursor<E> {
    /// Made by the writer, which counts it as a reader of every sequence
    /// number from `start` on. It starts `LOCKED`: its subscription lets
    /// it take without the lock once it knows it may.
    pub(super) fn new(ring: Arc<Ring<E>>, id: u64, start: u64, capacity: usize) -> Self {
        let capacity = capacity.min(ring.size()) as u64;
        Cursor {
            ring,
            id,
            start,
            capacity,
            pos: AtomicU64::new((start << SHIFT) | LOCKED),
            end: AtomicU64::new(u64::MAX),
            high_water: AtomicUsize::new(0),
        }
    }

    /// The ring it reads (to wake its waiting readers).
    pub(crate) fn ring(&self) -> &Arc<Ring<E>> {
        &self.ring
    }

    /// The first sequence number it reads.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    fn place_of(&self, word: u64) -> Place {
        Place {
            start: self.start,
            next: word >> SHIFT,
            end: self.end.load(Ordering::Acquire),
            capacity: self.capacity,
            id: self.id,
        }
    }

    /// Where it stands now, from one reading of it.
    pub(crate) fn place(&self) -> Place {
        self.place_of(self.pos.load(Ordering::Acquire))
    }

    /// The room it has now.
    pub(crate) fn room(&self) -> Room {
        self.place().room()
    }

    /// Events queued, sampled from a tail that may lag: never more than the
    /// real depth.
    pub(crate) fn depth(&self) -> usize {
        let place = self.place();
        self.ring.depth(place.next, place.end)
    }

    /// The deepest queue a take without the lock sampled.
    pub(crate) fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Whether takes go through the subscription's lock.
    pub(crate) fn is_locked(&self) -> bool {
        self.pos.load(Ordering::Acquire) & LOCKED != 0
    }

    /// Takes the next event without the subscription's lock, if it has
    /// been written; with the depth just before the take on every 16th (the
    /// ring's tail is written by every publish, and reading it on every
    /// take cost a cache miss an event when the publisher runs on another
    /// core).
    #[inline(always)]
    pub(crate) fn try_take(&self) -> Take<E> {
        let word = self.pos.fetch_or(BUSY, Ordering::Acquire);
        if word & BUSY != 0 {
            // Another take without the lock holds the claim: not ours to
            // clear.
            return Take::Locked;
        }
        if word & LOCKED != 0 {
            self.pos.fetch_and(!BUSY, Ordering::Release);
            return Take::Locked;
        }
        let seq = word >> SHIFT;
        // SAFETY: the writer counted this cursor as a reader of every
        // sequence number from its start on, and `seq` is its next, which
        // it has not read: nobody else reads for it now (a take under the
        // lock runs only with `LOCKED` set, and whoever sets it waits until
        // this claim is given back), and `next` moves past `seq` below,
        // after the read, so the publisher does not write its slot again
        // before.
        match unsafe { self.ring.read(seq) } {
            Some(published) => {
                let depth = (seq % 16 == 0).then(|| self.ring.depth(seq, u64::MAX));
                if let Some(depth) = depth {
                    if depth > self.high_water.load(Ordering::Relaxed) {
                        self.high_water.store(depth, Ordering::Relaxed);
                    }
                }
                let before = self.pos.fetch_add(STEP - BUSY, Ordering::AcqRel);
                Take::Taken {
                    published,
                    depth,
                    wake: before & WAKE != 0,
                }
            }
            None => {
                self.pos.fetch_and(!BUSY, Ordering::Release);
                Take::Empty
            }
        }
    }

    /// Under the subscription's lock: from now on takes go through it.
    /// Waits for a take without the lock that is under way (a few
    /// instructions, no user code) to end.
    pub(crate) fn lock(&self) {
        let mut word = self.pos.fetch_or(LOCKED, Ordering::AcqRel);
        let mut spins = 0u32;
        while word & BUSY != 0 {
            crate::sync::spin(&mut spins);
            word = self.pos.load(Ordering::Acquire);
        }
    }

    /// Under the subscription's lock, while open: takes need it no longer
    /// (only one reader takes; its retained events are read).
    pub(crate) fn unlock(&self) {
        if self.end.load(Ordering::Relaxed) == u64::MAX {
            self.pos.fetch_and(!LOCKED, Ordering::Release);
        }
    }

    /// Takes the next event under the subscription's lock, if it has been
    /// written, locking the cursor first if needed; with the depth as
    /// [`try_take`](Cursor::try_take) gives it.
    #[inline]
    pub(crate) fn take_locked(&self) -> Option<(Arc<Published<E>>, Option<usize>)> {
        let mut word = self.pos.load(Ordering::Acquire);
        if word & LOCKED == 0 {
            self.lock();
            word = self.pos.load(Ordering::Acquire);
        }
        let place = self.place_of(word);
        if place.drained() {
            return None;
        }
        let seq = place.next;
        // SAFETY: as in `try_take`: the cursor is `LOCKED` and no claim
        // is under way, so under the subscription's lock this caller alone
        // reads for it, `seq` once, and moves past it after.
        let published = unsafe { self.ring.read(seq) }?;
        let depth = (seq % 16 == 0).then(|| self.ring.depth(seq, place.end));
        self.pos.fetch_add(STEP, Ordering::AcqRel);
        Some((published, depth))
    }

    /// Registers `waker` for the next event, having found it not written;
    /// `false` if it was written meanwhile (take it now).
    pub(crate) fn wait(&self, waker: &Waker) -> bool {
        self.ring.wait(self.place().next, waker)
    }

    /// Under the subscription's lock, with a waker registered there: asks
    /// the next take to wake it. Where the cursor stands now, counting
    /// every take that will not.
    pub(crate) fn note_waiter(&self) -> Place {
        self.place_of(self.pos.fetch_or(WAKE, Ordering::AcqRel))
    }

    /// Under the subscription's lock, before it wakes its waiters: takes
    /// need not wake anyone until [`note_waiter`](Cursor::note_waiter)
    /// again.
    pub(crate) fn waiters_woken(&self) {
        self.pos.fetch_and(!WAKE, Ordering::AcqRel);
    }

    /// Closes it at `tail`, the topic's next sequence number, under the
    /// topic's lock and the subscription's: it reads what was written
    /// before, nothing after, and only under the lock. A second close
    /// changes nothing.
    pub(crate) fn close(&self, tail: u64) {
        self.lock();
        if self.end.load(Ordering::Relaxed) == u64::MAX {
            let next = self.pos.load(Ordering::Acquire) >> SHIFT;
            self.end.store(tail.max(next), Ordering::Release);
        }
    }

    /// Under the subscription's lock: takes every event left to it, each
    /// handed to `out` (to keep elsewhere, or to let go of); an open cursor
    /// has none of its own to take. How many sequence numbers it passed.
    pub(crate) fn take_rest(&self, mut out: impl FnMut(Arc<Published<E>>)) -> u64 {
        let end = self.end.load(Ordering::Acquire);
        if end == u64::MAX {
            return 0;
        }
        // Closed, hence `LOCKED`, with no claim under way.
        let mut next = self.pos.load(Ordering::Acquire) >> SHIFT;
        let n = end.saturating_sub(next);
        while next < end {
            // SAFETY: as in `take_locked`: each sequence number once,
            // then past it.
            if let Some(published) = unsafe { self.ring.read(next) } {
                out(published);
            }
            self.pos.fetch_add(STEP, Ordering::AcqRel);
            next += 1;
        }
        n
    }
}
