//! Events the bus lets go of while it holds one of its locks (evicted by
//! an overflow policy, discarded, cut off, pushed out of a retained log),
//! kept to be dropped once the lock is released.
//!
//! Dropping the last reference to an event runs user code: the event's
//! `Drop` and its `on_done`. Run under a lock of the bus, that code could
//! not read the stats or publish without deadlocking, and a panic in it
//! would unwind through a half-done publish. So every place that lets go
//! of an event under a lock hands it to a [`Deferred`] instead, and the
//! caller drops that after the guard ([`Deferred::finish`]), catching and
//! counting what panics. A reference that is not the last is let go of at
//! once: that runs no user code.

use std::sync::Arc;

use crate::event::Published;
use crate::watch::{Callback, CallbackLog};

/// Events to drop once no lock of the bus is held. The first is kept in
/// place: a publish that evicts one event allocates nothing for it.
#[must_use = "drop it with `finish` once the lock is released"]
pub(crate) struct Deferred<E> {
    first: Option<Published<E>>,
    rest: Vec<Published<E>>,
    /// Queued copies of events with an `on_done`, whose holds are released
    /// (which may run `on_done`) once the lock is released.
    held: Vec<Arc<Published<E>>>,
}

impl<E> Deferred<E> {
    #[inline]
    pub(crate) fn new() -> Self {
        Deferred {
            first: None,
            rest: Vec::new(),
            held: Vec::new(),
        }
    }

    /// A subscription lets go of an event it queued (evicted, discarded,
    /// cut off): its hold on the event is released, and its reference let
    /// go of, once the lock is released.
    #[inline]
    pub(crate) fn let_go(&mut self, published: Arc<Published<E>>) {
        if published.done().is_some() {
            self.held.push(published);
        } else {
            self.drop_copy(published);
        }
    }

    /// A log lets go of its copy of an event (which holds nothing): if it
    /// was the last reference, the event is kept here, to be dropped later.
    #[inline]
    pub(crate) fn drop_copy(&mut self, published: Arc<Published<E>>) {
        if let Some(last) = Arc::into_inner(published) {
            self.keep(last);
        }
    }

    #[cold]
    fn keep(&mut self, last: Published<E>) {
        if self.first.is_none() {
            self.first = Some(last);
        } else {
            self.rest.push(last);
        }
    }

    /// Drops the events, with no lock of the bus held: each `on_done` and
    /// each event's `Drop` runs here, a panic in either caught and counted
    /// in `log`.
    #[inline]
    pub(crate) fn finish(self, log: &CallbackLog) {
        if self.first.is_some() || !self.held.is_empty() {
            self.drop_all(log);
        }
    }

    #[cold]
    #[inline(never)]
    fn drop_all(mut self, log: &CallbackLog) {
        for published in std::mem::take(&mut self.held) {
            // `on_done` catches its own panics.
            published.release();
            self.drop_copy(published);
        }
        let rest = std::mem::take(&mut self.rest);
        for last in self.first.take().into_iter().chain(rest) {
            let Published { meta, event, .. } = last;
            // The metadata first, as `Published` drops it: `on_done`
            // catches its own panics.
            drop(meta);
            log.run(Callback::Drop, move || drop(event));
        }
    }
}

impl<E> Drop for Deferred<E> {
    fn drop(&mut self) {
        debug_assert!(
            (self.first.is_none() && self.held.is_empty()) || std::thread::panicking(),
            "events let go of under a lock were dropped without `finish`"
        );
    }
}
