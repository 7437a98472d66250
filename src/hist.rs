//! A small histogram of durations that many threads record into without a
//! lock: a counter per bucket, four buckets per power of two, so a quantile
//! read from it is at most 25 % above the true value (it reports the upper
//! edge of the bucket the quantile falls in).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets 0..4 hold 0..4 ns exactly; from there, four per power of two up
/// to 2^64 ns.
const BUCKETS: usize = 4 + 62 * 4;

pub(crate) struct Hist {
    buckets: Box<[AtomicU64]>,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn index(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    // ns has its highest bit at `log` >= 2; the next two bits pick the
    // quarter of [2^log, 2^(log+1)).
    let log = 63 - ns.leading_zeros();
    let quarter = (ns >> (log - 2)) & 3;
    4 + (log as usize - 2) * 4 + quarter as usize
}

/// The largest value bucket `i` holds.
fn upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let log = (i - 4) / 4 + 2;
    let quarter = ((i - 4) % 4) as u64;
    // [ (4 + q) << (log - 2), (5 + q) << (log - 2) ), in u128: the top
    // bucket's edge is 2^64.
    let edge = u128::from(5 + quarter) << (log - 2);
    u64::try_from(edge - 1).unwrap_or(u64::MAX)
}

/// Histograms a thread each (by a shard index the caller keeps, e.g. a
/// worker's), so that threads recording at once never write one cache
/// line; allocated as used; read as one.
#[derive(Default)]
pub(crate) struct Sharded {
    shards: [std::sync::OnceLock<Hist>; SHARDS],
}

const SHARDS: usize = 8;

impl Sharded {
    pub(crate) fn record(&self, shard: usize, took: Duration) {
        self.shards[shard % SHARDS]
            .get_or_init(Hist::default)
            .record(took);
    }

    /// The median and the 99th percentile over every shard, `None` if
    /// nothing was recorded.
    pub(crate) fn quantiles(&self) -> Option<crate::stats::Quantiles> {
        let all = Hist::default();
        for shard in self.shards.iter().filter_map(std::sync::OnceLock::get) {
            for (to, from) in all.buckets.iter().zip(shard.buckets.iter()) {
                to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        all.quantiles()
    }
}

impl Hist {
    pub(crate) fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[index(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The median and the 99th percentile, `None` if nothing was recorded.
    pub(crate) fn quantiles(&self) -> Option<crate::stats::Quantiles> {
        Some(crate::stats::Quantiles::new(
            self.quantile(0.5)?,
            self.quantile(0.99)?,
        ))
    }

    /// The `q` quantile (0.0..=1.0) of what was recorded, `None` if nothing
    /// was.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().fold(0, |a, &c| a.saturating_add(c));
        if total == 0 {
            return None;
        }
        // The rank of the value wanted, 1-based.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return Some(Duration::from_nanos(upper(i)));
            }
        }
        Some(Duration::from_nanos(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_whose_upper_edge_is_within_a_quarter() {
        let samples = (0..64)
            .flat_map(|shift| [1u64 << shift, (1u64 << shift).wrapping_mul(3) / 2])
            .chain([0, 1, 2, 3, 5, 7, 999, 1_000_000, u64::MAX, u64::MAX - 1]);
        for ns in samples {
            let i = index(ns);
            assert!(i < BUCKETS, "{ns}");
            let hi = upper(i);
            assert!(hi >= ns, "{ns} above its bucket's edge {hi}");
            assert!(
                hi - ns <= ns / 4 + 1,
                "{ns}: edge {hi} more than a quarter above"
            );
            if i > 0 {
                assert!(upper(i - 1) < ns, "{ns} belongs to an earlier bucket");
            }
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let h = Hist::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=100 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).expect("recorded");
        let p99 = h.quantile(0.99).expect("recorded");
        assert!(
            p50 >= Duration::from_micros(50) && p50 <= Duration::from_micros(63),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_micros(99) && p99 <= Duration::from_micros(124),
            "{p99:?}"
        );
        h.record(Duration::MAX);
        assert!(h.quantile(1.0).expect("recorded") >= Duration::from_secs(500 * 365 * 86_400));
    }
}
