//! A subscription's state, as its topic's publishers, its readers and its
//! handles meet it: room for publishers, taking events, closing, stats.
//! The handler runners' side of it is in `handling.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::deferred::Deferred;
use super::queue::{register, Buf, Counters, Push, QueueSetup, RingView, Slot, State, Wakeups};
use super::ring::{Cursor, Room};
use super::Breaker;
use crate::config::{Overflow, WatchConfig};
use crate::errors::TryRecvError;
use crate::event::{Envelope, Published};
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
/// numbers (under one lock), the watch's findings, its circuit breaker,
/// and its runners' tasks. The topic, the runners and the handles share it.
pub(crate) struct SubscriptionState<E> {
    pub(crate) info: SubInfo,
    pub(crate) watch: Arc<WatchConfig>,
    pub(super) watcher: FindingLog,
    pub(super) metrics: SubMetrics,
    /// When drops were last reported, and how many since.
    pub(super) drop_report: Mutex<(Option<std::time::Instant>, u64)>,
    /// The longest poll of an async handler, in nanoseconds (a statistic).
    pub(super) worst_poll_ns: AtomicU64,
    pub(super) state: Mutex<State<E>>,
    /// Whether an unheard dead letter was logged (once per subscription).
    pub(super) unheard_warned: std::sync::atomic::AtomicBool,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Where a subscription that asked for retained events started.
    pub(crate) start: Started,
    /// The tasks of an async handler's runners, to stop at a deadline.
    pub(super) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The runners of a blocking handler on its worker pool, likewise.
    pub(super) pool_runners: Mutex<Vec<PoolRunner>>,
    /// A blocking handler's time waiting for a worker and running.
    pub(super) pool_times: Option<Box<PoolTimes>>,
    /// Its topic's log of callback panics.
    pub(super) callbacks: Arc<CallbackLog>,
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
        let mut s = self.state.lock();
        let Buf::Ring(cursor) = &s.buf else {
            return None;
        };
        let room = cursor.room();
        let queued = cursor.queued(tail);
        s.counters.high_water = s.counters.high_water.max(queued);
        if !room.fits(tail) {
            if let Some(cx) = cx {
                register(&mut s.publishers, cx.waker());
            }
        }
        Some(room)
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

    #[inline]
    fn pop_locked(&self, s: &mut State<E>, wakeups: &mut Wakeups) -> Option<Envelope<E>> {
        let slot = s.take()?;
        s.counters.delivered += 1;
        self.metrics.delivered(|| s.depth_hint());
        if self.info.kind != SubscriberKind::Stream {
            s.in_flight += 1;
        }
        // Nobody to wake, on the hot path: no list to take.
        if !(s.publishers.is_empty() && s.idle.is_empty()) {
            wakeups.take_all(&mut s.publishers);
            s.wake_idle(wakeups);
        }
        Some(Envelope::delivered(slot.published, slot.missed_before))
    }

    /// Consumer side: the next event, `None` once closed and drained.
    pub(crate) fn poll_pop(
        &self,
        cx: &mut Context<'_>,
        consumer: usize,
    ) -> Poll<Option<Envelope<E>>> {
        let mut wakeups = Wakeups::default();
        let mut s = self.state.lock();
        if let Some(env) = self.pop_locked(&mut s, &mut wakeups) {
            if s.consumers.len() > 1 {
                pass_on(&mut s, consumer, &mut wakeups);
            }
            drop(s);
            wakeups.wake();
            return Poll::Ready(Some(env));
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
                if s.consumers.len() > 1 {
                    pass_on(&mut s, consumer, &mut wakeups);
                }
                drop(s);
                wakeups.wake();
                return Poll::Ready(Some(env));
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
            if let (Buf::Ring(cursor), Some(view)) = (&mut s.buf, view) {
                cursor.close(view.tail);
                s.counters.accepted = view.tail - cursor.start() + s.counters.replayed;
            }
        }
        s.closed = true;
        let discarded = if discard { s.clear(dropped) } else { 0 };
        s.counters.discarded += discarded;
        self.metrics.discarded(discarded);
        let mut ring_readers = None;
        if let Buf::Ring(cursor) = &mut s.buf {
            ring_readers = Some(Arc::clone(cursor.ring()));
            if leaving {
                let mut own = VecDeque::with_capacity(cursor.left());
                cursor.take_rest(|published| {
                    own.push_back(Slot {
                        published,
                        missed_before: 0,
                    });
                });
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

    pub(crate) fn add_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().push(task);
    }

    pub(crate) fn add_pool_runner(&self, runner: PoolRunner) {
        self.pool_runners.lock().push(runner);
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
        false
    }

    /// Whether it is closed, empty and no handler runs (an unsubscribed
    /// subscription that finished draining).
    pub(crate) fn is_idle(&self) -> bool {
        self.state.lock().is_idle()
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
        let (accepted, queue_depth, high_water) = match (&s.buf, view) {
            (Buf::Own(buf), _) => (c.accepted, buf.len(), c.high_water),
            // Open: the publisher side knows how far the topic has gone.
            (Buf::Ring(cursor), Some(view)) if !s.closed => {
                let queued = cursor.queued(view.tail);
                (
                    view.tail - cursor.start() + c.replayed,
                    queued,
                    c.high_water.max(queued),
                )
            }
            // Closed: `close` recorded the final numbers.
            (Buf::Ring(cursor), _) => (c.accepted, cursor.left(), c.high_water),
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
            delivered: c.delivered,
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
