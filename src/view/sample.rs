//! The sampler: one task that takes the bus's numbers once per interval and
//! makes the snapshot every client is sent.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::{error_value, SectionFn};
use crate::{Bus, BusStats, DeadLetter, Subscription, SubscriptionStats};

/// The queue of the view's dead-letter subscription.
pub(super) const DEAD_LETTER_QUEUE: usize = 64;
/// How many dead letters a snapshot shows.
const DEAD_LETTERS_SHOWN: usize = 50;
/// The largest payload shown, as JSON text.
const MAX_PAYLOAD: usize = 16 * 1024;

pub(super) struct Sampler {
    bus: Bus,
    interval: Duration,
    sections: Vec<(String, SectionFn)>,
    dead_letters: Subscription<DeadLetter>,
    shown: VecDeque<Value>,
    last: Option<(BusStats, std::time::Instant)>,
}

/// A subscription's counters that the view turns into rates.
#[derive(Default)]
struct Counts {
    delivered: u64,
    handled: u64,
    dropped: u64,
    failed: u64,
    dead_lettered: u64,
}

impl Sampler {
    pub(super) fn new(
        bus: Bus,
        interval: Duration,
        sections: Vec<(String, SectionFn)>,
        dead_letters: Subscription<DeadLetter>,
    ) -> Self {
        Sampler {
            bus,
            interval,
            sections,
            dead_letters,
            shown: VecDeque::new(),
            last: None,
        }
    }

    /// Takes a snapshot every interval, the first one interval after the
    /// one the view started with (`take`, before the server accepts anyone).
    pub(super) async fn run(mut self, tx: watch::Sender<Arc<str>>) {
        let start = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(start, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The sampler runs user code (sections, events' `Serialize`)
            // behind its own guards; should anything else in it panic, the
            // tick is skipped and said, and the next one tries again.
            let Ok(snapshot) = std::panic::catch_unwind(AssertUnwindSafe(|| self.take())) else {
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    "tidings view: taking a snapshot panicked; the next tick tries again"
                );
                continue;
            };
            if tx.send(snapshot).is_err() && tx.is_closed() {
                // No receiver can come back: the server is gone.
                return;
            }
        }
    }

    /// The bus now, with the rates since the last snapshot (none in the
    /// first).
    pub(super) fn take(&mut self) -> Arc<str> {
        while let Ok(letter) = self.dead_letters.try_recv() {
            if self.shown.len() == DEAD_LETTERS_SHOWN {
                self.shown.pop_front();
            }
            self.shown.push_back(dead_letter(&letter));
        }
        let stats = self.bus.stats();
        let now = std::time::Instant::now();
        let rates = self
            .last
            .as_ref()
            .map(|(before, then)| rates(before, &stats, now.saturating_duration_since(*then)));
        let document = self.document(&stats, rates);
        self.last = Some((stats, now));
        document.to_string().into()
    }

    fn document(&self, stats: &BusStats, rates: Option<Value>) -> Value {
        let mut sections = Map::new();
        for (name, f) in &self.sections {
            // A section is user code: a panic in it shows, it never ends
            // the sampler.
            let value = std::panic::catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| error_value("the section's function panicked"));
            sections.insert(name.clone(), value);
        }
        let health = self.bus.health();
        // What to do about each kind of finding present, by the name the
        // findings serialize their kind with.
        let advice: Map<String, Value> = health
            .findings
            .iter()
            .map(|f| (f.kind, to_value(&f.kind)))
            .filter_map(|(kind, name)| Some((name.as_str()?.to_owned(), json!(kind.advice()))))
            .collect();
        let mut doc = json!({
            "view": 1,
            "at_ms": unix_ms(SystemTime::now()),
            "interval_ms": self.interval.as_millis() as u64,
            "stats": to_value(stats),
            "health": to_value(&health),
            "advice": advice,
            "dead_letters": self.shown.iter().cloned().collect::<Vec<_>>(),
            "sections": sections,
        });
        if let (Some(rates), Some(doc)) = (rates, doc.as_object_mut()) {
            doc.insert("rates".into(), rates);
        }
        doc
    }
}

/// Milliseconds since the Unix epoch, as the page's clock counts them (0
/// before the epoch).
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| error_value(&e.to_string()))
}

impl Counts {
    fn of(s: &SubscriptionStats) -> Self {
        Counts {
            delivered: s.delivered,
            handled: s.handled,
            dropped: s.dropped(),
            failed: s.failed_attempts(),
            dead_lettered: s.dead_lettered,
        }
    }
}

/// Per-second rates between two snapshots `elapsed` apart.
fn rates(before: &BusStats, now: &BusStats, elapsed: Duration) -> Value {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let per_sec = |new: u64, old: u64| new.saturating_sub(old) as f64 / secs;
    let mut topics = Map::new();
    for topic in &now.topics {
        let old = before.topic(topic.topic).map_or(0, |t| t.published);
        topics.insert(
            topic.topic.to_owned(),
            json!({ "published": per_sec(topic.published, old) }),
        );
    }
    let old: HashMap<u64, Counts> = before
        .subscriptions()
        .map(|s| (s.id.get(), Counts::of(s)))
        .collect();
    let zero = Counts::default();
    let mut subscriptions = Map::new();
    for sub in now.subscriptions() {
        let new = Counts::of(sub);
        let old = old.get(&sub.id.get()).unwrap_or(&zero);
        let delivered = per_sec(new.delivered, old.delivered);
        let lag_seconds = (delivered > 0.0).then(|| sub.queue_depth as f64 / delivered);
        subscriptions.insert(
            sub.id.get().to_string(),
            json!({
                "delivered": delivered,
                "handled": per_sec(new.handled, old.handled),
                "dropped": per_sec(new.dropped, old.dropped),
                "failed": per_sec(new.failed, old.failed),
                "dead_lettered": per_sec(new.dead_lettered, old.dead_lettered),
                "lag_seconds": lag_seconds,
            }),
        );
    }
    json!({ "topics": topics, "subscriptions": subscriptions })
}

fn dead_letter(letter: &DeadLetter) -> Value {
    json!({
        "topic": letter.topic,
        "subscription": letter.subscription,
        "subscription_id": letter.subscription_id.get(),
        "seq": letter.seq,
        "event_id": letter.event_id.get(),
        "attempts": letter.attempts,
        "error": letter.error,
        "published_at_ms": unix_ms(letter.event.published_at()),
        "payload": payload(letter),
    })
}

/// The event as JSON where its topic serializes; its `Serialize` is user
/// code, so a panic in it is caught and shown.
fn payload(letter: &DeadLetter) -> Value {
    if !letter.event.is_serializable() {
        return Value::Null;
    }
    let text = std::panic::catch_unwind(AssertUnwindSafe(|| serde_json::to_string(&letter.event)));
    match text {
        Ok(Ok(text)) if text.len() <= MAX_PAYLOAD => {
            serde_json::from_str(&text).unwrap_or_else(|e| error_value(&e.to_string()))
        }
        Ok(Ok(text)) => error_value(&format!(
            "payload of {} bytes not shown (more than {MAX_PAYLOAD})",
            text.len()
        )),
        Ok(Err(e)) => error_value(&e.to_string()),
        Err(_) => error_value("the event's Serialize panicked"),
    }
}
