//! A pool's workers and its queue of runners waiting for one (in fair
//! order: see the module docs of `pool`), and the runners themselves.

use std::cell::Cell;
use std::collections::BinaryHeap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::cell::{WorkerCell, COUNTED};
use super::parts::{Exhaustion, Least, Timer};
use super::{Client, PoolRunner, KEEPALIVE};
use crate::config::{WatchConfig, WorkerPool};
use crate::outcome::panic_message;
use crate::stats::{PoolHolder, PoolStats};

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type MakeRunner = Box<dyn Fn() -> BoxFuture + Send + Sync>;

/// One subscription's share of a pool: what its runners have used.
pub(crate) struct Flow {
    /// Weak: the subscription keeps its runners, which keep this.
    pub(super) client: Weak<dyn Client>,
    /// Handler time its runs took, in nanoseconds: its virtual time.
    vtime: AtomicU64,
}

impl Flow {
    pub(crate) fn new(client: &Arc<dyn Client>) -> Arc<Self> {
        Arc::new(Flow {
            client: Arc::downgrade(client),
            vtime: AtomicU64::new(0),
        })
    }
}

/// One pool: its workers, its runners waiting for one, its timers.
pub(crate) struct Shared {
    pub(super) pool: WorkerPool,
    pub(super) max: usize,
    /// How much lower than the process its workers run (nice).
    nice: u8,
    pub(super) watch: Arc<WatchConfig>,
    pub(super) sched: Mutex<Sched>,
    /// Idle workers wait here for a runner.
    work: Condvar,
    /// The keeper waits here for its next timer or look.
    pub(super) tick: Condvar,
    /// How many runners in line have no idle worker to take them up (read
    /// without the lock by a running runner deciding whether to give its
    /// worker up: not when an idle worker is about to take the newcomer).
    starved: AtomicUsize,
    /// What run start times are counted from.
    pub(super) epoch: Instant,
}

/// A pool's state under its lock.
pub(super) struct Sched {
    ready: BinaryHeap<Least<(u64, u64), Ready>>,
    /// Orders equal keys first come, first served.
    seq: u64,
    /// The virtual time of the last runner started.
    vclock: u64,
    /// Workers started and not ended.
    pub(super) workers: usize,
    /// Workers waiting for a runner.
    idle: usize,
    pub(super) busy: usize,
    /// Since when every worker has been busy.
    pub(super) all_busy_since: Option<Instant>,
    /// A place per worker, by index.
    pub(super) slots: Vec<Slot>,
    pub(super) timers: BinaryHeap<Timer>,
    /// Whether the keeper thread runs.
    pub(super) keeper: bool,
    pub(super) exhaustion: Exhaustion,
}

/// A worker's place: whether a worker has it, and what it runs.
#[derive(Default)]
pub(super) struct Slot {
    taken: bool,
    pub(super) busy: Option<Busy>,
    pub(super) cell: Arc<WorkerCell>,
}

/// What a busy worker runs.
pub(super) struct Busy {
    pub(super) flow: Arc<Flow>,
    /// When it took the runner up.
    pub(super) since: Instant,
}

/// A runner waiting for a worker, in line by (its key, first come).
struct Ready {
    key: u64,
    /// When it began to wait.
    at: Instant,
    task: Arc<Task>,
}

thread_local! {
    /// The worker this thread is, if it is one.
    static WORKER: std::cell::RefCell<Option<Arc<WorkerCell>>> = const { std::cell::RefCell::new(None) };
    /// Handler runs in the current poll of a runner.
    static RUNS: Cell<u32> = const { Cell::new(0) };
    /// Handler time of the current poll, in nanoseconds: added to the
    /// runner's flow once the poll is over (one shared write a poll, not
    /// one a run).
    static POLL_NS: Cell<u64> = const { Cell::new(0) };
    /// This worker's index in its pool.
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// How long the runner being polled waited for this worker, until its
    /// first run in this poll takes it.
    static WAITED: Cell<Option<Duration>> = const { Cell::new(None) };
}

impl Shared {
    pub(super) fn new(
        pool: WorkerPool,
        max: usize,
        nice: u8,
        watch: Arc<WatchConfig>,
    ) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Shared {
            pool,
            max,
            nice,
            watch,
            sched: Mutex::new(Sched {
                ready: BinaryHeap::new(),
                seq: 0,
                vclock: 0,
                workers: 0,
                idle: 0,
                busy: 0,
                all_busy_since: None,
                slots: (0..max).map(|_| Slot::default()).collect(),
                timers: BinaryHeap::new(),
                keeper: false,
                exhaustion: Exhaustion::default(),
            }),
            work: Condvar::new(),
            tick: Condvar::new(),
            starved: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// Starts a runner of `flow`: `make` makes its future (again, should
    /// the runner's own code panic out of a poll). At least one worker is
    /// running once it returns.
    ///
    /// # Errors
    /// The pool had no worker and none could be started.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        flow: &Arc<Flow>,
        make: MakeRunner,
    ) -> std::io::Result<PoolRunner> {
        let fut = make();
        let task = Arc::new(Task {
            pool: Arc::clone(self),
            flow: Arc::clone(flow),
            state: Mutex::new(TaskState {
                run: Run::Scheduled,
                aborted: false,
            }),
            fut: Mutex::new(Some(Runner { fut, make })),
        });
        let runner = PoolRunner(Arc::clone(&task));
        if let Err(err) = self.schedule(Arc::clone(&task)) {
            task.abort();
            return Err(err);
        }
        Ok(runner)
    }

    /// Puts `task` in line for a worker, starting one if it may.
    fn schedule(self: &Arc<Self>, task: Arc<Task>) -> std::io::Result<()> {
        let now = Instant::now();
        let start = {
            let mut s = self.sched.lock();
            let key = task.flow.vtime.load(Ordering::Relaxed).max(s.vclock);
            s.seq += 1;
            let seq = s.seq;
            s.ready.push(Least {
                key: (key, seq),
                item: Ready { key, at: now, task },
            });
            s.count_starved(&self.starved);
            if s.idle > 0 {
                self.work.notify_one();
            }
            if s.ready.len() > s.idle && s.workers < self.max {
                s.claim()
            } else {
                None
            }
        };
        match start {
            Some(index) => self.start_worker(index),
            None => Ok(()),
        }
    }

    /// Starts a worker in place `index` (claimed). A failure gives the
    /// place back; it is an error only if the pool is left without workers.
    fn start_worker(self: &Arc<Self>, index: usize) -> std::io::Result<()> {
        let pool = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name(format!("tidings-{}-{index}", self.pool.name()))
            .spawn(move || pool.work(index));
        let keeper = {
            let mut s = self.sched.lock();
            if let Err(err) = started {
                s.slots[index].taken = false;
                s.workers -= 1;
                super::warn_worker_failed(self.pool, &err);
                return if s.workers == 0 { Err(err) } else { Ok(()) };
            }
            !std::mem::replace(&mut s.keeper, true)
        };
        if keeper {
            self.start_keeper();
        }
        Ok(())
    }

    /// A worker's life: take the runner first in line, poll it, again;
    /// end after [`KEEPALIVE`] without work.
    fn work(self: Arc<Self>, index: usize) {
        let cell = Arc::clone(&self.sched.lock().slots[index].cell);
        WORKER.with(|w| *w.borrow_mut() = Some(cell));
        INDEX.set(index);
        if self.nice > 0 {
            lower_priority(self.nice);
        }
        let mut s = self.sched.lock();
        loop {
            let Some(Least { item: ready, .. }) = s.ready.pop() else {
                s.idle += 1;
                s.count_starved(&self.starved);
                let timed_out = self.work.wait_for(&mut s, KEEPALIVE).timed_out();
                s.idle -= 1;
                s.count_starved(&self.starved);
                if timed_out && s.ready.is_empty() {
                    s.workers -= 1;
                    s.slots[index].taken = false;
                    return;
                }
                continue;
            };
            s.count_starved(&self.starved);
            let now = Instant::now();
            s.vclock = s.vclock.max(ready.key);
            s.busy += 1;
            if s.busy >= self.max {
                s.all_busy_since = Some(now);
            }
            s.slots[index].busy = Some(Busy {
                flow: Arc::clone(&ready.task.flow),
                since: now,
            });
            MutexGuard::unlocked(&mut s, || {
                WAITED.set(Some(now - ready.at));
                ready.task.run();
                WAITED.set(None);
                drop(ready);
            });
            s.busy -= 1;
            s.all_busy_since = None;
            s.exhaustion.stretch_over();
            s.slots[index].busy = None;
        }
    }

    /// Whether a runner that has run its handler in this poll should give
    /// its worker up: a runner waits for a worker and no idle one will take
    /// it.
    pub(crate) fn poll_turn(&self, cx: &mut Context<'_>) -> Poll<()> {
        if RUNS.get() > 0 && self.starved.load(Ordering::Relaxed) > 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    /// A handler run begins on this worker: the instant it began, and, for
    /// the first run since the runner was taken up, how long it had waited
    /// for a worker (a poll that runs nothing, e.g. a runner ending, has
    /// not waited *to run*).
    pub(crate) fn run_began(&self) -> (Instant, Option<Duration>) {
        let now = Instant::now();
        // Below `COUNTED` (292 years after the pool began), above 0.
        let since = u64::try_from(now.duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .min(COUNTED - 2)
            + 1;
        WORKER.with(|w| {
            if let Some(cell) = &*w.borrow() {
                cell.begin(since);
            }
        });
        (now, WAITED.take())
    }

    /// A handler run that took `took` ended on this worker: whether the
    /// keeper counted it as over budget while it ran.
    pub(crate) fn run_ended(&self, took: Duration) -> bool {
        RUNS.set(RUNS.get().saturating_add(1));
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        POLL_NS.set(POLL_NS.get().saturating_add(ns));
        WORKER.with(|w| w.borrow().as_ref().is_some_and(|cell| cell.end()))
    }

    /// The index of the worker this thread is, in its pool (0 off a
    /// pool).
    pub(crate) fn worker_index() -> usize {
        INDEX.get()
    }

    pub(super) fn stats(&self) -> PoolStats {
        let now = Instant::now();
        let s = self.sched.lock();
        PoolStats {
            pool: self.pool,
            max_workers: self.max,
            workers: s.workers,
            busy: s.busy,
            queued: s.ready.len(),
            holders: self.holders(&s, now),
            exhausted: s.exhaustion.count,
        }
    }

    /// Who holds the busy workers, most workers first.
    pub(super) fn holders(&self, s: &Sched, now: Instant) -> Vec<PoolHolder> {
        let mut holders: Vec<(Arc<Flow>, PoolHolder)> = Vec::new();
        for slot in &s.slots {
            let Some(busy) = &slot.busy else { continue };
            let age = match slot.cell.running() {
                None => now.saturating_duration_since(busy.since),
                Some(since) => now.saturating_duration_since(self.run_start(since)),
            };
            match holders.iter_mut().find(|(f, _)| Arc::ptr_eq(f, &busy.flow)) {
                Some((_, h)) => {
                    h.workers += 1;
                    h.oldest_run = h.oldest_run.max(age);
                }
                None => {
                    let Some(client) = busy.flow.client.upgrade() else {
                        continue;
                    };
                    let info = client.info();
                    holders.push((
                        Arc::clone(&busy.flow),
                        PoolHolder {
                            topic: info.topic,
                            subscription: info.name.to_string(),
                            id: info.id,
                            workers: 1,
                            oldest_run: age,
                        },
                    ));
                }
            }
        }
        let mut holders: Vec<PoolHolder> = holders.into_iter().map(|(_, h)| h).collect();
        holders.sort_by_key(|h| std::cmp::Reverse((h.workers, h.oldest_run)));
        holders
    }

    /// The instant a `run_since` value stands for.
    pub(super) fn run_start(&self, since: u64) -> Instant {
        self.epoch + Duration::from_nanos(since.saturating_sub(1))
    }

    pub(super) fn exhaustion(&self) -> Option<crate::watch::PoolExhausted> {
        let s = self.sched.lock();
        self.exhausted(&s.exhaustion, s.exhaustion.worst)
    }

    /// The health entry of `e`, with `worst` as its longest stretch;
    /// `None` if the pool was never exhausted.
    pub(super) fn exhausted(
        &self,
        e: &Exhaustion,
        worst: Duration,
    ) -> Option<crate::watch::PoolExhausted> {
        let (seen, mono) = e.last_seen?;
        Some(crate::watch::PoolExhausted {
            pool: self.pool,
            workers: self.max,
            count: e.count,
            worst,
            holders: e.holders.clone(),
            last_seen: seen,
            recent: mono.elapsed() < self.watch.report_interval(),
        })
    }
}

/// Lowers this thread's scheduling priority by `nice` (Linux: a thread's
/// own nice value): the async runtime's threads get a core first, and the
/// pool's workers every cycle they leave. Elsewhere, nothing.
fn lower_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Ok(now) = rustix::process::getpriority_process(Some(tid)) {
            let to = now.saturating_add(i32::from(nice)).min(19);
            // Refused (a sandbox): the worker runs at the process's priority.
            let _ = rustix::process::setpriority_process(Some(tid), to);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

impl Sched {
    /// Publishes how many runners in line no idle worker will take.
    fn count_starved(&self, starved: &AtomicUsize) {
        starved.store(
            self.ready.len().saturating_sub(self.idle),
            Ordering::Relaxed,
        );
    }

    /// Claims a free place for a new worker.
    fn claim(&mut self) -> Option<usize> {
        let index = self.slots.iter().position(|slot| !slot.taken)?;
        self.slots[index].taken = true;
        self.workers += 1;
        Some(index)
    }
}

/// Where a runner is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Run {
    /// Waiting to be woken (for an event, a timer).
    Idle,
    /// In line for a worker.
    Scheduled,
    /// Being polled; `woken` if it was woken meanwhile.
    Running { woken: bool },
    /// Over, or stopped.
    Done,
}

struct TaskState {
    run: Run,
    /// Stopped at the shutdown deadline.
    aborted: bool,
}

/// A runner of a blocking subscription on a pool.
pub(crate) struct Task {
    pool: Arc<Shared>,
    flow: Arc<Flow>,
    /// Locked before `fut`, never the other way round.
    state: Mutex<TaskState>,
    /// Its future, while nobody polls it, and how to make it again; both
    /// let go of once it is over (they hold the subscription and its
    /// handler).
    fut: Mutex<Option<Runner>>,
}

struct Runner {
    fut: BoxFuture,
    make: MakeRunner,
}

impl Task {
    /// Polls it once, on a worker.
    fn run(self: &Arc<Self>) {
        let fut = {
            let mut st = self.state.lock();
            if st.run != Run::Scheduled {
                return;
            }
            st.run = Run::Running { woken: false };
            self.fut.lock().take()
        };
        let Some(Runner { mut fut, make }) = fut else {
            return;
        };
        RUNS.set(0);
        let waker = Waker::from(Arc::clone(self));
        let mut cx = Context::from_waker(&waker);
        let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        // Before it can be put in line again: its key counts this poll.
        // Wraps after 584 years of handler time.
        self.flow.vtime.fetch_add(POLL_NS.take(), Ordering::Relaxed);
        let keep = match polled {
            Ok(Poll::Pending) => Some(Runner { fut, make }),
            Ok(Poll::Ready(())) => {
                drop(fut);
                drop(make);
                None
            }
            Err(panic) => {
                // The runner's own code failed outside every catch of its
                // own: what it held is let go of (a panic in that too is
                // caught), and it starts again.
                let message = panic_message(&*panic);
                let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
                if let Some(client) = self.flow.client.upgrade() {
                    client.runner_restarted(&message);
                }
                let fut = make();
                let runner = Runner { fut, make };
                self.state.lock().run = Run::Running { woken: true };
                Some(runner)
            }
        };
        let mut st = self.state.lock();
        if st.aborted {
            st.run = Run::Done;
            drop(st);
            drop(keep);
            return;
        }
        let again = match keep {
            Some(runner) => {
                *self.fut.lock() = Some(runner);
                matches!(st.run, Run::Running { woken: true })
            }
            None => {
                st.run = Run::Done;
                return;
            }
        };
        st.run = if again { Run::Scheduled } else { Run::Idle };
        drop(st);
        if again {
            // A worker is running (this one): scheduling cannot fail.
            let _ = self.pool.schedule(Arc::clone(self));
        }
    }

    /// See [`PoolRunner::abort`].
    pub(super) fn abort(&self) {
        let fut = {
            let mut st = self.state.lock();
            st.aborted = true;
            match st.run {
                Run::Idle | Run::Scheduled => {
                    st.run = Run::Done;
                    self.fut.lock().take()
                }
                Run::Running { .. } | Run::Done => None,
            }
        };
        // Dropped here, with no lock held: it may hold an event.
        drop(fut);
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let schedule = {
            let mut st = self.state.lock();
            match st.run {
                Run::Idle => {
                    st.run = Run::Scheduled;
                    true
                }
                Run::Running { .. } => {
                    st.run = Run::Running { woken: true };
                    false
                }
                Run::Scheduled | Run::Done => false,
            }
        };
        if schedule {
            // Fails only when no worker can be started at all, which was
            // reported; the runner is in line for when one can.
            let _ = self.pool.schedule(Arc::clone(self));
        }
    }
}
