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
//!   previous event (each reader's cursor moved past it under the
//!   subscription's lock, which the publisher took when it last counted the
//!   room), then stores the readers and swaps the stamp in (`Release`);
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
//! queueing on its lock. The loom models at the end of this file check the
//! three protocols above under every interleaving.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::task::Waker;

use crate::event::Published;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, UnsafeCell};

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
    pub(crate) fn new(capacity: usize) -> Self {
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

    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    fn slot(&self, seq: u64) -> &RingSlot<E> {
        &self.slots[(seq & self.mask) as usize]
    }

    /// Publisher side, under the topic lock: stores the event for `readers`
    /// ring readers and wakes those waiting for it. The slot is free: its
    /// previous event was taken by all its readers, or the publish would have
    /// waited.
    #[inline(always)]
    pub(crate) fn write(&self, published: Arc<Published<E>>, readers: usize) {
        let seq = published.seq;
        let slot = self.slot(seq);
        debug_assert_eq!(
            slot.readers.load(Ordering::Relaxed),
            0,
            "ring slot overwritten before all its readers took it"
        );
        // SAFETY: no reader touches this cell now. Those of the event it
        // held took it before their cursors moved past it, which the
        // publisher saw under their locks before it counted the room this
        // write uses (or they left the ring under the topic lock, which this
        // publisher holds); those waiting for this event touch the cell only
        // after they see the stamp stored below.
        slot.event
            .with_mut(|cell| unsafe { *cell = Some(published) });
        slot.readers.store(readers, Ordering::Relaxed);
        let before = slot.stamp.swap(stamp(seq), Ordering::AcqRel);
        self.tail.0.store(seq.wrapping_add(1), Ordering::Relaxed);
        if before & WAITING != 0 {
            self.wake_all();
        }
    }

    /// Takes event `seq` for one reader, if it has been written. Each reader
    /// takes (or `release`s) each of its events exactly once, under its
    /// subscription's lock.
    #[inline(always)]
    pub(super) fn read(&self, seq: u64) -> Option<Arc<Published<E>>> {
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

    /// Reader side, under its subscription's lock, having found event `seq`
    /// not written: registers `waker` to be woken when it is. False if it
    /// was written meanwhile (look again; nothing is registered then, or a
    /// waker that will be woken once for nothing).
    pub(super) fn wait(&self, seq: u64, waker: &Waker) -> bool {
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
    pub(super) fn depth(&self, next: u64, end: u64) -> usize {
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
    pub(super) fn wake_all(&self) {
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
mod loom_models {
    //! `RUSTFLAGS="--cfg tidings_loom" cargo test -p tidings --lib --release loom`

    use super::*;
    use crate::id::EventId;
    use loom::sync::atomic::AtomicUsize as Counter;
    use loom::sync::Arc as LoomArc;
    use loom::thread;
    use std::task::Wake;

    fn event(seq: u64) -> Arc<Published<u64>> {
        Arc::new(Published {
            event: seq,
            id: EventId::for_test(seq),
            seq,
            at: std::time::UNIX_EPOCH,
            meta: None,
        })
    }

    struct Wakes(Counter);
    impl Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A reader that finds nothing and waits is woken by the write, or sees
    /// the event: never neither (no lost wake-up), and it reads what was
    /// written.
    #[test]
    fn loom_a_waiting_reader_is_woken_or_sees_the_event() {
        loom::model(|| {
            let ring = LoomArc::new(Ring::<u64>::new(2));
            let wakes = std::sync::Arc::new(Wakes(Counter::new(0)));
            let writer = {
                let ring = LoomArc::clone(&ring);
                thread::spawn(move || ring.write(event(0), 1))
            };
            let waker = Waker::from(std::sync::Arc::clone(&wakes));
            let got = match ring.read(0) {
                Some(e) => Some(e),
                None if !ring.wait(0, &waker) => ring.read(0),
                None => None,
            };
            writer.join().expect("writer");
            match got {
                Some(e) => assert_eq!(e.event, 0),
                None => {
                    assert!(wakes.0.load(Ordering::SeqCst) >= 1, "lost wake-up");
                    assert_eq!(ring.read(0).map(|e| e.event), Some(0));
                }
            }
        });
    }

    /// Two readers of one slot read it at once: both get the event, and
    /// the ring lets go of it once both have.
    #[test]
    fn loom_two_readers_share_a_slot_and_the_last_lets_go() {
        loom::model(|| {
            let ring = LoomArc::new(Ring::<u64>::new(1));
            let written = event(0);
            let weak = Arc::downgrade(&written);
            ring.write(written, 2);
            let other = {
                let ring = LoomArc::clone(&ring);
                thread::spawn(move || ring.read(0).map(|e| e.event))
            };
            let mine = ring.read(0).map(|e| e.event);
            let theirs = other.join().expect("reader");
            assert_eq!((mine, theirs), (Some(0), Some(0)));
            assert!(weak.upgrade().is_none(), "the ring still holds the event");
        });
    }

    /// A reader a whole ring ahead waits on a slot whose event another
    /// reader has still to take: that one still takes it, and the waiting
    /// one is woken by the next write (the case of a full queue whose
    /// capacity is the ring's size).
    #[test]
    fn loom_a_reader_a_ring_behind_reads_past_a_waiting_bit() {
        loom::model(|| {
            let ring = LoomArc::new(Ring::<u64>::new(1));
            ring.write(event(0), 2);
            let wakes = std::sync::Arc::new(Wakes(Counter::new(0)));
            let ahead = {
                let (ring, wakes) = (LoomArc::clone(&ring), std::sync::Arc::clone(&wakes));
                thread::spawn(move || {
                    assert_eq!(ring.read(0).map(|e| e.event), Some(0));
                    assert!(ring.read(1).is_none());
                    ring.wait(1, &Waker::from(wakes))
                })
            };
            // Once the reader ahead waits (joined: its bit is there to see)…
            let waited = ahead.join().expect("reader");
            assert!(waited, "event 1 was not written before");
            // …the one behind still takes its event.
            assert_eq!(ring.read(0).map(|e| e.event), Some(0), "read past the bit");
            ring.write(event(1), 2);
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken by the write");
            assert_eq!(ring.read(1).map(|e| e.event), Some(1));
        });
    }

    /// A slot is written again only after its reader moved past it (the
    /// cursor under a lock, as a subscription's): the reader gets both
    /// events, in order, and never the cell half written.
    #[test]
    fn loom_a_slot_is_reused_after_its_reader_moved_on() {
        loom::model(|| {
            let ring = LoomArc::new(Ring::<u64>::new(1));
            let cursor = LoomArc::new(Mutex::new(0u64));
            let reader = {
                let (ring, cursor) = (LoomArc::clone(&ring), LoomArc::clone(&cursor));
                thread::spawn(move || {
                    let mut got = Vec::new();
                    while got.len() < 2 {
                        let mut next = cursor.lock();
                        if let Some(e) = ring.read(*next) {
                            got.push(e.event);
                            *next += 1;
                        }
                        drop(next);
                        thread::yield_now();
                    }
                    got
                })
            };
            ring.write(event(0), 1);
            // Room for event 1: the reader's cursor passed event 0.
            while *cursor.lock() < 1 {
                thread::yield_now();
            }
            ring.write(event(1), 1);
            assert_eq!(reader.join().expect("reader"), [0, 1]);
        });
    }
}
