//! A durable topic in tidings' live view: its store's size and each
//! subscription's cursor and lag, as a section of the snapshot.

use std::time::Duration;

use serde_json::Value;
use tidings::view::ViewBuilder;
use tidings::{Bus, Event};
use tidings_durable::{DurableTopics, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "jobs.requested")]
struct Job {
    id: u64,
}

async fn snapshot(addr: std::net::SocketAddr) -> Value {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/snapshot HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_shows_the_store_and_each_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let bus = Bus::builder().durable_topic::<Job>().build().unwrap();
    let jobs = store.topic::<Job>(&bus).expect("topic");
    for id in 1..=5 {
        jobs.publish(Job { id }).await.expect("stored");
    }
    // A subscription that takes nothing yet: its cursor stays at the start.
    let mut waiting = jobs.subscribe("reports").stream().expect("subscribed");
    let of = jobs.clone();
    let view = ViewBuilder::new(&bus)
        .interval(Duration::from_millis(100))
        .section("durable: jobs.requested", move || of.stats())
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let section = loop {
        let snap = snapshot(view.local_addr()).await;
        let section = snap["sections"]["durable: jobs.requested"].clone();
        if section["subscriptions"][0]["lag"] == 5 {
            break section;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(section["topic"], "jobs.requested");
    assert_eq!(section["stored"], 5);
    assert!(section["bytes"].as_u64().unwrap() > 0);
    assert_eq!(section["subscriptions"][0]["name"], "reports");
    // Settle them: the cursor moves and the view says so.
    for _ in 0..5 {
        let job = waiting.recv().await.expect("a job");
        drop(job);
    }
    loop {
        let snap = snapshot(view.local_addr()).await;
        let sub = &snap["sections"]["durable: jobs.requested"]["subscriptions"][0];
        if sub["lag"] == 0 && sub["settled_below"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(view);
    drop(waiting);
    bus.shutdown(Duration::from_secs(30)).await;
    store.close().expect("closed");
}
