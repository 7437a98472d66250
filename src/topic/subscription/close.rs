//! A subscription's end: closing it, shutdown's questions (is it quiet,
//! is it idle), and the cut at shutdown's deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::queue::{register, Buf, RingView, Slot, Wakeups};
use super::SubscriptionState;
use crate::topic::deferred::Deferred;

impl<E> SubscriptionState<E> {
    /// Closes the queue, under the topic lock: it takes no new event and its
    /// consumers end once it is empty. With `discard`, what it still holds is
    /// dropped and counted as discarded; without, a ring subscription that
    /// leaves the topic (`leaving`) copies what it has still to read out of
    /// the ring, which will be overwritten once it no longer holds the
    /// publisher back. `view` is the publisher side's knowledge of a ring
    /// subscription. Returns how many events were discarded; they go to
    /// `dropped`, for the caller to let go of once it holds no lock.
    pub(crate) fn close(
        &self,
        discard: bool,
        leaving: bool,
        view: Option<RingView>,
        dropped: &mut Deferred<E>,
    ) -> u64 {
        let mut wakeups = Wakeups::default();
        let mut guard = self.state.lock();
        let s = &mut *guard;
        if !s.closed {
            if let (Buf::Ring(cursor), Some(view)) = (&s.buf, view) {
                cursor.close(view.tail);
                s.counters.accepted = view.tail - cursor.start() + s.counters.replayed;
            }
        }
        s.closed = true;
        let discarded = if discard { s.clear(dropped) } else { 0 };
        s.counters.discarded += discarded;
        self.metrics.discarded(discarded);
        let mut ring_readers = None;
        if let Buf::Ring(cursor) = &s.buf {
            ring_readers = Some(Arc::clone(cursor.ring()));
            if leaving {
                let mut own = VecDeque::with_capacity(cursor.place().left());
                s.counters.ring_passed += cursor.take_rest(|published| {
                    own.push_back(Slot {
                        published,
                        missed_before: 0,
                    });
                });
                // From here on it counts its deliveries as a queue of its
                // own does.
                let from_ring = cursor.place().passed();
                s.counters.delivered += from_ring.saturating_sub(s.counters.ring_passed);
                s.counters.high_water = s.counters.high_water.max(cursor.high_water());
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
        if let Buf::Ring(cursor) = &s.buf {
            // A stream that takes without the lock sees the flag, or took
            // before and the look below counts it.
            cursor.note_waiter();
            return s.is_quiet(view, own_runs);
        }
        false
    }

    /// Whether it is closed, empty and no handler runs (an unsubscribed
    /// subscription that finished draining).
    pub(crate) fn is_idle(&self) -> bool {
        self.state.lock().is_idle()
    }
}

/// What shutdown needs of a queue without knowing its event type.
pub(crate) trait ErasedQueue: Send + Sync {
    /// Ready once the queue is closed, empty and no handler runs.
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()>;
    /// The deadline passed: drop what is queued (counted as cut off) and stop
    /// async handler tasks, returning them to wait for (a task in the middle
    /// of a poll stops only once that poll is over), and the runners of a
    /// blocking handler (not waited for). The queue is closed already.
    fn cut_off(&self) -> Vec<tokio::task::JoinHandle<()>>;
}

impl<E: Send + Sync + 'static> ErasedQueue for SubscriptionState<E> {
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
        let mut dropped = Deferred::new();
        {
            let mut s = self.state.lock();
            if let Buf::Ring(cursor) = &s.buf {
                // Closed already; should it not be, no stream takes without
                // the lock past the cut.
                cursor.lock();
            }
            s.closed = true;
            s.cut = true;
            let n = s.clear(&mut dropped);
            s.counters.cut_off += n;
            self.metrics.discarded(n);
            for w in s.consumers.iter_mut().filter_map(Option::take) {
                wakeups.push(w);
            }
            s.wake_idle(&mut wakeups);
        }
        wakeups.wake();
        dropped.finish(&self.callbacks);
        // Runners on a pool are not waited for: one whose handler never
        // returns would hold the shutdown past its deadline. It is counted
        // in flight, and stops once its run is over.
        let runners = std::mem::take(&mut *self.pool_runners.lock());
        for runner in &runners {
            runner.abort();
        }
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in &tasks {
            task.abort();
        }
        tasks
    }
}
