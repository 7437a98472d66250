//! A lossless subscription's place in its topic's ring: the sequence
//! numbers it has still to take, and the room it has for more. Its fields
//! are private to this file, so that each of its events is read once, in
//! order, whatever the rest of the crate does: the contract of the ring's
//! `read`. Only the ring's [`Writer`](super::Writer) makes one.

use std::sync::Arc;
use std::task::Waker;

use super::Ring;
use crate::event::Published;

/// A reader of a ring: it takes every sequence number from `start` on,
/// until `end` once closed. It lives under its subscription's lock.
pub(crate) struct Cursor<E> {
    ring: Arc<Ring<E>>,
    /// Which reader of its writer it is (unique in the process).
    id: u64,
    /// The first sequence number it reads.
    start: u64,
    /// The next sequence number to read.
    next: u64,
    /// One past the last one it reads, once closed; `u64::MAX` while open.
    end: u64,
    /// The most events it may hold (its subscription's capacity, at most
    /// the ring's size).
    capacity: u64,
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

impl<E> Cursor<E> {
    /// Made by the writer, which counts it as a reader of every sequence
    /// number from `start` on.
    pub(super) fn new(ring: Arc<Ring<E>>, id: u64, start: u64, capacity: usize) -> Self {
        let capacity = capacity.min(ring.size()) as u64;
        Cursor {
            ring,
            id,
            start,
            next: start,
            end: u64::MAX,
            capacity,
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

    /// Whether it is closed: it reads no sequence number from `end` on.
    pub(crate) fn is_closed(&self) -> bool {
        self.end != u64::MAX
    }

    /// Whether nothing is left to read: exact once closed; while open, only
    /// the ring can tell (see [`queued`](Cursor::queued)).
    pub(crate) fn drained(&self) -> bool {
        self.next >= self.end
    }

    /// Events queued for it, with `tail` the topic's next sequence number.
    pub(crate) fn queued(&self, tail: u64) -> usize {
        usize::try_from(tail.min(self.end).saturating_sub(self.next)).unwrap_or(usize::MAX)
    }

    /// Events left to it once closed.
    pub(crate) fn left(&self) -> usize {
        self.queued(self.end)
    }

    /// Events queued, sampled from a tail that may lag: never more than the
    /// real depth.
    pub(crate) fn depth(&self) -> usize {
        self.ring.depth(self.next, self.end)
    }

    /// Takes the next event, if it has been written; with the depth just
    /// before the take on every 16th (the ring's tail is written by every
    /// publish, and reading it on every take cost a cache miss an event
    /// when the publisher runs on another core).
    #[inline(always)]
    pub(crate) fn take(&mut self) -> Option<(Arc<Published<E>>, Option<usize>)> {
        if self.next >= self.end {
            return None;
        }
        // SAFETY: the writer counted this cursor as a reader of every
        // sequence number from its start on, and it reads `next` once: it
        // moves past it at once.
        let published = unsafe { self.ring.read(self.next) }?;
        let depth = (self.next % 16 == 0).then(|| self.ring.depth(self.next, self.end));
        self.next += 1;
        Some((published, depth))
    }

    /// Registers `waker` for the next event, having found it not written;
    /// `false` if it was written meanwhile (take it now).
    pub(crate) fn wait(&self, waker: &Waker) -> bool {
        self.ring.wait(self.next, waker)
    }

    /// Closes it at `tail`, the topic's next sequence number, under the
    /// topic's lock: it reads what was written before, nothing after. A
    /// second close changes nothing.
    pub(crate) fn close(&mut self, tail: u64) {
        if self.end == u64::MAX {
            self.end = tail.max(self.next);
        }
    }

    /// Takes every event left to it, each handed to `out` (to keep
    /// elsewhere, or to let go of); an open cursor has none of its own to
    /// take. How many sequence numbers it passed.
    pub(crate) fn take_rest(&mut self, mut out: impl FnMut(Arc<Published<E>>)) -> u64 {
        if self.end == u64::MAX {
            return 0;
        }
        let n = self.end.saturating_sub(self.next);
        while self.next < self.end {
            // SAFETY: as in `take`: each sequence number once, then past it.
            if let Some(published) = unsafe { self.ring.read(self.next) } {
                out(published);
            }
            self.next += 1;
        }
        n
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
