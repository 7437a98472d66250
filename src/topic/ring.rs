//! The ring of a topic, read by its lossless subscriptions (`Block`,
//! `Fail`, whose capacity fits): the publisher writes each event once into
//! a slot, and each subscription keeps its own cursor. The publisher never
//! touches a subscription's lock on the hot path: it keeps a count of the
//! room it last saw and looks again only when that runs out. Slots cannot
//! be overwritten before every ring reader has passed them, because a full
//! lossless subscription stops (or refuses) the publish first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;

use crate::event::Published;

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
    pub(super) waiters: Mutex<Vec<Waker>>,
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
    pub(super) fn read(&self, seq: u64) -> Option<Arc<Published<E>>> {
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
    pub(super) fn release(&self, seq: u64) {
        drop(self.read(seq));
    }

    /// Events queued for a reader at `next` (closed at `end`), sampled from
    /// a tail that may lag: never more than the real depth.
    pub(super) fn depth(&self, next: u64, end: u64) -> usize {
        self.tail
            .load(Ordering::Relaxed)
            .min(end)
            .saturating_sub(next) as usize
    }

    /// Wakes every waiting reader. The list is swapped with a spare buffer
    /// kept by this thread, so that waking allocates nothing: on the hot
    /// path one reader registers and is woken per event, and a fresh list
    /// each time was a `malloc`/`free` pair per event.
    pub(super) fn wake_all(&self) {
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
