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

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_span_in_another_process_joins_the_publishers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tidings-test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only test here");

    let server = NatsServer::start();
    let (orders, billing) = (bus(), bus());
    let (handled_tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let _charge = billing
        .subscribe::<OrderCreated>()
        .handler(move |order| {
            let handled = handled_tx.clone();
            async move {
                let _ = handled.send(order.id);
            }
        })
        .unwrap();
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
        named(&exporter.get_finished_spans().unwrap(), "tidings.handle").len() == 1
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
    let trace = checkout.span_context.trace_id();
    // In the exporting process: the publish, inside the checkout.
    let publish = named(&spans, "tidings.publish")
        .into_iter()
        .find(|s| s.span_context.trace_id() == trace)
        .unwrap_or_else(|| panic!("a publish span in the checkout's trace: {spans:#?}"));
    assert_eq!(publish.parent_span_id, checkout.span_context.span_id());
    // In the importing process: the handler's run, a child of that publish.
    let handle = named(&spans, "tidings.handle");
    let [handle] = handle.as_slice() else {
        panic!("one handler span: {spans:#?}");
    };
    assert_eq!(handle.span_context.trace_id(), trace, "the same trace");
    assert_eq!(
        handle.parent_span_id,
        publish.span_context.span_id(),
        "a child of the publish"
    );
}
