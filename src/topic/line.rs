//! The line of waiting publishers: first come, first served. Only the
//! first in line looks for room (and is woken by the subscription that
//! makes some); the others wait their turn, and a publisher that leaves the
//! line (done, timed out, or dropped) wakes the next. The line names the
//! subscription it waits for ([`FullSub`]), and a publisher that gives up
//! is refused naming it.

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use super::{SubscriptionState, TopicInner, TopicState};
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
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.topic.leave(ticket);
        }
    }
}

/// Under the topic lock: whether a caller that may wait must wait its turn
/// (and what to name as the full subscription), refreshing its waker in the
/// line. `None`: it is first in line, or nobody waits, so it looks for room.
#[cold]
#[inline(never)]
pub(super) fn wait_in_line<E>(
    inner: &mut TopicInner<E>,
    turn: &mut Option<u64>,
    cx: &mut Context<'_>,
) -> Option<FullSub<E>> {
    let first = inner.line.front().map(|(ticket, _)| *ticket)?;
    let blocking = inner.blocking.as_ref()?;
    let full = FullSub::of(blocking);
    match *turn {
        Some(mine) if mine == first => None,
        Some(mine) => {
            if let Some((_, waker)) = inner.line.iter_mut().find(|(t, _)| *t == mine) {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            Some(full)
        }
        None => {
            let ticket = inner.next_ticket;
            inner.next_ticket += 1;
            inner.line.push_back((ticket, cx.waker().clone()));
            *turn = Some(ticket);
            Some(full)
        }
    }
}

/// Under the topic lock: takes `turn`'s ticket out of the line; if it was
/// first, returns the waker of the new first, to wake once the lock is
/// released.
#[inline(never)]
pub(super) fn leave_line<E>(inner: &mut TopicInner<E>, turn: &mut Option<u64>) -> Option<Waker> {
    let ticket = turn.take()?;
    let at = inner.line.iter().position(|(t, _)| *t == ticket)?;
    inner.line.remove(at);
    if inner.line.is_empty() {
        inner.blocking = None;
    }
    if at == 0 {
        inner.line.front().map(|(_, waker)| waker.clone())
    } else {
        None
    }
}

impl<E: Event> TopicState<E> {
    /// Takes `ticket` out of the line and wakes whoever is first now.
    fn leave(&self, ticket: u64) {
        let next = {
            let mut inner = self.inner.lock();
            let mut turn = Some(ticket);
            leave_line(&mut inner, &mut turn)
        };
        if let Some(next) = next {
            next.wake();
        }
    }
}
