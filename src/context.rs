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

use crate::id::{BusId, Cause, SubscriptionId};

/// The handler runner a thread is working for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunnerOf {
    pub(crate) bus: BusId,
    pub(crate) subscription: SubscriptionId,
}

thread_local! {
    static CURRENT: Cell<Option<RunnerOf>> = const { Cell::new(None) };
    /// The cause of what a handler publishes: the event it handles.
    static CAUSE: RefCell<Option<Cause>> = const { RefCell::new(None) };
}

/// The cause of a publish made here and now: the event being handled, if
/// a handler is running on this thread.
pub(crate) fn cause() -> Option<Cause> {
    CAUSE.with(|c| c.borrow().clone())
}

/// Runs `f` with `cause` as the cause of what it publishes.
pub(crate) fn with_cause<R>(cause: Cause, f: impl FnOnce() -> R) -> R {
    let mut slot = Some(cause);
    swap_cause(&mut slot);
    struct Restore(Option<Cause>);
    impl Drop for Restore {
        fn drop(&mut self) {
            swap_cause(&mut self.0);
        }
    }
    let _restore = Restore(slot);
    f()
}

fn swap_cause(slot: &mut Option<Cause>) {
    CAUSE.with(|c| std::mem::swap(&mut *c.borrow_mut(), slot));
}

/// `fut`, polled with `cause` as the cause of what it publishes.
pub(crate) async fn caused<F: Future>(cause: Cause, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut slot = Some(cause);
    std::future::poll_fn(move |cx| {
        swap_cause(&mut slot);
        struct Restore<'a>(&'a mut Option<Cause>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                swap_cause(self.0);
            }
        }
        let _restore = Restore(&mut slot);
        fut.as_mut().poll(cx)
    })
    .await
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
        };
        let b = RunnerOf {
            bus: BusId::next(),
            subscription: SubscriptionId::next(),
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
