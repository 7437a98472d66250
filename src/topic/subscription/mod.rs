//! A subscription's state and everything done to it, in one folder: here
//! the state itself and its publisher side (room, pushes, drops) and its
//! numbers; its readers in `take.rs`; its end (close, shutdown's questions,
//! the cut) in `close.rs`; its handler runners' side in `handling.rs`; and
//! what lives under its lock in `queue.rs`.

mod close;
mod handling;
mod queue;
mod take;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

use parking_lot::Mutex;

pub(crate) use close::ErasedQueue;
pub(crate) use handling::Final;
use queue::{register, Buf, Counters, Slot, State};
pub(crate) use queue::{Push, QueueSetup, RingView};

use super::breaker::Breaker;
use super::deferred::Deferred;
use super::ring::{Cursor, Room};
use crate::config::{Overflow, WatchConfig};
use crate::event::Published;
use crate::hist::Sharded;
use crate::info::{SubInfo, SubscriberKind};
use crate::pool::PoolRunner;
use crate::resume::Started;
use crate::stats::SubscriptionStats;
use crate::telemetry::{self, SubMetrics};
use crate::watch::{CallbackLog, FindingKind, FindingLog};

/// A blocking handler's times on its worker pool.
#[derive(Default)]
pub(crate) struct PoolTimes {
    /// From a runner having work to a worker taking it up, by worker.
    pub(crate) wait: Sharded,
    /// Handler runs, by worker.
    pub(crate) run: Sharded,
}

/// A subscription's whole shared state: its fixed facts, its queue and
/// numbers (under one lock, but for a stream's place in the ring, which it
/// moves without it), the watch's findings, its circuit breaker, and its
/// runners' tasks. The topic, the runners and the handles share it.
pub(crate) struct SubscriptionState<E> {
    pub(crate) info: SubInfo,
    pub(crate) watch: Arc<WatchConfig>,
    watcher: FindingLog,
    metrics: SubMetrics,
    /// When drops were last reported, and how many since.
    drop_report: Mutex<(Option<std::time::Instant>, u64)>,
    /// The longest poll of an async handler, in nanoseconds (a statistic).
    worst_poll_ns: AtomicU64,
    state: Mutex<State<E>>,
    /// A stream's place in the ring, which it takes from without the lock
    /// (the same cursor as in `state`); `None` for handlers and queues of
    /// their own.
    fast: Option<Arc<Cursor<E>>>,
    /// Whether an unheard dead letter was logged (once per subscription).
    unheard_warned: std::sync::atomic::AtomicBool,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Where a subscription that asked for retained events started.
    pub(crate) start: Started,
    /// The tasks of an async handler's runners, to stop at a deadline.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The runners of a blocking handler on its worker pool, likewise.
    pool_runners: Mutex<Vec<PoolRunner>>,
    /// A blocking handler's time waiting for a worker and running.
    pool_times: Option<Box<PoolTimes>>,
    /// Its topic's log of callback panics.
    callbacks: Arc<CallbackLog>,
    /// How often a consumer found the queue empty and waited (tests).
    #[cfg(test)]
    pub(crate) waits: AtomicU64,
}

impl<E> SubscriptionState<E> {
    /// A queue of its own, or, with `cursor`, a place in the topic's ring.
    pub(crate) fn new(
        info: SubInfo,
        watch: Arc<WatchConfig>,
        setup: QueueSetup<E>,
        cursor: Option<Cursor<E>>,
    ) -> Self {
        let QueueSetup {
            consumers,
            breaker,
            replay,
            start,
            callbacks,
        } = setup;
        let cursor = cursor.map(Arc::new);
        // One stream reads alone and counts nothing in flight: it may take
        // without the lock, once its retained events are read.
        let fast = cursor
            .as_ref()
            .filter(|_| info.kind == SubscriberKind::Stream && consumers == 1)
            .map(Arc::clone);
        if let Some(cursor) = &fast {
            if replay.is_empty() {
                cursor.unlock();
            }
        }
        let buf = match cursor {
            Some(cursor) => Buf::Ring(cursor),
            None => Buf::Own(VecDeque::with_capacity(info.capacity.min(1024))),
        };
        let replayed = replay.len() as u64;
        let own = matches!(buf, Buf::Own(_));
        let pool_times = info.kind.pool().map(|_| Box::default());
        SubscriptionState {
            state: Mutex::new(State {
                replay,
                buf,
                closed: false,
                pending_missed: 0,
                in_flight: 0,
                cut: false,
                counters: Counters {
                    replayed,
                    // An own queue counts what it accepts as it goes; a ring
                    // reader's count is worked out from the ring, plus this.
                    accepted: if own { replayed } else { 0 },
                    ..Counters::default()
                },
                consumers: vec![None; consumers],
                watcher: None,
                publishers: Vec::new(),
                idle: Vec::new(),
            }),
            fast,
            metrics: SubMetrics::new(&info),
            info,
            watch,
            watcher: FindingLog::default(),
            drop_report: Mutex::new((None, 0)),
            worst_poll_ns: AtomicU64::new(0),
            unheard_warned: std::sync::atomic::AtomicBool::new(false),
            breaker,
            start,
            tasks: Mutex::new(Vec::new()),
            pool_runners: Mutex::new(Vec::new()),
            pool_times,
            callbacks,
            #[cfg(test)]
            waits: AtomicU64::new(0),
        }
    }

    /// Publisher side, own queue: is there room for one more event? A closed
    /// queue takes nothing, so it never makes a publisher wait. With `cx`, a
    /// publisher that finds no room is woken when room appears.
    #[inline]
    pub(crate) fn has_room(&self, cx: Option<&mut Context<'_>>) -> bool {
        let mut s = self.state.lock();
        let full = match &s.buf {
            Buf::Own(buf) => buf.len() >= self.info.capacity,
            Buf::Ring(_) => false,
        };
        if s.closed || !full {
            return true;
        }
        if let Some(cx) = cx {
            register(&mut s.publishers, cx.waker());
        }
        false
    }

    /// Publisher side, ring subscription, under the topic lock: the room its
    /// cursor has, with `tail` the topic's next sequence number. With `cx`,
    /// a publisher that finds no room for `tail` is woken when room
    /// appears. `None` for a subscription with a queue of its own.
    pub(crate) fn ring_room(&self, tail: u64, cx: Option<&mut Context<'_>>) -> Option<Room> {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Buf::Ring(cursor) = &s.buf else {
            return None;
        };
        let place = cursor.place();
        s.counters.high_water = s.counters.high_water.max(place.queued(tail));
        let room = place.room();
        if room.fits(tail) {
            return Some(room);
        }
        let Some(cx) = cx else {
            return Some(room);
        };
        register(&mut s.publishers, cx.waker());
        // A stream that takes without the lock sees the flag and wakes the
        // list; or it took before, and the room counts it.
        Some(cursor.note_waiter().room())
    }

    /// Publisher side, own queue: offers one accepted event to this
    /// subscription. Called with the topic lock held, after `has_room` said
    /// yes for every `Block` and `Fail` subscription; only consumers touch
    /// the queue in between, and they only make room. An evicted event goes
    /// to `dropped`.
    pub(crate) fn push(&self, published: &Arc<Published<E>>, dropped: &mut Deferred<E>) -> Push {
        let mut s = self.state.lock();
        if s.closed {
            return Push::Closed;
        }
        let s = &mut *s;
        let Buf::Own(buf) = &mut s.buf else {
            // Ring subscriptions read the ring; the publisher never pushes.
            return Push::Enqueued;
        };
        s.counters.accepted += 1;
        let mut outcome = Push::Enqueued;
        if buf.len() >= self.info.capacity {
            match self.info.policy {
                Overflow::DropNewest => {
                    s.counters.dropped_newest += 1;
                    s.pending_missed += 1;
                    self.dropped();
                    return Push::DroppedNewest;
                }
                Overflow::DropOldest => {
                    if let Some(old) = buf.pop_front() {
                        s.counters.dropped_oldest += 1;
                        self.dropped();
                        let carry = old.missed_before + 1;
                        match buf.front_mut() {
                            Some(next) => next.missed_before += carry,
                            None => s.pending_missed += carry,
                        }
                        dropped.let_go(old.published);
                    }
                    outcome = Push::EvictedOldest;
                }
                // Room was checked under the topic lock and can only have
                // grown since; should it ever not have, the event is kept
                // rather than lost.
                Overflow::Block | Overflow::Fail => {}
            }
        }
        let missed_before = std::mem::take(&mut s.pending_missed);
        // The subscription's hold on the event, taken while the publisher
        // still holds it.
        published.hold();
        buf.push_back(Slot {
            published: Arc::clone(published),
            missed_before,
        });
        s.counters.high_water = s.counters.high_water.max(buf.len());
        self.metrics.enqueued(buf.len());
        if let Some(waker) = s.consumers.iter_mut().find_map(Option::take) {
            waker.wake();
        }
        outcome
    }

    /// One event lost to the overflow policy: counted by the caller,
    /// reported here (at most once per report interval).
    fn dropped(&self) {
        self.metrics.dropped();
        let now = std::time::Instant::now();
        let mut report = self.drop_report.lock();
        report.1 += 1;
        let due = match report.0 {
            None => true,
            Some(last) => now.duration_since(last) >= self.watch.report_interval(),
        };
        if due {
            let n = std::mem::take(&mut report.1);
            report.0 = Some(now);
            drop(report);
            telemetry::warn_drops(&self.info, n);
        }
    }

    pub(crate) fn add_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().push(task);
    }

    pub(crate) fn add_pool_runner(&self, runner: PoolRunner) {
        self.pool_runners.lock().push(runner);
    }

    /// Wakes the publishers waiting for room in it, so that they look at
    /// the bus again (it began to shut down).
    pub(crate) fn wake_publishers(&self) {
        let publishers = std::mem::take(&mut self.state.lock().publishers);
        publishers.into_iter().for_each(Waker::wake);
    }

    /// The subscription's numbers; `view` is needed for an open ring
    /// subscription.
    pub(crate) fn stats(&self, view: Option<RingView>) -> SubscriptionStats {
        let (slow_polls, _) = self.watcher.totals(FindingKind::SlowPoll);
        let (over_budget, worst_run) = self.watcher.totals(FindingKind::SyncOverBudget);
        let (publishers_blocked, worst_publisher_wait) =
            self.watcher.totals(FindingKind::PublisherBlocked);
        let s = self.state.lock();
        let c = &s.counters;
        let (accepted, delivered, queue_depth, high_water) = match (&s.buf, view) {
            (Buf::Own(buf), _) => (c.accepted, c.delivered, buf.len(), c.high_water),
            (Buf::Ring(cursor), view) => {
                // One reading of the cursor, for deliveries and depth both.
                let place = cursor.place();
                let delivered = c.delivered + place.passed().saturating_sub(c.ring_passed);
                let high_water = c.high_water.max(cursor.high_water());
                match view {
                    // Open: the publisher side knows how far the topic has
                    // gone.
                    Some(view) if !s.closed => {
                        let queued = place.queued(view.tail);
                        (
                            view.tail - cursor.start() + c.replayed,
                            delivered,
                            queued,
                            high_water.max(queued),
                        )
                    }
                    // Closed: `close` recorded the final numbers.
                    _ => (c.accepted, delivered, place.left(), high_water),
                }
            }
        };
        let queue_depth = queue_depth + s.replay.len();
        let (breaker, breaker_opened) = match &self.breaker {
            Some(b) => {
                let (state, opened) = b.snapshot();
                (Some(state), opened)
            }
            None => (None, 0),
        };
        SubscriptionStats {
            id: self.info.id,
            name: self.info.name.to_string(),
            topic: self.info.topic,
            kind: self.info.kind,
            policy: self.info.policy,
            capacity: self.info.capacity,
            closed: s.closed,
            queue_depth,
            high_water,
            accepted,
            delivered,
            dropped_oldest: c.dropped_oldest,
            dropped_newest: c.dropped_newest,
            discarded: c.discarded,
            cut_off: c.cut_off,
            missed_unreported: s.pending_missed,
            in_flight: s.in_flight,
            cancelled: c.cancelled,
            handled: c.handled,
            failures: c.failures,
            panics: c.panics,
            timeouts: c.timeouts,
            retried: c.retried,
            dead_lettered: c.dead_lettered,
            dead_letters_unheard: c.dead_letters_unheard,
            runner_failures: c.runner_failures,
            breaker,
            breaker_opened,
            replayed: c.replayed,
            last_error: c.last_error.clone(),
            slow_polls,
            worst_poll: std::time::Duration::from_nanos(self.worst_poll_ns.load(Ordering::Relaxed)),
            over_budget,
            worst_run,
            publishers_blocked,
            worst_publisher_wait,
            worker_wait: self.pool_times.as_ref().and_then(|t| t.wait.quantiles()),
            run_time: self.pool_times.as_ref().and_then(|t| t.run.quantiles()),
        }
    }
}
