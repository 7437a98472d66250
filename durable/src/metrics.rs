//! Counters, gauges and histograms of durable topics through the `metrics`
//! facade, with the `metrics` feature (plug in any exporter); without it,
//! nothing. Labelled by `topic` (and `subscription`).

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    pub(crate) fn sync(topic: &str, took: Duration, group: usize) {
        let t = topic.to_owned();
        metrics::histogram!("tidings_durable_sync_seconds", "topic" => t.clone())
            .record(took.as_secs_f64());
        metrics::histogram!("tidings_durable_sync_group", "topic" => t).record(group as f64);
    }
    pub(crate) fn stored(topic: &str, duplicate: bool) {
        let name = if duplicate {
            "tidings_durable_duplicates_total"
        } else {
            "tidings_durable_stored_total"
        };
        metrics::counter!(name, "topic" => topic.to_owned()).increment(1);
    }
    pub(crate) fn bytes(topic: &str, bytes: u64, segments: usize) {
        metrics::gauge!("tidings_durable_bytes", "topic" => topic.to_owned()).set(bytes as f64);
        metrics::gauge!("tidings_durable_segments", "topic" => topic.to_owned())
            .set(segments as f64);
    }
    pub(crate) fn recovery(topic: &str, took: Duration, truncated: u64) {
        metrics::gauge!("tidings_durable_recovery_seconds", "topic" => topic.to_owned())
            .set(took.as_secs_f64());
        metrics::counter!("tidings_durable_truncated_bytes_total", "topic" => topic.to_owned())
            .increment(truncated);
    }
    pub(crate) fn offered(topic: &str, sub: &str, redelivered: bool, lag: u64) {
        let (t, s) = (topic.to_owned(), sub.to_owned());
        if redelivered {
            metrics::counter!("tidings_durable_redelivered_total", "topic" => t.clone(), "subscription" => s.clone()).increment(1);
        }
        metrics::gauge!("tidings_durable_lag_events", "topic" => t, "subscription" => s)
            .set(lag as f64);
    }
    pub(crate) fn expired(topic: &str, sub: &str, events: u64) {
        metrics::counter!("tidings_durable_expired_total", "topic" => topic.to_owned(), "subscription" => sub.to_owned()).increment(events);
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    pub(crate) fn sync(_: &str, _: Duration, _: usize) {}
    pub(crate) fn stored(_: &str, _: bool) {}
    pub(crate) fn bytes(_: &str, _: u64, _: usize) {}
    pub(crate) fn recovery(_: &str, _: Duration, _: u64) {}
    pub(crate) fn offered(_: &str, _: &str, _: bool, _: u64) {}
    pub(crate) fn expired(_: &str, _: &str, _: u64) {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;
