//! Failing handlers: [`RetryPolicy`], [`CircuitBreaker`] and the
//! [`DeadLetter`] an event becomes when its attempts are used up.
//!
//! A handler run that returns an error, panics or overruns its
//! [timeout](crate::SubscribeBuilder::timeout) is a failed attempt. The
//! runner that took the event keeps it and tries again after the policy's
//! delay; with concurrency 1 the next event waits, so the subscription's
//! order holds, and no other subscription is touched. When the attempts are
//! used up the event is published as a [`DeadLetter`] on the bus's
//! dead-letter topic, [`DEAD_LETTER_TOPIC`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// tokio's clock: it is std's, except under tokio's paused test clock, where
// a breaker's cool-down follows the test's time like the sleeps around it.
use tokio::time::Instant;

use parking_lot::Mutex;

use crate::erased::AnyEvent;
use crate::event::EventId;
use crate::subscribe::SubscriptionId;
use crate::Event;

/// The topic dead letters are published on. Every bus registers it;
/// subscribe to it with [`Bus::dead_letters`](crate::Bus::dead_letters).
pub const DEAD_LETTER_TOPIC: &str = "tidings.dead_letters";

/// How often, and how far apart, a failed handler run is tried again.
///
/// The default ([`RetryPolicy::none`]) runs a handler once: a failure makes
/// the event a dead letter at once.
///
/// ```
/// use std::time::Duration;
/// use tidings::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(10))
///     .max_attempts(5)                      // the first run and 4 retries
///     .max_delay(Duration::from_secs(1));
/// assert_eq!(policy.delay_after(1), Duration::from_millis(10));
/// assert_eq!(policy.delay_after(3), Duration::from_millis(40));
/// assert_eq!(policy.delay_after(9), Duration::from_secs(1));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    max_delay: Duration,
    jitter: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Backoff {
    Fixed(Duration),
    Exponential(Duration),
}

impl RetryPolicy {
    /// One attempt, no retry (the default).
    pub const fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Fixed(Duration::ZERO),
            max_delay: Duration::MAX,
            jitter: false,
        }
    }

    /// Retries after the same `delay` each time; 3 attempts in all unless
    /// [`max_attempts`](RetryPolicy::max_attempts) says otherwise.
    pub const fn fixed(delay: Duration) -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed(delay),
            max_delay: Duration::MAX,
            jitter: false,
        }
    }

    /// Retries after `initial`, then twice as long each time, up to
    /// [`max_delay`](RetryPolicy::max_delay) (default 30 s); 5 attempts in
    /// all unless [`max_attempts`](RetryPolicy::max_attempts) says otherwise.
    pub const fn exponential(initial: Duration) -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::Exponential(initial),
            max_delay: Duration::from_secs(30),
            jitter: false,
        }
    }

    /// Attempts in all, the first run included. 0 is refused when
    /// subscribing ([`SubscribeError::ZeroAttempts`](crate::error::SubscribeError::ZeroAttempts)).
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The longest delay between two attempts.
    pub const fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Spreads retries: each delay is drawn between half the computed delay
    /// and all of it, so subscriptions that failed together do not retry in
    /// lock step.
    pub const fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the next attempt once `failed` attempts have failed
    /// (1 = after the first run), without jitter.
    pub fn delay_after(&self, failed: u32) -> Duration {
        let delay = match self.backoff {
            Backoff::Fixed(d) => d,
            Backoff::Exponential(initial) => {
                let doublings = failed.saturating_sub(1).min(63);
                initial
                    .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
                    .unwrap_or(Duration::MAX)
            }
        };
        delay.min(self.max_delay)
    }

    /// The delay actually waited: with jitter, drawn from `seed`.
    pub(crate) fn wait_after(&self, failed: u32, seed: u64) -> Duration {
        let delay = self.delay_after(failed);
        if !self.jitter || delay.is_zero() {
            return delay;
        }
        // splitmix64: spreads retries of different events and attempts
        // without a random number generator dependency.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let fraction = 0.5 + (z >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        // Never more than `delay`, and never a panic for a huge one.
        Duration::try_from_secs_f64(delay.as_secs_f64() * fraction).map_or(delay, |d| d.min(delay))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::none()
    }
}

/// Stops calling a handler whose dependency is down.
///
/// After `failures` consecutive failed attempts the breaker **opens**: the
/// subscription stops taking events (they wait in its queue, under its
/// overflow policy, instead of burning retries), for `cool_down`. Then it is
/// **half open**: one attempt goes through as a probe. Success closes the
/// breaker; failure opens it for another `cool_down`. The breaker itself
/// never drops an event.
///
/// ```
/// use std::time::Duration;
/// use tidings::CircuitBreaker;
/// let breaker = CircuitBreaker::new(5, Duration::from_secs(10));
/// # let _ = breaker;
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreaker {
    failures: u32,
    cool_down: Duration,
}

impl CircuitBreaker {
    /// Opens after `failures` consecutive failed attempts, for `cool_down`.
    /// 0 failures is refused when subscribing.
    pub const fn new(failures: u32, cool_down: Duration) -> Self {
        CircuitBreaker {
            failures,
            cool_down,
        }
    }

    pub(crate) fn threshold(&self) -> u32 {
        self.failures
    }
}

/// `at + wait`, or as far on as the clock goes: a duration the user gave
/// never overflows an `Instant`. About a century on is "never" for a
/// process.
pub(crate) fn later(at: Instant, wait: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(wait)
        .or_else(|| at.checked_add(CENTURY))
        .or_else(|| at.checked_add(CENTURY / 100))
        .unwrap_or(at)
}

/// Where a subscription's circuit breaker stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BreakerState {
    /// Events flow to the handler.
    Closed,
    /// The handler is not called until the cool-down ends.
    Open,
    /// One probe attempt is (or is about to be) running.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

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
    config: CircuitBreaker,
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
    pub(crate) fn new(config: CircuitBreaker) -> Self {
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
                    (*consecutive >= self.config.failures).then_some(*consecutive)
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
                until: later(Instant::now(), self.config.cool_down),
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

/// An event whose handler attempts were all used up, published on
/// [`DEAD_LETTER_TOPIC`]. Read them with
/// [`Bus::dead_letters`](crate::Bus::dead_letters).
///
/// ```
/// # use std::time::Duration;
/// # use tidings::{Bus, Event, RetryPolicy};
/// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut dead = bus.dead_letters().stream()?;
/// let _mailer = bus
///     .subscribe::<OrderCreated>()
///     .name("mailer")
///     .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(2))
///     .handler(|_| async { Err::<(), _>("smtp is down") })?;
/// bus.publish(OrderCreated { id: 7 }).await?;
/// let letter = dead.recv().await.expect("dead letter");
/// assert_eq!((letter.subscription.as_str(), letter.attempts), ("mailer", 2));
/// assert_eq!(letter.error, "smtp is down");
/// assert_eq!(letter.event.downcast_ref::<OrderCreated>().map(|o| o.id), Some(7));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The topic of the event.
    pub topic: &'static str,
    /// The event's id.
    pub event_id: EventId,
    /// The event's sequence number on its topic.
    pub seq: u64,
    /// The subscription whose handler gave up.
    pub subscription: String,
    /// Its id.
    pub subscription_id: SubscriptionId,
    /// Attempts made, all failed.
    pub attempts: u32,
    /// The last attempt's error (`panic: …` for a panic, `timed out after …`
    /// for a timeout).
    pub error: String,
    /// The event itself, type-erased; `event.downcast_ref::<E>()` gives it
    /// back typed.
    pub event: AnyEvent,
}

// Keeps compiler errors about a missing `Event` impl from suggesting this one.
#[diagnostic::do_not_recommend]
impl Event for DeadLetter {
    const TOPIC: &'static str = DEAD_LETTER_TOPIC;
}

/// Everything a runner needs to retry, time out and dead-letter.
#[derive(Clone)]
pub(crate) struct Reliability {
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) breaker: Option<Arc<Breaker>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_and_caps() {
        let p =
            RetryPolicy::exponential(Duration::from_millis(100)).max_delay(Duration::from_secs(1));
        let delays: Vec<u128> = (1..=6).map(|n| p.delay_after(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay_after(200), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        let p = RetryPolicy::fixed(Duration::from_millis(100)).jitter(true);
        let waits: Vec<Duration> = (0..1000).map(|seed| p.wait_after(1, seed)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(50) && *w <= Duration::from_millis(100)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 500,
            "jitter spreads: {} distinct",
            distinct.len()
        );
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let b = Breaker::new(CircuitBreaker::new(2, Duration::ZERO));
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
        let b = Breaker::new(CircuitBreaker::new(1, Duration::MAX));
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
        let b = Breaker::new(CircuitBreaker::new(1, Duration::ZERO));
        b.record(false, false);
        assert!(matches!(b.permit(None).0, Permit::Probe));
        b.release_probe();
        assert!(matches!(b.permit(None).0, Permit::Probe));
    }
}
