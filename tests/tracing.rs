//! The spans and warnings tidings emits through `tracing`, recorded by a
//! test layer. In its own binary: the recording subscriber is process-wide,
//! since sync handlers run on the bus's own threads.
#![cfg(feature = "tracing")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use tidings::{Bus, Event, Overflow};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct Seen {
    /// Closed spans: name and fields.
    spans: Vec<(String, Fields)>,
    /// Events: level and fields (the message under "message").
    events: Vec<(tracing::Level, Fields)>,
}

struct FieldsVisitor<'a>(&'a mut Fields);

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Recorder(Arc<Mutex<Seen>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut FieldsVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut FieldsVisitor(fields));
            }
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldsVisitor(&mut fields));
        self.0
            .lock()
            .unwrap()
            .events
            .push((*event.metadata().level(), fields));
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions()
                .get::<Fields>()
                .cloned()
                .unwrap_or_default();
            self.0
                .lock()
                .unwrap()
                .spans
                .push((span.name().to_owned(), fields));
        }
    }
}

fn seen() -> &'static Arc<Mutex<Seen>> {
    static SEEN: OnceLock<Arc<Mutex<Seen>>> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&seen)));
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        seen
    })
}

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_handler_runs_are_spans_and_trouble_is_a_warning() {
    let seen = seen();
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let billing = bus
        .subscribe::<OrderCreated>()
        .name("billing")
        .sync(|e| match e.id {
            2 => Err("card declined"),
            3 => panic!("billing bug"),
            _ => Ok(()),
        })
        .unwrap();
    let mailer = bus
        .subscribe::<OrderCreated>()
        .name("mailer")
        .handler(|_| async {})
        .unwrap();
    let _lossy = bus
        .subscribe::<OrderCreated>()
        .name("lossy")
        .capacity(1)
        .overflow(Overflow::DropNewest)
        .stream()
        .unwrap();
    let mut receipts = Vec::new();
    for id in 1..=3 {
        receipts.push(bus.publish(OrderCreated { id }).await.unwrap());
    }
    billing.unsubscribe().await;
    mailer.unsubscribe().await;

    let seen = seen.lock().unwrap();
    // One publish span per publish, with the receipt.
    let publishes = |topic: &str| -> Vec<&Fields> {
        seen.spans
            .iter()
            .filter(|(name, f)| name == "tidings.publish" && f["topic"] == topic)
            .map(|(_, f)| f)
            .collect()
    };
    // The two events billing gave up on went out as dead letters.
    assert_eq!(publishes("tidings.dead_letters").len(), 2);
    let publishes = publishes("orders.created");
    assert_eq!(publishes.len(), 3);
    for (span, receipt) in publishes.iter().zip(&receipts) {
        assert_eq!(span["topic"], "orders.created");
        assert_eq!(span["event_id"], receipt.id.get().to_string());
        assert_eq!(span["seq"], receipt.seq.to_string());
        assert_eq!(span["enqueued"], receipt.enqueued.to_string());
        assert_eq!(span["dropped_newest"], receipt.dropped_newest.to_string());
    }
    // One handler span per run, with outcome and duration.
    let runs = |sub: &str| -> Vec<Fields> {
        seen.spans
            .iter()
            .filter(|(name, f)| name == "tidings.handle" && f["subscription"] == sub)
            .map(|(_, f)| f.clone())
            .collect()
    };
    let billing_runs = runs("billing");
    assert_eq!(billing_runs.len(), 3);
    let outcomes: Vec<&str> = billing_runs.iter().map(|f| f["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["ok", "failed", "panicked"]);
    for f in &billing_runs {
        assert_eq!(f["topic"], "orders.created");
        assert_eq!(f["kind"], "sync");
        assert_eq!(f["attempt"], "1");
        assert!(
            f.contains_key("duration_us") && f.contains_key("event_id") && f.contains_key("seq")
        );
    }
    assert_eq!(runs("mailer").len(), 3);
    // Warnings: the failure, the panic, and the drops.
    let warnings: Vec<&Fields> = seen
        .events
        .iter()
        .filter(|(level, _)| *level == tracing::Level::WARN)
        .map(|(_, f)| f)
        .collect();
    let warned = |message: &str, sub: &str| {
        warnings.iter().any(|f| {
            f["message"] == message && f.get("subscription").map(String::as_str) == Some(sub)
        })
    };
    assert!(warned("tidings: handler failed", "billing"), "{warnings:?}");
    assert!(
        warned(
            "tidings: handler panicked; the subscription goes on",
            "billing"
        ),
        "{warnings:?}"
    );
    assert!(
        warned("tidings: subscription is full and dropping events", "lossy"),
        "{warnings:?}"
    );
    let failure = warnings
        .iter()
        .find(|f| f["message"] == "tidings: handler failed")
        .unwrap();
    assert_eq!(failure["error"], "card declined");
    assert_eq!(failure["event_id"], receipts[1].id.get().to_string());
    // Nobody reads dead letters here: said once, not per letter.
    let unheard = warnings
        .iter()
        .filter(|f| f["message"].starts_with("tidings: event dead-lettered with nobody subscribed"))
        .count();
    assert_eq!(unheard, 1, "{warnings:?}");
}
