//! With the `opentelemetry` feature, the span an event was published in
//! crosses the bridge as a W3C `traceparent`: the handler's span in the
//! importing process is a child of the publish in the exporting one, in the
//! same trace. Two buses in this process talk only through a real
//! `nats-server`; spans go to OpenTelemetry's in-memory exporter.

mod common;

use std::time::Duration;

use common::{next, until, NatsServer};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
}

fn bus() -> Bus {
    Bus::builder()
        .bridge_topics()
        .topic::<OrderCreated>()
        .build()
        .unwrap()
}

/// The spans every test of this binary records (one global subscriber).
fn spans() -> (InMemorySpanExporter, SdkTracerProvider) {
    static SPANS: std::sync::OnceLock<(InMemorySpanExporter, SdkTracerProvider)> =
        std::sync::OnceLock::new();
    SPANS
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tidings-test")));
            tracing::subscriber::set_global_default(subscriber).expect("set once, here");
            (exporter, provider)
        })
        .clone()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The spans named `name` in the trace of the first span named `root`.
fn in_trace_of<'a>(spans: &'a [SpanData], root: &str, name: &str) -> Vec<&'a SpanData> {
    let Some(root) = named(spans, root).into_iter().next() else {
        return Vec::new();
    };
    let trace = root.span_context.trace_id();
    named(spans, name)
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

/// An async handler of `bus`'s orders that reports each order's id.
fn reporting_handler(
    bus: &Bus,
) -> (
    tidings::SubscriptionHandle,
    tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    let (handled_tx, handled) = tokio::sync::mpsc::unbounded_channel();
    let handle = bus
        .subscribe::<OrderCreated>()
        .handler(move |order| {
            let handled = handled_tx.clone();
            async move {
                let _ = handled.send(order.id);
            }
        })
        .unwrap();
    (handle, handled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_span_in_another_process_joins_the_publishers_trace() {
    let (exporter, provider) = spans();

    let server = NatsServer::start();
    let (orders, billing) = (bus(), bus());
    let (_charge, mut handled) = reporting_handler(&billing);
    let b = Bridge::builder(&billing, server.connect())
        .name("billing")
        .import::<OrderCreated>()
        .start()
        .await
        .unwrap();
    let a = Bridge::builder(&orders, server.connect())
        .name("orders")
        .export::<OrderCreated>()
        .start()
        .await
        .unwrap();
    orders
        .publish(OrderCreated { id: 1 })
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    assert_eq!(next("the order to be handled", handled.recv()).await, 1);
    // The handler's span ends just after its run.
    until("the handler's span to end", || {
        let spans = exporter.get_finished_spans().unwrap();
        !in_trace_of(&spans, "checkout", "tidings.handle").is_empty()
    })
    .await;
    a.shutdown(Duration::from_secs(10)).await;
    b.shutdown(Duration::from_secs(10)).await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let checkout = named(&spans, "checkout");
    let [checkout] = checkout.as_slice() else {
        panic!("one checkout span: {spans:#?}");
    };
    // In the exporting process: the publish, inside the checkout.
    let publish = *in_trace_of(&spans, "checkout", "tidings.publish")
        .first()
        .unwrap_or_else(|| panic!("a publish span in the checkout's trace: {spans:#?}"));
    assert_eq!(publish.parent_span_id, checkout.span_context.span_id());
    // In the importing process: the handler's run, a child of that publish.
    let handle = in_trace_of(&spans, "checkout", "tidings.handle");
    let [handle] = handle.as_slice() else {
        panic!("one handler span in the checkout's trace: {spans:#?}");
    };
    assert_eq!(
        handle.parent_span_id,
        publish.span_context.span_id(),
        "a child of the publish"
    );
}

/// In one process too: the handler's span is a child of the publish, in
/// the trace of the span the publish was made in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_handler_span_joins_the_publishers_trace() {
    let (exporter, provider) = spans();
    let bus = bus();
    let (_audit, mut handled) = reporting_handler(&bus);
    bus.publish(OrderCreated { id: 2 })
        .instrument(tracing::info_span!("refund"))
        .await
        .unwrap();
    assert_eq!(next("the order to be handled", handled.recv()).await, 2);
    until("the handler's span to end", || {
        let spans = exporter.get_finished_spans().unwrap();
        !in_trace_of(&spans, "refund", "tidings.handle").is_empty()
    })
    .await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let publish = *in_trace_of(&spans, "refund", "tidings.publish")
        .first()
        .expect("the publish, in the trace");
    let handle = *in_trace_of(&spans, "refund", "tidings.handle")
        .first()
        .expect("the handler, in the trace");
    assert_eq!(handle.parent_span_id, publish.span_context.span_id());
}
