//! What happens when a handler fails: [`RetryPolicy`] (how often, how far
//! apart) and [`BreakerPolicy`] (when to stop calling it for a while).

use std::time::Duration;

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
/// use tidings::BreakerPolicy;
/// let breaker = BreakerPolicy::new(5, Duration::from_secs(10));
/// # let _ = breaker;
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    failures: u32,
    cool_down: Duration,
}

impl BreakerPolicy {
    /// Opens after `failures` consecutive failed attempts, for `cool_down`.
    /// 0 failures is refused when subscribing.
    pub const fn new(failures: u32, cool_down: Duration) -> Self {
        BreakerPolicy {
            failures,
            cool_down,
        }
    }

    pub(crate) fn threshold(&self) -> u32 {
        self.failures
    }

    pub(crate) fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

/// `at + wait`, or as far on as the clock goes: a duration the user gave
/// never overflows an `Instant`. About a century on is "never" for a
/// process.
pub(crate) fn later(at: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(wait)
        .or_else(|| at.checked_add(CENTURY))
        .or_else(|| at.checked_add(CENTURY / 100))
        .unwrap_or(at)
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
}
