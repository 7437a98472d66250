//! The AsyncAPI document of a bus, validated against the official AsyncAPI
//! 3.0.0 JSON Schema (`vendor/asyncapi/`, from asyncapi/spec-json-schemas,
//! Apache-2.0).

use serde_json::Value;
use tidings::asyncapi::AsyncApi;
use tidings_demos::shop::{shop, OrderPlaced, PaymentCharged};

fn official_schema() -> Value {
    let text = include_str!("../vendor/asyncapi/3.0.0-without-id.json");
    serde_json::from_str(text).expect("the vendored schema is JSON")
}

fn assert_valid(doc: &Value) {
    let validator =
        jsonschema::draft7::new(&official_schema()).expect("the official schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid AsyncAPI 3.0.0 document:\n{}\n{doc:#}",
        errors.join("\n")
    );
}

#[tokio::test]
async fn the_shops_document_is_valid_asyncapi_3() {
    let shop = shop().unwrap();
    let doc = AsyncApi::new(&shop.bus)
        .title("shop")
        .version("1.0.0")
        .description("Orders, payments, stock and e-mail.")
        .schema::<OrderPlaced>()
        .unwrap()
        .server("nats", "127.0.0.1:4222", "nats")
        .address("payments.charged", "shop.payments.charged", "nats")
        .unwrap()
        .to_json();
    assert_valid(&doc);

    // What it says: every user topic a channel, `tidings.*` left out...
    let channels = doc["channels"].as_object().unwrap();
    let mut names: Vec<&str> = channels.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "emails.sent",
            "orders.placed",
            "payments.charged",
            "stock.reserved"
        ]
    );
    // ...a send for each, a receive where this process subscribes...
    let ops = doc["operations"].as_object().unwrap();
    assert_eq!(ops.keys().filter(|k| k.starts_with("send.")).count(), 4);
    let receive = &ops["receive.orders.placed"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(
        receive["x-tidings-subscriptions"],
        serde_json::json!(["payments", "stock", "fraud-check"])
    );
    assert!(
        ops.get("receive.stock.reserved").is_none(),
        "nobody subscribes to stock.reserved"
    );
    // ...the schema of a type that has one, JSON for serde topics...
    let placed = &doc["components"]["messages"]["orders.placed"];
    assert_eq!(placed["contentType"], "application/json");
    let schema = &placed["payload"]["schema"];
    assert_eq!(schema["properties"]["email"]["type"], "string");
    assert_eq!(
        doc["components"]["messages"]["payments.charged"]["name"],
        "PaymentCharged"
    );
    assert!(doc["components"]["messages"]["stock.reserved"]
        .get("contentType")
        .is_none());
    // ...and a bridged topic's subject on its server.
    let charged = &channels["payments.charged"];
    assert_eq!(charged["address"], "shop.payments.charged");
    assert_eq!(charged["servers"][0]["$ref"], "#/servers/nats");
    assert_eq!(doc["servers"]["nats"]["protocol"], "nats");
    let _ = std::any::type_name::<PaymentCharged>();
}

#[tokio::test]
async fn a_bare_bus_makes_a_valid_document_and_an_unknown_topic_is_an_error() {
    let bus = tidings::Bus::builder().build().unwrap();
    assert_valid(&AsyncApi::new(&bus).to_json());
    let shop = shop().unwrap();
    let err = AsyncApi::new(&shop.bus)
        .address("orders.refunded", "x", "nats")
        .unwrap_err();
    assert_eq!(err.topic, "orders.refunded");
    // The validator does catch a broken document: the test can fail.
    let mut broken = AsyncApi::new(&shop.bus).to_json();
    broken["operations"]["send.orders.placed"]["action"] = "publish".into();
    let validator = jsonschema::draft7::new(&official_schema()).unwrap();
    assert!(!validator.is_valid(&broken));
}
