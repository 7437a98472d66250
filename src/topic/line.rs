//! The line of waiting publishers ([`Line`]): first come, first served.
//! Only the first in line looks for room (and is woken by the subscription
//! that makes some); the others wait their turn, and a publisher that
//! leaves the line (done, timed out, or dropped, its [`Turn`]) wakes the
//! next. The line names the subscription it waits for ([`FullSub`]), and a
//! publisher that gives up is refused naming it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use super::{SubscriptionState, TopicState};
use crate::errors::{PublishError, Refusal};
use crate::event::Event;

/// A subscription with no room, as found by a publish.
pub(super) struct FullSub<E> {
    pub(super) subscription: Arc<SubscriptionState<E>>,
}

impl<E> FullSub<E> {
    pub(super) fn of(subscription: &Arc<SubscriptionState<E>>) -> Self {
        FullSub {
            subscription: Arc::clone(subscription),
        }
    }
}

impl<E: Event> FullSub<E> {
    /// The refusal of a publish that could not wait for this subscription.
    pub(super) fn refuse(self, event: E) -> PublishError<E> {
        let info = &self.subscription.info;
        let reason = Refusal::Full {
            topic: E::TOPIC,
            subscription: Arc::clone(&info.name),
            id: info.id,
            capacity: info.capacity,
            policy: info.policy,
        };
        PublishError::new(reason, event)
    }

    /// The refusal of a publish that waited `waited` and gave up.
    pub(super) fn timed_out(self, event: E, waited: Duration) -> PublishError<E> {
        let info = &self.subscription.info;
        let reason = Refusal::Timeout {
            topic: E::TOPIC,
            subscription: Arc::clone(&info.name),
            id: info.id,
            capacity: info.capacity,
            waited,
        };
        PublishError::new(reason, event)
    }
}

/// A waiting publisher's place in its topic's line.
pub(super) struct Turn<'a, E: Event> {
    topic: &'a TopicState<E>,
    pub(super) ticket: Option<u64>,
}

impl<'a, E: Event> Turn<'a, E> {
    pub(super) fn new(topic: &'a TopicState<E>) -> Self {
        Turn {
            topic,
            ticket: None,
        }
    }
}

impl<E: Event> Drop for Turn<'_, E> {
    /// Takes its ticket out of the line and wakes whoever is first now
    /// (outside the topic's lock).
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let next = self.topic.inner.lock().line.leave(&mut Some(ticket));
            if let Some(next) = next {
                next.wake();
            }
        }
    }
}

/// The publishers of one topic waiting for room, oldest first, each with
/// its ticket and waker; it lives under the topic's lock. Only the first
/// looks for room (and is woken by the subscription that makes some); the
/// others wait their turn, so room goes to publishers in the order they
/// started waiting instead of to whoever wins a race.
pub(crate) struct Line<E> {
    waiting: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    /// The subscription the first in line last found full: what a waiting
    /// publisher's timeout names.
    blocking: Option<Arc<SubscriptionState<E>>>,
}

impl<E> Line<E> {
    pub(super) fn new() -> Self {
        Line {
            waiting: VecDeque::new(),
            next_ticket: 0,
            blocking: None,
        }
    }

    /// Whether nobody waits: the hot path's only look at the line.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Every waiting publisher's waker, to look again (at shutdown).
    pub(super) fn wakers(&self) -> impl Iterator<Item = Waker> + '_ {
        self.waiting.iter().map(|(_, waker)| waker.clone())
    }

    /// Takes the last place for a caller with none (`turn` then holds it).
    fn join(&mut self, turn: &mut Option<u64>, waker: &Waker) {
        if turn.is_none() {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.waiting.push_back((ticket, waker.clone()));
            *turn = Some(ticket);
        }
    }

    /// A publish found `full` without room and will wait: it joins the line
    /// (unless it is in it already), and `full` is what the line waits for.
    pub(super) fn wait_for(&mut self, full: &FullSub<E>, turn: &mut Option<u64>, waker: &Waker) {
        self.join(turn, waker);
        self.blocking = Some(Arc::clone(&full.subscription));
    }

    /// Whether a caller that may wait must wait its turn (and what to name
    /// as the full subscription), refreshing its waker in the line. `None`:
    /// it is first in line, or nobody waits, so it looks for room.
    #[cold]
    #[inline(never)]
    pub(super) fn wait_in_line(
        &mut self,
        turn: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Option<FullSub<E>> {
        let first = self.waiting.front().map(|(ticket, _)| *ticket)?;
        let full = FullSub::of(self.blocking.as_ref()?);
        match *turn {
            Some(mine) if mine == first => None,
            Some(mine) => {
                if let Some((_, waker)) = self.waiting.iter_mut().find(|(t, _)| *t == mine) {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                }
                Some(full)
            }
            None => {
                self.join(turn, cx.waker());
                Some(full)
            }
        }
    }

    /// Takes `turn`'s ticket out of the line; if it was first, returns the
    /// waker of the new first, to wake once the topic's lock is released.
    #[inline(never)]
    pub(super) fn leave(&mut self, turn: &mut Option<u64>) -> Option<Waker> {
        let ticket = turn.take()?;
        let at = self.waiting.iter().position(|(t, _)| *t == ticket)?;
        self.waiting.remove(at);
        if self.waiting.is_empty() {
            self.blocking = None;
        }
        if at == 0 {
            self.waiting.front().map(|(_, waker)| waker.clone())
        } else {
            None
        }
    }
}
