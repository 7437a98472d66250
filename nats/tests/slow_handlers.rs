//! A durable import whose local handling is slower than the consumer's
//! `ack_wait`: the broker delivers the messages again while the bridge
//! still holds them. The bridge must never acknowledge such a redelivery
//! (the event is not handled yet); it keeps the messages alive with
//! progress acknowledgements instead, so that a process killed (SIGKILL)
//! in the middle has every unhandled event delivered again to the next.
//!
//! The importing process is this test binary started again on the
//! `#[ignore]`d test `slow_importer`, configured through the environment;
//! it prints `took N` when its handler takes order N and `handled N` when
//! it is done with it.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::NatsServer;
use tidings::{Bus, Event};
use tidings_nats::{Bridge, BridgeTopics, Connect, Durable};

/// A guard against a hang, never a measurement.
const DEADLINE: Duration = Duration::from_secs(60);
const ACK_WAIT: Duration = Duration::from_secs(1);
const ORDERS: u64 = 3;

#[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "slow.order", serde)]
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

fn durable(stream: &str, prefix: &str) -> Durable {
    Durable::new(stream, [format!("{prefix}.>")]).ack_wait(ACK_WAIT)
}

/// The importing process: its handler takes `TIDINGS_SLOW_HANDLE_MS` over
/// each order.
#[test]
#[ignore = "an importing process, started by the test in this file"]
fn slow_importer() {
    let Ok(url) = std::env::var("TIDINGS_SLOW_URL") else {
        return;
    };
    let stream = std::env::var("TIDINGS_SLOW_STREAM").expect("a stream");
    let prefix = std::env::var("TIDINGS_SLOW_PREFIX").expect("a prefix");
    let handle = std::env::var("TIDINGS_SLOW_HANDLE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .expect("a handling time");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let bus = bus();
        let mut orders = bus.subscribe::<Order>().stream().expect("subscribed");
        let _bridge = Bridge::builder(&bus, Connect::to(url))
            .name("importer")
            .prefix(prefix.clone())
            .durable(durable(&stream, &prefix))
            .import::<Order>()
            .start()
            .await
            .expect("the bridge starts");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").expect("stdout");
        out.flush().expect("stdout");
        while let Some(order) = orders.recv().await {
            writeln!(out, "took {}", order.id).expect("stdout");
            out.flush().expect("stdout");
            tokio::time::sleep(handle).await;
            writeln!(out, "handled {}", order.id).expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

/// An importing process and what it says, line by line.
struct Importer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Importer {
    fn start(server: &NatsServer, stream: &str, prefix: &str, handle: Duration) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["slow_importer", "--exact", "--ignored", "--nocapture"])
            .env("TIDINGS_SLOW_URL", server.url())
            .env("TIDINGS_SLOW_STREAM", stream)
            .env("TIDINGS_SLOW_PREFIX", prefix)
            .env("TIDINGS_SLOW_HANDLE_MS", handle.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("an importing process");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let importer = Importer { child, lines };
        importer.expect("ready");
        importer
    }

    /// Waits for `line`, failing on the deadline.
    fn expect(&self, line: &str) {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(got) if got == line => return,
                Ok(_) => {}
                Err(_) => panic!("the importer never said `{line}`"),
            }
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Importer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_handled_slower_than_ack_wait_survive_a_kill() {
    let server = NatsServer::start();
    let prefix = format!("slow{}", std::process::id());
    let stream = format!("SLOW{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let shop = bus();
    let exporter = rt
        .block_on(
            Bridge::builder(&shop, server.connect())
                .name("shop")
                .prefix(prefix.clone())
                .durable(durable(&stream, &prefix))
                .export::<Order>()
                .start(),
        )
        .expect("the exporting bridge starts");
    // The first importer takes an hour over each order: it holds order 0 in
    // its handler and the others in its queue, far past `ack_wait`.
    let stuck = Importer::start(&server, &stream, &prefix, Duration::from_secs(3600));
    rt.block_on(async {
        for id in 0..ORDERS {
            shop.publish(Order { id }).await.expect("published");
        }
    });
    stuck.expect("took 0");
    // Long enough for the broker to deliver each message again, twice.
    std::thread::sleep(ACK_WAIT * 3);
    stuck.kill();
    // The next importer is quick: it gets every order, none was lost.
    let next = Importer::start(&server, &stream, &prefix, Duration::ZERO);
    let mut handled = BTreeSet::new();
    let until = Instant::now() + DEADLINE;
    while handled.len() < ORDERS as usize {
        let left = until.saturating_duration_since(Instant::now());
        match next.lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(id) = line.strip_prefix("handled ") {
                    handled.insert(id.parse::<u64>().expect("an order id"));
                }
            }
            Err(_) => panic!(
                "orders lost with the killed importer: handled only {handled:?} of 0..{ORDERS}"
            ),
        }
    }
    assert_eq!(handled, (0..ORDERS).collect());
    rt.block_on(exporter.shutdown(Duration::from_secs(5)));
}
