//! Replicas that share the work: three OS processes import one topic in
//! the same group (`.group("billing")`), a fourth publishes 10,000 orders,
//! and every order is handled by exactly one replica, in core NATS (a
//! queue group) and in durable mode (one shared durable consumer), against
//! a real `nats-server` of the test's own.
//!
//! The replicas are this test binary started again on the `#[ignore]`d
//! test `replica_process`, configured through the environment; each prints
//! a line per order it handled, which the test reads from its stdout.
//! Killing a replica part-way (and what a durable group then redelivers)
//! is not covered yet.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::NatsServer;
use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics, Connect, Durable};

const ORDERS: u64 = 10_000;
const REPLICAS: usize = 3;
/// A guard against a hang, never a measurement.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "billing.order", serde)]
struct Order {
    id: u64,
}

fn bus() -> Bus {
    Bus::builder()
        .bridge_topics()
        .topic::<Order>()
        .build()
        .expect("valid allow-list")
}

/// Both sides' durable settings, when `stream` is given: it stores every
/// subject under the prefix.
fn mode(
    b: tidings_nats::BridgeBuilder,
    stream: Option<&str>,
    prefix: &str,
) -> tidings_nats::BridgeBuilder {
    match stream {
        Some(stream) => b.durable(Durable::new(stream, [format!("{prefix}.>")])),
        None => b,
    }
}

/// One replica, when the environment says so (run by the tests below as a
/// process of its own): imports orders in group `billing`, prints `ready`
/// once its bridge runs, then `handled N` for each order, until killed.
#[test]
#[ignore = "a replica process, started by the tests in this file"]
fn replica_process() {
    let Ok(url) = std::env::var("TIDINGS_REPLICA_URL") else {
        return;
    };
    let stream = std::env::var("TIDINGS_REPLICA_STREAM").ok();
    let prefix = std::env::var("TIDINGS_REPLICA_PREFIX").expect("a prefix");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let bus = bus();
        let mut orders = bus.subscribe::<Order>().stream().expect("subscribed");
        let _bridge = mode(
            Bridge::builder(&bus, Connect::to(url))
                .name(format!("replica-{}", std::process::id()))
                .prefix(prefix.clone())
                .group("billing")
                .import::<Order>(),
            stream.as_deref(),
            &prefix,
        )
        .start()
        .await
        .expect("the bridge starts");
        let mut out = std::io::stdout().lock();
        writeln!(out, "replica ready").expect("stdout");
        out.flush().expect("stdout");
        while let Some(order) = orders.recv().await {
            writeln!(out, "handled {}", order.id).expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

/// A replica process and the orders it reports, line by line.
struct Replica {
    child: Child,
}

impl Replica {
    fn start(
        server: &NatsServer,
        stream: Option<&str>,
        prefix: &str,
        index: usize,
        handled: mpsc::Sender<(usize, u64)>,
        ready: mpsc::Sender<usize>,
    ) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        command
            .args(["replica_process", "--exact", "--ignored", "--nocapture"])
            .env("TIDINGS_REPLICA_URL", server.url())
            .env("TIDINGS_REPLICA_PREFIX", prefix)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(stream) = stream {
            command.env("TIDINGS_REPLICA_STREAM", stream);
        }
        let mut child = command.spawn().expect("a replica process");
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "replica ready" {
                    let _ = ready.send(index);
                } else if let Some(id) = line.strip_prefix("handled ") {
                    if let Ok(id) = id.parse() {
                        let _ = handled.send((index, id));
                    }
                }
            }
        });
        Replica { child }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the replicas, publishes the orders once all run, and returns
/// which replica handled each order, every report counted.
fn share(stream: Option<&str>) -> HashMap<u64, Vec<usize>> {
    let server = NatsServer::start();
    let prefix = format!("shop{}", std::process::id());
    let (handled_tx, handled) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    let _replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            Replica::start(
                &server,
                stream,
                &prefix,
                i,
                handled_tx.clone(),
                ready_tx.clone(),
            )
        })
        .collect();
    drop(handled_tx);
    for _ in 0..REPLICAS {
        ready
            .recv_timeout(DEADLINE)
            .expect("every replica starts its bridge");
    }
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let bridge = rt.block_on(async {
        let shop = bus();
        let bridge = mode(
            Bridge::builder(&shop, server.connect())
                .name("shop")
                .prefix(prefix.clone())
                .export::<Order>(),
            stream,
            &prefix,
        )
        .start()
        .await
        .expect("the exporting bridge starts");
        for id in 0..ORDERS {
            shop.publish(Order { id }).await.expect("published");
        }
        (shop, bridge)
    });
    let mut by_order: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut reports = 0;
    let until = Instant::now() + DEADLINE;
    // Every order once; then a little longer, for a second report of any.
    while by_order.len() < ORDERS as usize {
        let left = until.saturating_duration_since(Instant::now());
        let Ok((replica, id)) = handled.recv_timeout(left) else {
            break;
        };
        by_order.entry(id).or_default().push(replica);
        reports += 1;
    }
    while let Ok((replica, id)) = handled.recv_timeout(Duration::from_millis(500)) {
        by_order.entry(id).or_default().push(replica);
        reports += 1;
    }
    let (_shop, bridge) = bridge;
    rt.block_on(bridge.shutdown(Duration::from_secs(10)));
    eprintln!("{reports} reports of {} orders", by_order.len());
    by_order
}

fn assert_each_order_once(by_order: &HashMap<u64, Vec<usize>>) {
    let missing: Vec<u64> = (0..ORDERS)
        .filter(|id| !by_order.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} orders never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<(&u64, &Vec<usize>)> = by_order.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} orders handled more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let mut per_replica = [0u64; REPLICAS];
    for replicas in by_order.values() {
        per_replica[replicas[0]] += 1;
    }
    eprintln!("orders per replica: {per_replica:?}");
    assert!(
        per_replica.iter().filter(|&&n| n > 0).count() >= 2,
        "the work was shared: {per_replica:?}"
    );
}

#[test]
fn core_replicas_in_a_group_handle_each_order_once() {
    assert_each_order_once(&share(None));
}

#[test]
fn durable_replicas_in_a_group_share_one_consumer_and_handle_each_order_once() {
    let stream = format!("SHOP{}", std::process::id());
    assert_each_order_once(&share(Some(&stream)));
}

/// A group is checked like a name: a bad one is an error naming the
/// setting, and nothing starts.
#[tokio::test]
async fn a_bad_group_is_refused_at_start() {
    let bus = bus();
    let err = Bridge::builder(&bus, Connect::to("nats://127.0.0.1:1"))
        .group("billing team")
        .import::<Order>()
        .start()
        .await
        .expect_err("a group with a space");
    let text = err.to_string();
    assert!(
        text.contains("group") && text.contains("billing team"),
        "{text}"
    );
}
