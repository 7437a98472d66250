//! A subscription's circuit breaker at run time: closed, open until a
//! time, or waiting for its one probe (see [`BreakerPolicy`]).

use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
// tokio's clock: it is std's, except under tokio's paused test clock, where
// a breaker's cool-down follows the test's time like the sleeps around it.
use tokio::time::Instant;

use crate::config::{later, BreakerPolicy};
use crate::stats::BreakerState;

enum Phase {
    Closed {
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    /// The probe is out; everyone else waits for its result.
    Probing,
}

/// What a runner may do now.
pub(crate) enum Permit {
    /// Run an attempt.
    Go,
    /// Run an attempt: it is the probe; report its result with `probe = true`.
    Probe,
    /// The breaker is open until then.
    WaitUntil(Instant),
    /// Another runner's probe is out; wait to be woken.
    WaitProbe,
}

/// A subscription's breaker at run time.
pub(crate) struct Breaker {
    config: BreakerPolicy,
    state: Mutex<BreakerInner>,
}

struct BreakerInner {
    phase: Phase,
    opened: u64,
    waiters: Vec<Waker>,
}

/// A change of state, for the caller to report.
pub(crate) struct Change {
    pub(crate) to: BreakerState,
    pub(crate) consecutive: u32,
}

impl Breaker {
    pub(crate) fn new(config: BreakerPolicy) -> Self {
        Breaker {
            config,
            state: Mutex::new(BreakerInner {
                phase: Phase::Closed { consecutive: 0 },
                opened: 0,
                waiters: Vec::new(),
            }),
        }
    }

    /// Asks to run an attempt now. With `cx`, a `WaitProbe` answer registers
    /// the caller to be woken when the probe's result is in.
    pub(crate) fn permit(&self, cx: Option<&mut Context<'_>>) -> (Permit, Option<Change>) {
        let mut s = self.state.lock();
        match s.phase {
            Phase::Closed { .. } => (Permit::Go, None),
            Phase::Open { until } => {
                if Instant::now() < until {
                    return (Permit::WaitUntil(until), None);
                }
                s.phase = Phase::Probing;
                let change = Change {
                    to: BreakerState::HalfOpen,
                    consecutive: 0,
                };
                (Permit::Probe, Some(change))
            }
            Phase::Probing => {
                if let Some(cx) = cx {
                    if !s.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        s.waiters.push(cx.waker().clone());
                    }
                }
                (Permit::WaitProbe, None)
            }
        }
    }

    /// Polls for a permit that needs no timed wait: `Ready` with `Go`,
    /// `Probe` or `WaitUntil`.
    pub(crate) fn poll_permit(&self, cx: &mut Context<'_>) -> Poll<(Permit, Option<Change>)> {
        match self.permit(Some(cx)) {
            (Permit::WaitProbe, _) => Poll::Pending,
            other => Poll::Ready(other),
        }
    }

    /// A probe was granted but no attempt ran (the queue closed): the next
    /// caller probes instead.
    pub(crate) fn release_probe(&self) {
        let waiters = {
            let mut s = self.state.lock();
            if matches!(s.phase, Phase::Probing) {
                s.phase = Phase::Open {
                    until: Instant::now(),
                };
            }
            std::mem::take(&mut s.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    /// The result of an attempt.
    pub(crate) fn record(&self, probe: bool, ok: bool) -> Option<Change> {
        let (change, waiters) = {
            let mut s = self.state.lock();
            let change = match (&mut s.phase, ok) {
                (Phase::Closed { consecutive }, true) => {
                    *consecutive = 0;
                    None
                }
                (Phase::Closed { consecutive }, false) => {
                    *consecutive += 1;
                    (*consecutive >= self.config.threshold()).then_some(*consecutive)
                }
                // A probe's result decides; a run that started before the
                // breaker opened and ends while it probes decides nothing.
                (Phase::Probing, true) if probe => {
                    s.phase = Phase::Closed { consecutive: 0 };
                    let waiters = std::mem::take(&mut s.waiters);
                    return self.changed(
                        Change {
                            to: BreakerState::Closed,
                            consecutive: 0,
                        },
                        waiters,
                    );
                }
                (Phase::Probing, false) if probe => Some(1),
                _ => None,
            };
            let consecutive = change?;
            s.phase = Phase::Open {
                until: later(Instant::now(), self.config.cool_down()),
            };
            s.opened += 1;
            (
                Change {
                    to: BreakerState::Open,
                    consecutive,
                },
                std::mem::take(&mut s.waiters),
            )
        };
        self.changed(change, waiters)
    }

    fn changed(&self, change: Change, waiters: Vec<Waker>) -> Option<Change> {
        waiters.into_iter().for_each(Waker::wake);
        Some(change)
    }

    /// The state now and how often the breaker has opened.
    pub(crate) fn snapshot(&self) -> (BreakerState, u64) {
        let s = self.state.lock();
        let state = match s.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::Probing => BreakerState::HalfOpen,
        };
        (state, s.opened)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RetryPolicy;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let b = Breaker::new(BreakerPolicy::new(2, Duration::ZERO));
        assert!(matches!(b.permit(None).0, Permit::Go));
        assert!(b.record(false, false).is_none());
        let opened = b.record(false, false).expect("opens at the threshold");
        assert_eq!((opened.to, opened.consecutive), (BreakerState::Open, 2));
        assert_eq!(b.snapshot(), (BreakerState::Open, 1));
        // The cool-down (zero) is over: one probe, the others wait for it.
        assert!(matches!(b.permit(None).0, Permit::Probe));
        assert!(matches!(b.permit(None).0, Permit::WaitProbe));
        let reopened = b.record(true, false).expect("a failed probe reopens");
        assert_eq!(reopened.to, BreakerState::Open);
        assert!(matches!(b.permit(None).0, Permit::Probe));
        let closed = b.record(true, true).expect("a good probe closes");
        assert_eq!(closed.to, BreakerState::Closed);
        assert_eq!(b.snapshot(), (BreakerState::Closed, 2));
        assert!(matches!(b.permit(None).0, Permit::Go));
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let b = Breaker::new(BreakerPolicy::new(1, Duration::MAX));
        let opened = b.record(false, false).expect("opens");
        assert_eq!(opened.to, BreakerState::Open);
        assert!(matches!(b.permit(None).0, Permit::WaitUntil(_)));
        let p = RetryPolicy::fixed(Duration::MAX).jitter(true);
        for seed in 0..1000 {
            assert!(p.wait_after(1, seed) <= Duration::MAX);
        }
        let p = RetryPolicy::exponential(Duration::MAX).max_delay(Duration::MAX);
        assert_eq!(p.delay_after(u32::MAX), Duration::MAX);
    }

    #[test]
    fn an_unused_probe_goes_to_the_next_caller() {
        let b = Breaker::new(BreakerPolicy::new(1, Duration::ZERO));
        b.record(false, false);
        assert!(matches!(b.permit(None).0, Permit::Probe));
        b.release_probe();
        assert!(matches!(b.permit(None).0, Permit::Probe));
    }
}
