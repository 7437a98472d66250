//! The view's server from the outside, over raw TCP: what it serves, what
//! it refuses, and that junk from a peer is answered, never a panic.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings::view::{ViewBuilder, ViewError};
use tidings::{Bus, Event, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Debug, Serialize, Deserialize, Event)]
#[event(topic = "orders.placed", serde)]
struct OrderPlaced {
    id: u64,
}

/// Sends `request` as it is and reads the whole answer (the view closes
/// every connection after one).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let answer = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn bus() -> Bus {
    Bus::builder().topic::<OrderPlaced>().build().unwrap()
}

#[tokio::test]
async fn settings_out_of_range_are_refused_and_bind_nothing() {
    let bus = bus();
    let too_fast = ViewBuilder::new(&bus).interval(Duration::from_millis(1));
    assert!(matches!(
        too_fast.serve("127.0.0.1:0").await,
        Err(ViewError::Interval { .. })
    ));
    let bad_token = ViewBuilder::new(&bus).token("with space");
    assert!(matches!(
        bad_token.serve("127.0.0.1:0").await,
        Err(ViewError::BadToken)
    ));
    let twice = ViewBuilder::new(&bus).section("a", || 1).section("a", || 2);
    assert!(matches!(
        twice.serve("127.0.0.1:0").await,
        Err(ViewError::Section { .. })
    ));
    // Anything but loopback needs a token.
    let open = ViewBuilder::new(&bus).serve("0.0.0.0:0").await;
    let Err(ViewError::TokenRequired { addr }) = open else {
        panic!("served on every interface without a token: {open:?}");
    };
    assert!(addr.ip().is_unspecified());
    assert!(ViewBuilder::new(&bus)
        .token("s3cret")
        .serve("0.0.0.0:0")
        .await
        .is_ok());
    // Refusals took no subscription.
    let stats = bus.stats();
    let views = stats
        .subscriptions()
        .filter(|s| s.name == "tidings.view")
        .count();
    assert_eq!(views, 1, "only the view that started subscribes");
}

#[tokio::test]
async fn it_serves_the_page_snapshots_events_and_asyncapi() {
    let bus = bus();
    let _failing = bus
        .subscribe::<OrderPlaced>()
        .name("billing")
        .retry(RetryPolicy::none())
        .handler(|order| async move { Err::<(), _>(format!("declined {}", order.id)) })
        .unwrap();
    let view = ViewBuilder::new(&bus)
        .interval(Duration::from_millis(100))
        .section("custom", || serde_json::json!({ "answer": 42 }))
        .section("broken", || -> u32 { panic!("a section that panics") })
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let addr = view.local_addr();
    let (status, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"view.js\">"));
    assert_eq!(get(addr, "/view.js").await.0, 200);
    assert_eq!(get(addr, "/view.css").await.0, 200);

    bus.publish(OrderPlaced { id: 7 }).await.unwrap();
    // Snapshots come once per interval: wait for the one with the dead
    // letter and with rates (a second snapshot at least).
    let snapshot = loop {
        let (status, body) = get(addr, "/api/snapshot").await;
        assert_eq!(status, 200);
        let snapshot: Value = serde_json::from_str(&body).unwrap();
        if snapshot["dead_letters"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
            && snapshot.get("rates").is_some()
        {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(snapshot["view"], 1);
    let letter = &snapshot["dead_letters"][0];
    assert_eq!(letter["topic"], "orders.placed");
    assert_eq!(letter["subscription"], "billing");
    assert_eq!(letter["error"], "declined 7");
    assert_eq!(letter["payload"]["id"], 7);
    assert_eq!(snapshot["sections"]["custom"]["answer"], 42);
    assert!(snapshot["sections"]["broken"]["error"].is_string());
    let topic = &snapshot["stats"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "orders.placed")
        .unwrap()
        .clone();
    assert_eq!(topic["published"], 1);
    let billing = topic["subscriptions"][0]["id"].to_string();
    assert!(snapshot["rates"]["subscriptions"][billing.as_str()]["delivered"].is_number());

    // Server-sent events: the head, then `data:` lines of the same JSON.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\ndata: ").count() < 2 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream"));
    let first = seen
        .split("\ndata: ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(first).unwrap()["view"], 1);

    let (status, doc) = get(addr, "/asyncapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["channels"]["orders.placed"]["address"], "orders.placed");

    // Dropping the view ends open streams and frees the port.
    drop(view);
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(rest.is_ok(), "the event stream outlived its view");
}

#[tokio::test]
async fn junk_gets_an_error_never_a_panic_and_data_needs_the_token() {
    let bus = bus();
    let view = ViewBuilder::new(&bus)
        .token("t0k&n")
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let addr = view.local_addr();
    let status = |answer: String| answer.get(9..12).unwrap_or("---").to_owned();
    // Data needs the token, in a header or the query (percent-encoded).
    assert_eq!(get(addr, "/api/snapshot").await.0, 401);
    assert_eq!(get(addr, "/api/snapshot?token=wrong").await.0, 401);
    assert_eq!(get(addr, "/asyncapi.json").await.0, 401);
    assert_eq!(get(addr, "/api/snapshot?token=t0k%26n").await.0, 200);
    let bearer = raw(
        addr,
        b"GET /api/snapshot HTTP/1.1\r\nAuthorization: Bearer t0k&n\r\n\r\n",
    )
    .await;
    assert_eq!(status(bearer), "200");
    // The page itself holds no data.
    assert_eq!(get(addr, "/").await.0, 200);
    // Read-only, and junk is answered.
    assert_eq!(
        status(raw(addr, b"POST /api/snapshot HTTP/1.1\r\n\r\n").await),
        "405"
    );
    assert_eq!(status(raw(addr, b"DELETE / HTTP/1.1\r\n\r\n").await), "405");
    assert_eq!(status(raw(addr, b"GET / SPDY/3\r\n\r\n").await), "400");
    assert_eq!(status(raw(addr, b"\xff\xfe\xfd\r\n\r\n").await), "400");
    assert_eq!(
        status(raw(addr, b"GET nowhere HTTP/1.1\r\n\r\n").await),
        "400"
    );
    assert_eq!(get(addr, "/../../etc/passwd?token=t0k%26n").await.0, 404);
    // A head that never ends is cut at 8 KiB.
    let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'x', 64 * 1024));
    assert_eq!(status(raw(addr, &endless).await), "431");
    // A peer that connects and leaves, or sends half a head, costs nothing.
    for _ in 0..100 {
        drop(TcpStream::connect(addr).await.unwrap());
    }
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET / HT").await.unwrap();
    drop(half);
    // Still serving.
    assert_eq!(get(addr, "/api/snapshot?token=t0k%26n").await.0, 200);
}

#[tokio::test]
async fn more_connections_than_allowed_are_closed_and_the_rest_served() {
    let bus = bus();
    let view = tidings::view::serve(&bus, "127.0.0.1:0").await.unwrap();
    let addr = view.local_addr();
    // 64 event streams hold every slot...
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/events HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s);
    }
    // ...so the next connection is closed without an answer...
    assert_eq!(raw(addr, b"GET / HTTP/1.1\r\n\r\n").await, "");
    // ...until one leaves.
    drop(held.pop());
    let answer = loop {
        let answer = raw(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        if !answer.is_empty() {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(answer.starts_with("HTTP/1.1 200"));
}
