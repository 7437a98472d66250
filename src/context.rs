//! Which handler run, of which bus, the current thread is working for.
//!
//! Shutdown needs to tell a follow-on publish made by one of the bus's own
//! handlers (accepted while the bus drains, so that chains of handlers
//! finish) from a publish made by the rest of the application (refused at
//! once). A handler that unsubscribes its own subscription, or shuts the bus
//! down, must not wait for itself. Both look here.
//!
//! Runners set the context around every poll of their task (async) or for
//! the life of their thread (sync), so it covers the handler, its retries
//! and the dead letter it may publish. Work a handler hands to a task of its
//! own (`tokio::spawn`) is outside it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::id::{BusId, Cause, EventId, EventRef, SubscriptionId};

/// The handler runner a thread is working for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunnerOf {
    pub(crate) bus: BusId,
    pub(crate) subscription: SubscriptionId,
    /// The subscription's topic: that of the events its handler handles.
    pub(crate) topic: &'static str,
}

thread_local! {
    static CURRENT: Cell<Option<RunnerOf>> = const { Cell::new(None) };
    /// The cause of what a handler publishes, when its event is local: a
    /// `Copy` cell, so a publish reads it without touching anything that
    /// needs dropping (the cheap kind of thread-local).
    static CAUSE: Cell<Slot> = const { Cell::new(Slot::EMPTY) };
    /// The cause when it names an event of another process (`REMOTE`).
    static REMOTE_CAUSE: RefCell<Option<Box<Cause>>> = const { RefCell::new(None) };
}

/// What `CAUSE` holds: the two ids of a cause whose events are both local,
/// packed into two words (`EMPTY` and `REMOTE` in `caused_by` say there is
/// none, or that it is in `REMOTE_CAUSE`). The topic of `caused_by` is the
/// topic of the runner the thread works for (`CURRENT`): a handler's cause
/// is the event it handles. Two words, not three: the slot rides in every
/// handler's future, and with the topic in it a handler run measured 5 %
/// more instructions (the icount gate's `handler_c1`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Slot {
    caused_by: u64,
    correlation: u64,
}

/// No cause (event ids start at 1).
const EMPTY: u64 = 0;
/// The cause is in `REMOTE_CAUSE`.
const REMOTE: u64 = u64::MAX;

impl Slot {
    const EMPTY: Slot = Slot {
        caused_by: EMPTY,
        correlation: EMPTY,
    };
    const REMOTE: Slot = Slot {
        caused_by: REMOTE,
        correlation: REMOTE,
    };

    /// Both local; `None` if an id would read as a marker.
    fn local(caused_by: EventId, correlation: EventId) -> Option<Slot> {
        let (c, r) = (caused_by.get(), correlation.get());
        let plain = |id: u64| id != EMPTY && id != REMOTE;
        (plain(c) && plain(r)).then_some(Slot {
            caused_by: c,
            correlation: r,
        })
    }
}

/// Whether a handler's run on this thread set a cause for what it
/// publishes (one read of a `Copy` thread-local: the publish path's check).
#[inline]
pub(crate) fn handling() -> bool {
    CAUSE.with(Cell::get).caused_by != EMPTY
}

/// The cause of a publish made here and now: the event being handled, if
/// a handler is running on this thread.
#[cold]
pub(crate) fn cause() -> Option<Cause> {
    match CAUSE.with(Cell::get) {
        Slot {
            caused_by: EMPTY, ..
        } => None,
        Slot {
            caused_by: REMOTE, ..
        } => REMOTE_CAUSE.with(|c| c.borrow().as_deref().cloned()),
        Slot {
            caused_by,
            correlation,
        } => Some(Cause {
            caused_by: EventRef::Local(EventId::from_raw(caused_by)),
            correlation: EventRef::Local(EventId::from_raw(correlation)),
            topic: current().map(|r| r.topic),
        }),
    }
}

/// A cause, held by whoever sets it around a handler's run, and swapped
/// with the thread's while it runs.
pub(crate) struct Held {
    slot: Slot,
    /// Boxed: it rides in every handler's future, and is rarely there.
    remote: Option<Box<Cause>>,
}

impl Held {
    /// The cause of what is published while handling a local event of
    /// this id and topic that nothing caused.
    #[inline]
    pub(crate) fn root(id: EventId, topic: &'static str) -> Self {
        match Slot::local(id, id) {
            Some(slot) => Held { slot, remote: None },
            None => Held::new(Cause {
                caused_by: EventRef::Local(id),
                correlation: EventRef::Local(id),
                topic: Some(topic),
            }),
        }
    }

    pub(crate) fn new(cause: Cause) -> Self {
        if let (EventRef::Local(c), EventRef::Local(r)) = (&cause.caused_by, &cause.correlation) {
            if let Some(slot) = Slot::local(*c, *r) {
                return Held { slot, remote: None };
            }
        }
        Held {
            slot: Slot::REMOTE,
            remote: Some(Box::new(cause)),
        }
    }

    /// Puts this cause in place of the thread's (and the thread's here).
    #[inline]
    fn swap(&mut self) {
        let was = CAUSE.with(|c| c.replace(self.slot));
        if was.caused_by == REMOTE || self.slot.caused_by == REMOTE {
            REMOTE_CAUSE.with(|c| std::mem::swap(&mut *c.borrow_mut(), &mut self.remote));
        }
        self.slot = was;
    }
}

/// Runs `f` with `cause` as the cause of what it publishes.
pub(crate) fn with_cause<R>(cause: Held, f: impl FnOnce() -> R) -> R {
    struct Restore(Held);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.swap();
        }
    }
    let mut held = cause;
    held.swap();
    let _restore = Restore(held);
    f()
}

pin_project_lite::pin_project! {
    /// A handler's future, polled with the cause of what it publishes.
    pub(crate) struct Caused<F> {
        held: Held,
        #[pin]
        fut: F,
    }
}

impl<F> Caused<F> {
    pub(crate) fn new(cause: Held, fut: F) -> Self {
        Caused { held: cause, fut }
    }
}

impl<F: Future> Future for Caused<F> {
    type Output = F::Output;
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.held.swap();
        // No guard for the way back: the handler's future catches its own
        // panics (`catch_unwind` inside this), so this poll returns.
        let polled = this.fut.poll(cx);
        this.held.swap();
        polled
    }
}

/// The runner this thread is working for, if any.
pub(crate) fn current() -> Option<RunnerOf> {
    CURRENT.with(Cell::get)
}

/// Whether this thread is running a handler of bus `bus`.
pub(crate) fn inside(bus: BusId) -> bool {
    current().is_some_and(|r| r.bus == bus)
}

/// Sets the context until dropped, then restores the one before.
pub(crate) struct Entered(Option<RunnerOf>);

pub(crate) fn enter(runner: RunnerOf) -> Entered {
    Entered(CURRENT.with(|c| c.replace(Some(runner))))
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A runner's future, polled inside its context.
pub(crate) struct InRunner<F> {
    runner: RunnerOf,
    fut: Pin<Box<F>>,
}

impl<F: Future> InRunner<F> {
    pub(crate) fn new(runner: RunnerOf, fut: F) -> Self {
        InRunner {
            runner,
            fut: Box::pin(fut),
        }
    }
}

impl<F: Future> Future for InRunner<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _entered = enter(self.runner);
        self.fut.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_nests_and_restores() {
        let a = RunnerOf {
            bus: BusId::next(),
            subscription: SubscriptionId::next(),
            topic: "a",
        };
        let b = RunnerOf {
            bus: BusId::next(),
            subscription: SubscriptionId::next(),
            topic: "b",
        };
        assert_eq!(current(), None);
        {
            let _a = enter(a);
            assert!(inside(a.bus) && !inside(b.bus));
            {
                let _b = enter(b);
                assert_eq!(current(), Some(b));
            }
            assert_eq!(current(), Some(a), "the outer context is back");
        }
        assert_eq!(current(), None);
    }
}
