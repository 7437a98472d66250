//! A bridge in the bus's AsyncAPI document: its server and the subjects of
//! the topics it carries, and the document still valid against the
//! official AsyncAPI 3.0.0 JSON Schema (vendored in `demos/vendor/`).

mod common;

use common::NatsServer;
use serde_json::Value;
use tidings::asyncapi::AsyncApi;
use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics};

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
}

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "payments.settled", serde)]
struct PaymentSettled {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "orders.audited")]
struct Audited;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_names_the_server_and_each_bridged_subject() {
    let server = NatsServer::start();
    let bus = Bus::builder()
        .bridge_topics()
        .topic::<OrderCreated>()
        .topic::<PaymentSettled>()
        .topic::<Audited>()
        .build()
        .unwrap();
    let bridge = Bridge::builder(&bus, server.connect())
        .name("billing")
        .prefix("acme")
        .export::<OrderCreated>()
        .import::<PaymentSettled>()
        .start()
        .await
        .unwrap();
    let doc = bridge
        .asyncapi(AsyncApi::new(&bus).title("billing"))
        .to_json();

    let schema: Value = serde_json::from_str(include_str!(
        "../../demos/vendor/asyncapi/3.0.0-without-id.json"
    ))
    .unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");

    assert_eq!(doc["servers"]["nats"]["protocol"], "nats");
    let host = doc["servers"]["nats"]["host"].as_str().unwrap();
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    for (topic, subject) in [
        ("orders.created", "acme.orders.created"),
        ("payments.settled", "acme.payments.settled"),
    ] {
        assert_eq!(doc["channels"][topic]["address"], subject);
        assert_eq!(
            doc["channels"][topic]["servers"][0]["$ref"],
            "#/servers/nats"
        );
    }
    // A topic the bridge does not carry stays local: its address is the
    // topic, on no server.
    assert_eq!(
        doc["channels"]["orders.audited"]["address"],
        "orders.audited"
    );
    assert!(doc["channels"]["orders.audited"].get("servers").is_none());
    bridge.shutdown(std::time::Duration::from_secs(60)).await;
}
