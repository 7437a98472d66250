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
//!
//! Every publish makes one, so an empty one costs two stores and two tests
//! (the icount gate's `publish_block`): no `Drop` of its own, the rare
//! parts boxed.

use std::sync::Arc;

use crate::event::Published;
use crate::watch::{Callback, CallbackLog};

/// References to events to let go of once no lock of the bus is held. The
/// first is kept in place: a publish that evicts one event allocates
/// nothing for it. Letting go of a reference later rather than now is the
/// same to everyone else: if it turns out to be the last, the event is
/// dropped here, outside the lock; if not, whoever holds the last drops it.
#[must_use = "drop it with `finish` once the lock is released"]
pub(crate) struct Deferred<E> {
    first: Option<Arc<Published<E>>>,
    more: Option<Box<More<E>>>,
}

/// What a [`Deferred`] rarely holds.
struct More<E> {
    /// References beyond the first.
    rest: Vec<Arc<Published<E>>>,
    /// Queued copies of events with an `on_done`, whose holds are released
    /// (which may run `on_done`) once the lock is released.
    held: Vec<Arc<Published<E>>>,
}

impl<E> Deferred<E> {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Deferred {
            first: None,
            more: None,
        }
    }

    #[cold]
    fn more(&mut self) -> &mut More<E> {
        self.more.get_or_insert_with(|| {
            Box::new(More {
                rest: Vec::new(),
                held: Vec::new(),
            })
        })
    }

    /// A subscription lets go of an event it queued (evicted, discarded,
    /// cut off): its hold on the event is released, and its reference let
    /// go of, once the lock is released.
    #[inline]
    pub(crate) fn let_go(&mut self, published: Arc<Published<E>>) {
        if published.done().is_some() {
            self.more().held.push(published);
        } else {
            self.drop_copy(published);
        }
    }

    /// A log lets go of its copy of an event (which holds nothing).
    #[inline]
    pub(crate) fn drop_copy(&mut self, published: Arc<Published<E>>) {
        if self.first.is_none() {
            self.first = Some(published);
        } else {
            self.more().rest.push(published);
        }
    }

    /// Lets go of the references, with no lock of the bus held: each
    /// `on_done` and each event's `Drop` that runs does so here, a panic in
    /// either caught and counted in `log`.
    #[inline(always)]
    pub(crate) fn finish(self, log: &CallbackLog) {
        let Deferred { first, more } = self;
        if let Some(published) = first {
            let_go_now(published, log);
        }
        if let Some(more) = more {
            more.finish(log);
        }
    }
}

impl<E> More<E> {
    #[cold]
    #[inline(never)]
    fn finish(self, log: &CallbackLog) {
        for published in self.held {
            // `on_done` catches its own panics.
            published.release();
            let_go_now(published, log);
        }
        for published in self.rest {
            let_go_now(published, log);
        }
    }
}

/// Lets go of one reference: if it is the last, the event is dropped, its
/// `on_done` first (which catches its own panics), then the event, whose
/// `Drop` panicking is caught and counted.
#[inline]
fn let_go_now<E>(published: Arc<Published<E>>, log: &CallbackLog) {
    log.run(Callback::Drop, move || drop(published));
}
