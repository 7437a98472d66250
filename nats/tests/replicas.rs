//! Replicas that share the work: three OS processes import one topic in
//! the same group (`.group("billing")`), a fourth publishes 10,000 orders,
//! and every order is handled by exactly one replica, in core NATS (a
//! queue group) and in durable mode (one shared durable consumer), against
//! a real `nats-server` of the test's own.
//!
//! The replicas are this test binary started again on the `#[ignore]`d
//! test `replica_process`, configured through the environment; each prints
//! a line per order it handled, which the test reads from its stdout.
//!
//! In durable mode one replica is also killed (SIGKILL) part-way: no order
//! is lost, and the only orders handled twice are ones the killed replica
//! had handled without its acknowledgement reaching the broker; their
//! number is reported and bounded by what an importer holds (one batch).

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
        Some(stream) => b.durable(
            Durable::new(stream, [format!("{prefix}.>")])
                // What a killed replica held is delivered again this soon.
                .ack_wait(ACK_WAIT),
        ),
        None => b,
    }
}

/// How long the shared consumer waits for an acknowledgement before it
/// delivers a message to another replica.
const ACK_WAIT: Duration = Duration::from_secs(3);
/// The most a replica's importer holds unacknowledged (one pull batch):
/// the most a killed replica can take with it.
const IN_FLIGHT: usize = 256;
/// Reported instead of an order id: the replica stalled (see `share`).
const STALLED: u64 = u64::MAX;

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
        let stall_after: Option<u64> = std::env::var("TIDINGS_REPLICA_STALL_AFTER")
            .ok()
            .and_then(|n| n.parse().ok());
        let mut done = 0;
        let pause = std::env::var("TIDINGS_REPLICA_PAUSE_US")
            .ok()
            .and_then(|us| us.parse().ok())
            .map(Duration::from_micros);
        while let Some(order) = orders.recv().await {
            if let Some(pause) = pause {
                writeln!(out, "took {}", order.id).expect("stdout");
                out.flush().expect("stdout");
                tokio::time::sleep(pause).await; // the work of handling it
            }
            if stall_after == Some(done) {
                // Stuck in the middle of this order until killed.
                let held = _bridge.stats().unacknowledged;
                writeln!(out, "stalled {held}").expect("stdout");
                out.flush().expect("stdout");
                std::future::pending::<()>().await;
            }
            done += 1;
            writeln!(out, "handled {}", order.id).expect("stdout");
            out.flush().expect("stdout");
            // Dropping the envelope ends its handling: the bridge
            // acknowledges it to the broker now.
        }
    });
}

/// Where a replica's reader thread sends what the replica says.
#[derive(Clone)]
struct Senders {
    handled: mpsc::Sender<(usize, u64)>,
    ready: mpsc::Sender<usize>,
    took: mpsc::Sender<(usize, u64)>,
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
        to: Senders,
        (pause, stall_after): (Option<Duration>, Option<usize>),
    ) -> Self {
        let Senders {
            handled,
            ready,
            took,
        } = to;
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
        if let Some(pause) = pause {
            command.env("TIDINGS_REPLICA_PAUSE_US", pause.as_micros().to_string());
        }
        if let Some(n) = stall_after {
            command.env("TIDINGS_REPLICA_STALL_AFTER", n.to_string());
        }
        let mut child = command.spawn().expect("a replica process");
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "replica ready" {
                    let _ = ready.send(index);
                } else if let Some(held) = line.strip_prefix("stalled ") {
                    let _ = handled.send((index, STALLED));
                    if let Ok(held) = held.parse() {
                        let _ = took.send((usize::MAX, held));
                    }
                } else if let Some(id) = line.strip_prefix("handled ") {
                    if let Ok(id) = id.parse() {
                        let _ = handled.send((index, id));
                    }
                } else if let Some(id) = line.strip_prefix("took ") {
                    if let Ok(id) = id.parse() {
                        let _ = took.send((index, id));
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
/// which replica handled each order, every report counted. With `kill`,
/// replica 0 stalls in the middle of the order after that many and is
/// killed (SIGKILL) there; the replicas then take a while over each order,
/// so that it dies with more orders in hand.
fn share(stream: Option<&str>, kill: Option<usize>) -> Shared {
    let server = NatsServer::start();
    let prefix = format!("shop{}", std::process::id());
    let (took_tx, took) = mpsc::channel();
    let (handled_tx, handled) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    let pause = kill.map(|_| Duration::from_micros(200));
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            Replica::start(
                &server,
                stream,
                &prefix,
                i,
                Senders {
                    handled: handled_tx.clone(),
                    ready: ready_tx.clone(),
                    took: took_tx.clone(),
                },
                (pause, kill.filter(|_| i == 0)),
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
    let shop = bus();
    let bridge = rt
        .block_on(
            mode(
                Bridge::builder(&shop, server.connect())
                    .name("shop")
                    .prefix(prefix.clone())
                    .export::<Order>(),
                stream,
                &prefix,
            )
            .start(),
        )
        .expect("the exporting bridge starts");
    let publisher = {
        let shop = shop.clone();
        rt.spawn(async move {
            for id in 0..ORDERS {
                shop.publish(Order { id }).await.expect("published");
            }
        })
    };
    let mut by_order: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut reports = 0;
    let until = Instant::now() + DEADLINE;
    // Every order once; then a little longer, for a second report of any.
    while by_order.len() < ORDERS as usize {
        let left = until.saturating_duration_since(Instant::now());
        let Ok((replica, id)) = handled.recv_timeout(left) else {
            break;
        };
        if id == STALLED {
            let _ = replicas[replica].child.kill(); // SIGKILL
            let _ = replicas[replica].child.wait();
            continue;
        }
        by_order.entry(id).or_default().push(replica);
        reports += 1;
    }
    let quiet = if kill.is_some() {
        ACK_WAIT
    } else {
        Duration::from_millis(500)
    };
    while let Ok((replica, id)) = handled.recv_timeout(quiet) {
        if id == STALLED {
            continue;
        }
        by_order.entry(id).or_default().push(replica);
        reports += 1;
    }
    rt.block_on(publisher).expect("the publisher finished");
    rt.block_on(bridge.shutdown(Duration::from_secs(10)));
    drop(replicas);
    drop(took_tx);
    eprintln!("{reports} reports of {} orders", by_order.len());
    Shared {
        by_order,
        took: took.try_iter().collect(),
    }
}

impl Shared {
    /// What the stalled replica's bridge held unacknowledged when it
    /// stalled (its own count, reported before it was killed).
    fn held_at_kill(&self) -> Option<u64> {
        self.took
            .iter()
            .find(|(r, _)| *r == usize::MAX)
            .map(|(_, held)| *held)
    }
}

/// What the replicas reported.
struct Shared {
    /// Which replicas handled each order (in the order they said so).
    by_order: HashMap<u64, Vec<usize>>,
    /// The orders each replica's handler took, when it says (`kill`); and,
    /// as replica `usize::MAX`, what the stalled one held unacknowledged.
    took: Vec<(usize, u64)>,
}

/// No order lost.
fn assert_none_lost(by_order: &HashMap<u64, Vec<usize>>) {
    let missing: Vec<u64> = (0..ORDERS)
        .filter(|id| !by_order.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} orders never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

fn assert_each_order_once(by_order: &HashMap<u64, Vec<usize>>) {
    assert_none_lost(by_order);
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
    assert_each_order_once(&share(None, None).by_order);
}

#[test]
fn durable_replicas_in_a_group_share_one_consumer_and_handle_each_order_once() {
    let stream = format!("SHOP{}", std::process::id());
    assert_each_order_once(&share(Some(&stream), None).by_order);
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

/// Replicas deployed together start together: each finds no stream and
/// asks the broker to create it, and all but one lose that race; then each
/// finds no consumer. Every one of them must start, on the stream the
/// winner made, and the group's one consumer must serve them (on
/// nats-server 2.9.10 a consumer several replicas create at the same moment
/// can end up answering no pull: the bridge looks for it again after a
/// random pause before it creates it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_replicas_starting_at_once_all_start() {
    const AT_ONCE: usize = 8;
    let server = NatsServer::start();
    let buses: Vec<Bus> = (0..AT_ONCE).map(|_| bus()).collect();
    let starts = buses.iter().map(|bus| {
        mode(
            Bridge::builder(bus, server.connect())
                .name("billing")
                .group("billing")
                .prefix("together"),
            Some("TOGETHER"),
            "together",
        )
        .import::<Order>()
        .start()
    });
    let bridges: Vec<Bridge> = futures::future::join_all(starts)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every replica starts");
    let shop = bus();
    let mut handled = Vec::new();
    for b in &buses {
        handled.push(b.subscribe::<Order>().capacity(64).stream().unwrap());
    }
    let exporter = mode(
        Bridge::builder(&shop, server.connect())
            .name("shop")
            .prefix("together"),
        Some("TOGETHER"),
        "together",
    )
    .export::<Order>()
    .start()
    .await
    .expect("the shop starts");
    for id in 0..32 {
        shop.publish(Order { id }).await.unwrap();
    }
    // Each order reaches one replica of the group.
    let mut seen = Vec::new();
    while seen.len() < 32 {
        let orders = handled.iter_mut().map(|s| Box::pin(s.recv()));
        let Ok((order, _, _)) =
            tokio::time::timeout(DEADLINE, futures::future::select_all(orders)).await
        else {
            let replicas: Vec<_> = bridges.iter().map(Bridge::stats).collect();
            let client = server.client().await;
            let mut broker = String::new();
            for subject in [
                "$JS.API.STREAM.INFO.TOGETHER",
                "$JS.API.CONSUMER.LIST.TOGETHER",
            ] {
                let answer = client.request(subject, "".into()).await;
                let text = answer.map(|m| String::from_utf8_lossy(&m.payload).into_owned());
                broker.push_str(&format!("{subject}: {text:?}\n"));
            }
            panic!(
                "{} of 32 orders arrived: {seen:?}\nshop: {:?}\nreplicas: {replicas:?}\n{broker}",
                seen.len(),
                exporter.stats()
            );
        };
        seen.push(order.expect("open").id);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..32).collect::<Vec<_>>());
    drop((bridges, exporter));
}

/// A replica killed part-way (SIGKILL: no shutdown, nothing flushed): the
/// orders it held unacknowledged are delivered again to the others after
/// the consumer's acknowledgement wait. None is lost; an order is handled
/// twice only if the killed replica handled it and died before its
/// acknowledgement reached the broker, and there are at most as many of
/// those as one importer holds (a pull batch).
#[test]
fn durable_replicas_lose_nothing_when_one_is_killed() {
    let stream = format!("SHOPK{}", std::process::id());
    let shared = share(Some(&stream), Some(ORDERS as usize / 10));
    let by_order = &shared.by_order;
    assert_none_lost(by_order);
    // Taken by the killed replica's handler, never finished there: each
    // one finished by another replica.
    let cut_short: Vec<u64> = shared
        .took
        .iter()
        .filter(|(r, id)| *r == 0 && !by_order[id].contains(&0))
        .map(|(_, id)| *id)
        .collect();
    assert!(
        !cut_short.is_empty(),
        "the replica was killed in the middle of an order"
    );
    let mut again_after_kill = 0;
    let mut per_replica = [0u64; REPLICAS];
    for (id, replicas) in by_order {
        for &r in replicas {
            per_replica[r] += 1;
        }
        match replicas.as_slice() {
            [_] => {}
            [0, survivor] if *survivor != 0 => again_after_kill += 1,
            other => panic!("order {id} handled by replicas {other:?}: only the killed replica's unacknowledged orders may be handled again"),
        }
    }
    eprintln!(
        "orders per replica: {per_replica:?}; cut short by the kill and finished by another: {}; handled again after the kill: {again_after_kill}",
        cut_short.len()
    );
    assert!(per_replica[0] > 0, "the killed replica had handled some");
    let held = shared
        .held_at_kill()
        .expect("the replica said what it held");
    eprintln!("the killed replica held {held} orders unacknowledged");
    assert!(
        (1..=IN_FLIGHT as u64).contains(&held),
        "it held the order it stalled on, and at most one batch: {held}"
    );
    assert!(
        again_after_kill <= IN_FLIGHT,
        "{again_after_kill} handled again: more than an importer holds"
    );
}
