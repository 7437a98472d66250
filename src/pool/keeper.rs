//! A pool's keeper thread: fires its runners' timers (a retry's delay, an
//! open breaker's cool-down) and watches its workers for long runs and
//! exhaustion.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::exec::{Flow, Sched, Shared};
use super::parts::Least;
use super::KEEPALIVE;

/// Waits until an instant on a pool's timers: a blocking runner's wait
/// that holds no worker. `None` waits until the runner is stopped.
pub(crate) struct Sleep {
    pool: Arc<Shared>,
    until: Option<Instant>,
}

impl Sleep {
    pub(crate) fn new(pool: &Arc<Shared>, delay: Duration) -> Self {
        Sleep {
            pool: Arc::clone(pool),
            until: Instant::now().checked_add(delay),
        }
    }
}

impl Future for Sleep {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(until) = self.until else {
            return Poll::Pending;
        };
        if Instant::now() >= until {
            return Poll::Ready(true);
        }
        self.pool.add_timer(until, cx.waker().clone());
        Poll::Pending
    }
}

/// What the keeper found on one look, to act on without the lock.
#[derive(Default)]
struct Look {
    due: Vec<Waker>,
    long: Vec<(Arc<Flow>, Duration)>,
    exhausted: Option<crate::watch::PoolExhausted>,
}

impl Shared {
    fn add_timer(self: &Arc<Self>, at: Instant, waker: Waker) {
        let start = {
            let mut s = self.sched.lock();
            if s.timers.peek().map_or(true, |first| at < first.key.0) {
                self.tick.notify_one();
            }
            let seq = s.timers.len() as u64;
            s.timers.push(Least {
                key: (at, seq),
                item: waker,
            });
            !std::mem::replace(&mut s.keeper, true)
        };
        if start {
            self.start_keeper();
        }
    }

    /// Starts the keeper (marked running by the caller). If it cannot be
    /// started, the mark is taken back for the next caller to try again.
    pub(super) fn start_keeper(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name(format!("tidings-{}-keep", self.pool.name()))
            .spawn(move || pool.keep());
        if let Err(err) = started {
            self.sched.lock().keeper = false;
            super::warn_worker_failed(self.pool, &err);
        }
    }

    /// How often the keeper looks at busy workers: a quarter of the
    /// shortest threshold, within 1 ms ..= 250 ms; `None` if it watches
    /// nothing.
    fn look_every(&self) -> Option<Duration> {
        let budget = self.watch.sync_budget_threshold();
        let exhausted = self.watch.pool_exhausted_threshold();
        let shortest = match (budget, exhausted) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((shortest / 4).clamp(Duration::from_millis(1), Duration::from_millis(250)))
    }

    fn keep(self: Arc<Self>) {
        let every = self.look_every();
        let mut s = self.sched.lock();
        loop {
            let now = Instant::now();
            let look = self.look(&mut s, now);
            MutexGuard::unlocked(&mut s, || self.act(look));
            let next_timer = s.timers.peek().map(|t| t.key.0);
            let next_look = match (s.workers > 0, every) {
                (true, Some(every)) => Some(now + every),
                (true, None) => Some(now + KEEPALIVE),
                (false, _) => None,
            };
            let next = match (next_timer, next_look) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next {
                Some(at) => {
                    self.tick.wait_until(&mut s, at);
                }
                None => {
                    // Nothing to wait for: end, unless something comes
                    // meanwhile.
                    let timed_out = self.tick.wait_for(&mut s, KEEPALIVE).timed_out();
                    if timed_out && s.timers.is_empty() && s.workers == 0 {
                        s.keeper = false;
                        return;
                    }
                }
            }
        }
    }

    fn look(&self, s: &mut Sched, now: Instant) -> Look {
        let mut look = Look::default();
        while s.timers.peek().is_some_and(|t| t.key.0 <= now) {
            if let Some(timer) = s.timers.pop() {
                look.due.push(timer.item);
            }
        }
        if let Some(budget) = self.watch.sync_budget_threshold() {
            for slot in &s.slots {
                let Some(busy) = &slot.busy else { continue };
                let Some(since) = slot.cell.running() else {
                    continue;
                };
                let age = now.saturating_duration_since(self.run_start(since));
                if age > budget && slot.cell.count(since) {
                    look.long.push((Arc::clone(&busy.flow), age));
                }
            }
        }
        let threshold = self.watch.pool_exhausted_threshold();
        if let (Some(threshold), Some(since)) = (threshold, s.all_busy_since) {
            let busy_for = now.saturating_duration_since(since);
            if busy_for >= threshold {
                let holders = self.holders(s, now);
                let every = self.watch.report_interval();
                if s.exhaustion.seen(busy_for, holders, now, every) {
                    // The report gives this stretch's length.
                    look.exhausted = self.exhausted(&s.exhaustion, busy_for);
                }
            }
        }
        look
    }

    /// Acts on a look, holding no lock: wakes the runners whose time came,
    /// names long runs, reports exhaustion.
    fn act(&self, look: Look) {
        for waker in look.due {
            waker.wake();
        }
        for (flow, age) in look.long {
            if let Some(client) = flow.client.upgrade() {
                client.long_run(age);
            }
        }
        if let Some(exhausted) = look.exhausted {
            super::report_exhausted(&exhausted);
        }
    }
}
