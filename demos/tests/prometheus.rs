//! Scrapes the Prometheus example over HTTP on 127.0.0.1 and parses the
//! text with a Prometheus text-format parser: the series are there, and the
//! counters agree with `bus.stats()`. In its own binary: the exporter is the
//! process-wide metrics recorder.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port that was free a moment ago, on 127.0.0.1.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

async fn scrape(addr: SocketAddr) -> String {
    // The listener starts on the runtime: give it a few tries to come up.
    let mut stream = None;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut stream = stream.expect("the exporter listens");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

fn counters(scrape: &Scrape, name: &str) -> HashMap<String, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => Some((
                s.labels
                    .get("subscription")
                    .or(s.labels.get("topic"))
                    .unwrap_or("")
                    .to_owned(),
                v,
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_agrees_with_the_stats() {
    let addr = free_addr();
    example::install(addr).expect("exporter");
    let example::Service {
        bus,
        handlers: _handlers,
        dashboard: _dashboard, // never read: every tick beyond 16 is dropped
    } = example::build().expect("service");
    example::burst(&bus, 50).await.expect("traffic");
    let report = bus.shutdown(Duration::from_millis(200)).await; // drains the handlers
    let stats = report.stats;

    let body = scrape(addr).await;
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).expect("valid Prometheus text");

    let published = counters(&scrape, "tidings_published_total");
    assert_eq!(published["orders.created"], 50.0);
    assert_eq!(published["prices.tick"], 500.0);

    let delivered = counters(&scrape, "tidings_delivered_total");
    let dropped = counters(&scrape, "tidings_dropped_total");
    let failures = counters(&scrape, "tidings_handler_failures_total");
    for s in stats.subscriptions() {
        assert_eq!(delivered[&s.name], s.delivered as f64, "delivered, {s}");
        assert_eq!(failures[&s.name], (s.failures) as f64, "failures, {s}");
        if s.dropped() > 0 {
            assert_eq!(dropped[&s.name], s.dropped() as f64, "dropped, {s}");
        }
    }
    assert_eq!(delivered["billing"], 50.0);
    assert_eq!(failures["billing"], 5.0);
    assert_eq!(dropped["dashboard"], 484.0, "500 ticks, 16 kept");

    // Gauges and summaries are exported too.
    for name in [
        "tidings_queue_depth",
        "tidings_subscriptions",
        "tidings_handler_duration_seconds",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing from:\n{body}"
        );
    }
}
