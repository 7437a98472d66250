//! The ring of a topic, read by its lossless subscriptions (`Block`,
//! `Fail`, whose capacity fits): the publisher writes each event once into
//! a slot, and each subscription keeps its own cursor. The publisher never
//! touches a subscription's lock on the hot path: it keeps a count of the
//! room it last saw and looks again only when that runs out. Slots cannot
//! be overwritten before every ring reader has passed them, because a full
//! lossless subscription stops (or refuses) the publish first.
//!
//! This is the one module of tidings with `unsafe` code, and the one place
//! where state is carried by atomics rather than a lock. A slot's event
//! sits in an `UnsafeCell`, published by a stamp (which event the slot
//! holds) and shared out by a count of the readers still to take it:
//!
//! - the publisher writes a slot only when every reader has taken its
//!   previous event (each reader's cursor moved past it after the read, with
//!   a release that the publisher's look at the cursor's room acquired),
//!   then stores the readers and swaps the stamp in (`Release`);
//! - a reader touches the event only after it saw the stamp of the event
//!   it wants (`Acquire`); every reader but the last clones the `Arc` and
//!   then counts itself out (`AcqRel`), so the last one, which sees a count
//!   of 1, is alone with the event and takes it out: the ring keeps an event
//!   no longer than a queue of its own would;
//! - a reader that finds its slot not written yet sets a waiting bit in the
//!   stamp (a compare-exchange) after putting its waker in the list; the
//!   publisher's swap returns the old stamp, so exactly one of the two sees
//!   the other: either the reader's exchange fails and it reads the event,
//!   or the publisher sees the bit and wakes the list. One bit per slot is
//!   enough because every waiting reader waits for the same event, the next
//!   one to be written; its slot may still hold an event that a reader a
//!   whole ring behind has to take, which reads past the bit.
//!
//! Measured against the per-slot `parking_lot` mutex and the waiter list's
//! mutex it replaces (`cargo run --release -p tidings-benches --example
//! op_cost`, `… --bin icount`), it takes four lock round-trips off every
//! event 1→1 and lets sixteen readers of one slot read at once instead of
//! queueing on its lock. The loom models (`loom_models.rs`) check the
//! three protocols above under every interleaving, and the room counting
//! of a writer and its readers.
//!
//! A slot is only as safe as the bookkeeping that says it is free, so the
//! bookkeeping lives here too, in types whose fields no other module can
//! touch: a reader's place is a [`Cursor`] (`cursor.rs`), which reads each
//! of its sequence numbers once, in order; the publisher's side is the
//! ring's one [`Writer`] (`writer.rs`), which makes the ring and its
//! cursors, counts its readers, and writes a slot only below the room
//! every one of them reported through a [`Room`], which only a cursor
//! makes. The slot's own `write` and `read` are `unsafe fn`s private to
//! this module, each with the contract its caller holds: no edit of safe
//! code elsewhere can break them without writing `unsafe`.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::task::Waker;

use crate::event::Published;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, UnsafeCell};

mod cursor;
mod writer;

pub(crate) use cursor::{Cursor, Room, Take};
pub(crate) use writer::{ReaderRoom, Writer};

/// The largest ring a topic gets; lossless subscriptions with a larger
/// capacity keep their own queue.
pub(crate) const MAX_RING: usize = 1 << 16;

/// The stamp's low bit: a reader waits for this slot to be written.
const WAITING: u64 = 1;

/// The stamp of a slot that holds event `seq` (0: never written). Sequence
/// numbers count publishes from 0 and stay far below 2^62.
#[inline(always)]
fn stamp(seq: u64) -> u64 {
    seq.wrapping_add(1) << 1
}

/// Keeps what it holds on a cache line of its own, so that the publisher's
/// writes to it do not take the line the readers read the ring's fixed
/// fields from.
#[repr(align(128))]
struct Padded<T>(T);

/// One slot of a ring: the event last written there, which one it is, and
/// how many ring readers have still to take it. 24 bytes, aligned to 32 so
/// that no slot straddles two cache lines (a reader that took one slot
/// would otherwise miss twice on the next): in interleaved runs of the
/// bench report, 1→1 and 1→64 gained about 10 % for 8 bytes a slot;
/// aligning to a whole line (64) gained no more.
#[repr(align(32))]
struct RingSlot<E> {
    /// `stamp(seq)` of the event it holds, with the `WAITING` bit.
    stamp: AtomicU64,
    readers: AtomicUsize,
    event: UnsafeCell<Option<Arc<Published<E>>>>,
}

/// The ring of a topic, shared by its lossless subscriptions: slot
/// `seq % size` holds event `seq` until its readers have taken it.
pub(crate) struct Ring<E> {
    slots: Box<[RingSlot<E>]>,
    mask: u64,
    /// One past the last sequence number written. Read by consumers only to
    /// sample their queue depth for the high-water mark: it orders nothing.
    tail: Padded<AtomicU64>,
    /// Ring readers waiting for the next event.
    waiters: Padded<Mutex<Vec<Waker>>>,
    /// An empty list with room, swapped in for `waiters` by a wake-up so
    /// that the next reader to wait allocates nothing.
    spare: Mutex<Vec<Waker>>,
}

// SAFETY: the ring hands `Arc<Published<E>>` from the publisher's thread to
// its readers' (hence `E: Send + Sync`, as for an `Arc` itself), and every
// access to a slot's cell follows the protocol in the module docs, so no
// two threads race on one.
unsafe impl<E: Send + Sync> Sync for Ring<E> {}
// SAFETY: as above; the cells own `Arc`s, which may move between threads
// when `E: Send + Sync`.
unsafe impl<E: Send + Sync> Send for Ring<E> {}

impl<E> Ring<E> {
    /// A ring of at least `capacity` slots (a power of two).
    fn new(capacity: usize) -> Self {
        let size = capacity.clamp(1, MAX_RING).next_power_of_two();
        Ring {
            slots: (0..size)
                .map(|_| RingSlot {
                    stamp: AtomicU64::new(0),
                    readers: AtomicUsize::new(0),
                    event: UnsafeCell::new(None),
                })
                .collect(),
            mask: size as u64 - 1,
            tail: Padded(AtomicU64::new(0)),
            // Room for a few readers, so that the first to wait allocates
            // nothing (wait() runs on the delivery path).
            waiters: Padded(Mutex::new(Vec::with_capacity(4))),
            spare: Mutex::new(Vec::with_capacity(4)),
        }
    }

    fn size(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    fn slot(&self, seq: u64) -> &RingSlot<E> {
        &self.slots[(seq & self.mask) as usize]
    }

    /// Publisher side: stores the event for `readers` ring readers and
    /// wakes those waiting for it. Called by [`Writer::write`] only.
    ///
    /// # Safety
    ///
    /// The caller alone writes to this ring, and the slot of
    /// `published.seq` is free: each reader its previous event was written
    /// for has taken it or given it up (its [`Cursor`] moved past it), so
    /// that no reader touches the cell; and exactly `readers` cursors will
    /// take or give up `published.seq`, each once. A [`Writer`] holds all
    /// of this: it is the only one of its ring, it writes below the room
    /// every reader's cursor reported, and it counts its readers.
    #[inline(always)]
    unsafe fn write(&self, published: Arc<Published<E>>, readers: usize) {
        let seq = published.seq;
        let slot = self.slot(seq);
        debug_assert_eq!(
            slot.readers.load(Ordering::Relaxed),
            0,
            "ring slot overwritten before all its readers took it"
        );
        // SAFETY: no reader touches this cell now (the caller's contract:
        // those of the event it held took it before their cursors moved
        // past it); those waiting for this event touch the cell only after
        // they see the stamp stored below.
        slot.event
            .with_mut(|cell| unsafe { *cell = Some(published) });
        slot.readers.store(readers, Ordering::Relaxed);
        let before = slot.stamp.swap(stamp(seq), Ordering::AcqRel);
        self.tail.0.store(seq.wrapping_add(1), Ordering::Relaxed);
        if before & WAITING != 0 {
            self.wake_all();
        }
    }

    /// Takes event `seq` for one reader, if it has been written. Called by
    /// [`Cursor`] only.
    ///
    /// # Safety
    ///
    /// The caller is one of the readers `seq` is written for, and has not
    /// taken or given it up before: a second take would count it out twice
    /// and let another reader's clone race the last one's take. A
    /// [`Cursor`] holds this: it reads each sequence number from its start
    /// (where the writer began to count it) once, in order, and moves past
    /// it.
    #[inline(always)]
    unsafe fn read(&self, seq: u64) -> Option<Arc<Published<E>>> {
        let slot = self.slot(seq);
        // The waiting bit may be set by a reader a whole ring ahead, which
        // waits for the next event of this slot.
        if slot.stamp.load(Ordering::Acquire) & !WAITING != stamp(seq) {
            return None;
        }
        if slot.readers.load(Ordering::Acquire) == 1 {
            // SAFETY: this reader is the last: every other one counted
            // itself out (after its clone) with a release that this acquire
            // load saw, and the publisher writes the slot again only after
            // this reader's cursor moved past it.
            let event = slot.event.with_mut(|cell| unsafe { (*cell).take() });
            slot.readers.store(0, Ordering::Release);
            return event;
        }
        // SAFETY: the stamp's acquire load saw the publisher's write; until
        // the last reader counts itself out, which is after this clone,
        // readers only read the cell.
        let event = slot.event.with(|cell| unsafe { (*cell).clone() });
        if slot.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: the count reached 0 with this reader: every other
            // reader's clone happened before its own count-out, which this
            // one saw; the publisher waits for this reader's cursor.
            drop(slot.event.with_mut(|cell| unsafe { (*cell).take() }));
        }
        event
    }

    /// Reader side (the one reader of `seq` for its cursor at this moment),
    /// having found event `seq` not written: registers `waker` to be woken
    /// when it is. False if it
    /// was written meanwhile (look again; nothing is registered then, or a
    /// waker that will be woken once for nothing).
    fn wait(&self, seq: u64, waker: &Waker) -> bool {
        let slot = self.slot(seq);
        let mut waiters = self.waiters.0.lock();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        let mut current = slot.stamp.load(Ordering::Acquire);
        loop {
            if current & !WAITING == stamp(seq) {
                return false;
            }
            if current & WAITING != 0 {
                return true;
            }
            match slot.stamp.compare_exchange_weak(
                current,
                current | WAITING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Events queued for a reader at `next` (closed at `end`), sampled from
    /// a tail that may lag: never more than the real depth.
    fn depth(&self, next: u64, end: u64) -> usize {
        self.tail
            .0
            .load(Ordering::Relaxed)
            .min(end)
            .saturating_sub(next) as usize
    }

    /// Wakes the readers that wait at this moment, outside the list's
    /// lock. The list is taken once, whole, and an empty one with room put
    /// in its place: a reader that registers meanwhile waits for the next
    /// wake-up (it looked at the slot after registering, so it misses
    /// nothing), and the publisher never loops on readers that keep
    /// registering anew as it wakes others. Waking never allocates: the two
    /// lists take turns (a fresh list for each wake-up was an allocation
    /// per wake-up, `tests/allocations.rs`).
    pub(crate) fn wake_all(&self) {
        let mut batch = std::mem::take(&mut *self.spare.lock());
        std::mem::swap(&mut *self.waiters.0.lock(), &mut batch);
        batch.drain(..).for_each(Waker::wake);
        let mut spare = self.spare.lock();
        if spare.capacity() < batch.capacity() {
            *spare = batch;
        }
    }
}

#[cfg(all(test, tidings_loom))]
mod loom_models;
