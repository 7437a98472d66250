//! The publisher's side of a topic's ring: the ring itself, its readers
//! and the room each reported. Its fields are private to this file, so that
//! a slot is written only below the room every reader's cursor reported,
//! for exactly the readers that will read it: the contract of the ring's
//! `write`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Cursor, Ring, Room, MAX_RING};
use crate::event::Published;

/// The ring of a topic as its publishers see it, under the topic's lock:
/// the only writer of its ring, which it makes with its first reader and
/// lets go of with its last.
pub(crate) struct Writer<E> {
    ring: Option<Arc<Ring<E>>>,
    /// Its readers, in the order they were added (ascending ids).
    readers: Vec<u64>,
    /// The lowest room of the readers (`u64::MAX` without any): below it
    /// every one of them has room. Never above the true lowest: raised
    /// only from the rooms of all of them.
    lowest: u64,
    /// One past the last sequence number written: a new reader starts no
    /// lower, and no write goes back.
    written: u64,
}

/// A reader's room as the publisher last saw it: made by the writer,
/// updated only with a [`Room`] from the same reader's cursor. Room only
/// grows (readers only move on), so an old one errs low, never high.
#[derive(Debug)]
pub(crate) struct ReaderRoom {
    id: u64,
    until: u64,
}

impl ReaderRoom {
    /// Whether event `seq` fits, as last seen.
    #[inline(always)]
    pub(crate) fn fits(&self, seq: u64) -> bool {
        seq < self.until
    }

    /// What its cursor says now; a room of another reader's changes
    /// nothing.
    pub(crate) fn update(&mut self, room: Room) {
        if room.id == self.id {
            self.until = room.until;
        }
    }
}

/// Reader ids, unique in the process, so that no room is ever taken for
/// another reader's, of this ring or another.
static NEXT_READER: AtomicU64 = AtomicU64::new(1);

impl<E> Writer<E> {
    pub(crate) const fn new() -> Self {
        Writer {
            ring: None,
            readers: Vec::new(),
            lowest: u64::MAX,
            written: 0,
        }
    }

    /// Whether a lossless subscription of `capacity` can read the ring:
    /// it fits in the ring there is, or in one to be made.
    pub(crate) fn fits(&self, capacity: usize) -> bool {
        capacity <= MAX_RING && self.ring.as_ref().map_or(true, |r| r.size() >= capacity)
    }

    /// How many readers each event is written for.
    #[inline(always)]
    pub(crate) fn readers(&self) -> usize {
        self.readers.len()
    }

    /// Whether event `seq` may not fit every reader: the publisher looks at
    /// their rooms again, and tells the writer with [`looked`](Writer::looked).
    #[inline(always)]
    pub(crate) fn must_look(&self, seq: u64) -> bool {
        seq >= self.lowest
    }

    /// A new reader, of a subscription of `capacity` (which [`fits`](Writer::fits)),
    /// from `tail` on (the topic's next sequence number, under its lock).
    /// Makes the ring, `size` slots at least, if it is the first.
    pub(crate) fn add_reader(
        &mut self,
        tail: u64,
        capacity: usize,
        size: usize,
    ) -> (Cursor<E>, ReaderRoom) {
        let ring = self
            .ring
            .get_or_insert_with(|| Arc::new(Ring::new(size.max(capacity))));
        let id = NEXT_READER.fetch_add(1, Ordering::Relaxed);
        // Never below what was written: those slots were written for the
        // readers before it.
        let cursor = Cursor::new(Arc::clone(ring), id, tail.max(self.written), capacity);
        let room = cursor.room();
        self.readers.push(id);
        self.lowest = self.lowest.min(room.until);
        (
            cursor,
            ReaderRoom {
                id,
                until: room.until,
            },
        )
    }

    /// A reader left; its cursor is closed at the topic's next sequence
    /// number, under the same lock. `rooms` are those of the readers that
    /// stay.
    pub(crate) fn remove_reader<'a>(
        &mut self,
        reader: &ReaderRoom,
        rooms: impl Iterator<Item = &'a ReaderRoom>,
    ) {
        self.readers.retain(|&id| id != reader.id);
        if self.readers.is_empty() {
            // Nobody reads the ring: let go of it.
            self.ring = None;
        }
        self.lowest = 0;
        self.looked(rooms);
    }

    /// The publisher looked at `rooms`: if they are those of every reader
    /// (checked by their ids, in order), the lowest of them is now exact.
    /// Otherwise nothing changes, and the next publish looks again.
    pub(crate) fn looked<'a>(&mut self, rooms: impl Iterator<Item = &'a ReaderRoom>) {
        let mut lowest = u64::MAX;
        let mut ids = self.readers.iter();
        for room in rooms {
            if ids.next() != Some(&room.id) {
                return;
            }
            lowest = lowest.min(room.until);
        }
        if ids.next().is_none() {
            self.lowest = lowest;
        }
    }

    /// Writes `published` for every reader, if its sequence number is past
    /// every one written before and below every reader's room, so that its
    /// slot is free. `false`, and nothing written, otherwise: the publish
    /// path looks at the rooms first, so that never happens.
    #[inline(always)]
    pub(crate) fn write(&mut self, published: Arc<Published<E>>) -> bool {
        let seq = published.seq;
        let Some(ring) = &self.ring else {
            return false;
        };
        if seq >= self.lowest || seq < self.written {
            return false;
        }
        self.written = seq + 1;
        // SAFETY: this writer made its ring and alone writes to it (`&mut
        // self`). Every reader reported room above `seq`: its cursor had
        // passed `seq - size` and all before it (a room is at most the
        // ring's size past a cursor's next); and the readers are exactly
        // the cursors it made that started at or before `seq` (none starts
        // below what was written) and have not left, each of which reads
        // `seq` once.
        unsafe { ring.write(published, self.readers.len()) };
        true
    }
}
