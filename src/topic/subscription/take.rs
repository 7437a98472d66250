//! A subscription's readers: a stream, which takes from the ring without
//! the lock while it can (`Cursor::try_take`), and handler runners and
//! queues of their own, which take under it; and who they wake.

#[cfg(test)]
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use parking_lot::MutexGuard;

use super::queue::{Buf, State, Wakeups};
use super::SubscriptionState;
use crate::errors::TryRecvError;
use crate::event::Envelope;
use crate::info::SubscriberKind;
use crate::topic::ring::{Cursor, Take};

impl<E> SubscriptionState<E> {
    #[inline]
    fn pop_locked(&self, s: &mut State<E>, wakeups: &mut Wakeups) -> Option<Envelope<E>> {
        let slot = s.take()?;
        self.metrics.delivered(|| s.depth_hint());
        if self.info.kind != SubscriberKind::Stream {
            s.in_flight += 1;
        }
        // Nobody to wake, on the hot path: no list to take.
        if !(s.publishers.is_empty() && s.idle.is_empty()) {
            self.wake_waiters(s, wakeups);
        }
        if let Some(cursor) = &self.fast {
            if s.replay.is_empty() && !s.closed {
                // Its retained events are read: the stream takes without
                // the lock from now on.
                cursor.unlock();
            }
        }
        Some(Envelope::delivered(slot.published, slot.missed_before))
    }

    /// Under the lock, after a take: the publishers waiting for room, and
    /// shutdown if it may have something to see. A ring cursor is asked to
    /// call again while anyone is left waiting.
    fn wake_waiters(&self, s: &mut State<E>, wakeups: &mut Wakeups) {
        if let Buf::Ring(cursor) = &s.buf {
            cursor.waiters_woken();
        }
        wakeups.take_all(&mut s.publishers);
        s.wake_idle(wakeups);
        if let Buf::Ring(cursor) = &s.buf {
            if !s.idle.is_empty() {
                cursor.note_waiter();
            }
        }
    }

    /// A take without the lock found someone waiting to hear that the
    /// cursor moved.
    #[cold]
    #[inline(never)]
    fn woken_by_take(&self) {
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        self.wake_waiters(&mut s, &mut wakeups);
        drop(s);
        wakeups.wake();
    }

    /// A stream's take without the lock: `None` to take under the lock
    /// instead; `Some(Pending)` having registered `waker` for the next
    /// event.
    #[inline(always)]
    fn take_fast(&self, cursor: &Cursor<E>, waker: Option<&Waker>) -> Option<Poll<Envelope<E>>> {
        loop {
            match cursor.try_take() {
                Take::Taken {
                    published,
                    depth,
                    wake,
                } => {
                    self.metrics
                        .delivered(|| depth.unwrap_or_else(|| cursor.depth()));
                    if wake {
                        self.woken_by_take();
                    }
                    return Some(Poll::Ready(Envelope::delivered(published, 0)));
                }
                Take::Locked => return None,
                Take::Empty => {
                    let waker = waker?;
                    if !cursor.wait(waker) {
                        // Written meanwhile.
                        continue;
                    }
                    // A close that locked the cursor meanwhile wakes the
                    // ring's readers after: seen here, or woken by it.
                    if cursor.is_locked() {
                        return None;
                    }
                    #[cfg(test)]
                    self.waits.fetch_add(1, Ordering::Relaxed);
                    return Some(Poll::Pending);
                }
            }
        }
    }

    /// Consumer side: the next event, `None` once closed and drained.
    pub(crate) fn poll_pop(
        &self,
        cx: &mut Context<'_>,
        consumer: usize,
    ) -> Poll<Option<Envelope<E>>> {
        if let Some(cursor) = &self.fast {
            if let Some(taken) = self.take_fast(cursor, Some(cx.waker())) {
                return taken.map(Some);
            }
        }
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        if let Some(env) = self.pop_locked(&mut s, &mut wakeups) {
            return hand_out(s, env, consumer, wakeups);
        }
        if s.watcher == Some(consumer) {
            // Woken by the ring (or polled again): it watches no longer.
            s.watcher = None;
        }
        if s.closed && s.drained() {
            return Poll::Ready(None);
        }
        if let Buf::Ring(cursor) = &s.buf {
            if s.watcher.is_some() {
                // A sibling waits on the ring for the subscription; this
                // one waits for whoever takes the next event.
                park(&mut s.consumers[consumer], cx.waker());
                #[cfg(test)]
                self.waits.fetch_add(1, Ordering::Relaxed);
                return Poll::Pending;
            }
            // Waits for the slot it wants; should the publisher have
            // written it meanwhile, it is there to take now.
            if cursor.wait(cx.waker()) {
                s.watcher = Some(consumer);
                #[cfg(test)]
                self.waits.fetch_add(1, Ordering::Relaxed);
                return Poll::Pending;
            }
            if let Some(env) = self.pop_locked(&mut s, &mut wakeups) {
                return hand_out(s, env, consumer, wakeups);
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        park(&mut s.consumers[consumer], cx.waker());
        #[cfg(test)]
        self.waits.fetch_add(1, Ordering::Relaxed);
        Poll::Pending
    }

    /// Consumer side, never waiting.
    pub(crate) fn try_pop(&self) -> Result<Envelope<E>, TryRecvError> {
        if let Some(cursor) = &self.fast {
            match self.take_fast(cursor, None) {
                Some(Poll::Ready(env)) => return Ok(env),
                // Not written, and it is still open (else `Locked`).
                Some(Poll::Pending) | None if !cursor.is_locked() => {
                    return Err(TryRecvError::Empty)
                }
                _ => {}
            }
        }
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
}

/// Hands out an event taken under the lock: passes the watch of the ring on
/// to a sibling if there are any, lets go of the lock, then wakes.
#[inline(always)]
fn hand_out<E>(
    mut s: MutexGuard<'_, State<E>>,
    env: Envelope<E>,
    consumer: usize,
    mut wakeups: Wakeups,
) -> Poll<Option<Envelope<E>>> {
    if s.consumers.len() > 1 {
        pass_on(&mut s, consumer, &mut wakeups);
    }
    drop(s);
    wakeups.wake();
    Poll::Ready(Some(env))
}

/// Keeps `waker` in a consumer's slot, to be woken when it may take.
fn park(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        slot => *slot = Some(waker.clone()),
    }
}

/// A consumer of a subscription with siblings took an event: if it was
/// the ring's watcher, it is no longer; and if nobody watches the ring, it
/// wakes one waiting sibling, which takes the next event or becomes the
/// watcher. A queue of its own needs no passing on: each push wakes one
/// consumer.
#[cold]
#[inline(never)]
fn pass_on<E>(s: &mut State<E>, consumer: usize, wakeups: &mut Wakeups) {
    if s.watcher == Some(consumer) {
        s.watcher = None;
    }
    if s.watcher.is_some() || !matches!(s.buf, Buf::Ring(_)) {
        return;
    }
    let sibling = s
        .consumers
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != consumer)
        .find_map(|(_, slot)| slot.take());
    if let Some(waker) = sibling {
        wakeups.push(waker);
    }
}
