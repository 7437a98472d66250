//! Two services, two processes, one NATS server: `orders` publishes typed
//! `OrderCreated` events, `billing` charges them and answers with
//! `PaymentSettled`. Each side's bus has the same allow-list; the bridges
//! carry the events through JetStream (durable: a broker restart loses
//! nothing) or core NATS (`--core`: at most once).
//!
//! Run a local server, then the two roles in two terminals:
//!
//! ```sh
//! nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats-store &
//! cargo run --release -p tidings-nats --example two_services -- --role billing
//! cargo run --release -p tidings-nats --example two_services -- --role orders --orders 20
//! ```
//!
//! `--url nats://127.0.0.1:4222` picks another server.
//!
//! Replicas: `--role orders --replicas 3` starts three `billing` processes
//! of its own in one group (`.group("billing")`: each order goes to one of
//! them), kills one with SIGKILL after a third of the payments, and prints
//! who charged what: every order paid, and any order charged twice (one the
//! killed replica had charged without its acknowledgement reaching the
//! broker).

use std::time::Duration;

use tidings::{Bus, Event, PublishOptions};
use tidings_nats::{Bridge, BridgeTopics, Connect, Durable};

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "orders.created", serde)]
struct OrderCreated {
    id: u64,
    total_cents: u64,
}

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "payments.settled", serde)]
struct PaymentSettled {
    order: u64,
    cents: u64,
    /// The billing process that charged it.
    #[serde(default)]
    by: u32,
}

struct Args {
    role: String,
    url: String,
    orders: u64,
    core: bool,
    /// Billing replicas to start (orders role); 0: none, run billing apart.
    replicas: usize,
    /// Joins this group (billing role).
    group: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        role: String::new(),
        url: "nats://127.0.0.1:4222".into(),
        orders: 10,
        core: false,
        replicas: 0,
        group: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--role" => out.role = value()?,
            "--url" => out.url = value()?,
            "--orders" => out.orders = value()?.parse().map_err(|e| format!("--orders: {e}"))?,
            "--core" => out.core = true,
            "--replicas" => {
                out.replicas = value()?.parse().map_err(|e| format!("--replicas: {e}"))?
            }
            "--group" => out.group = Some(value()?),
            "--help" | "-h" => {
                return Err(
                    "usage: two_services --role orders|billing [--url URL] [--orders N] [--core] [--replicas N] [--group NAME]"
                        .into(),
                )
            }
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    if !matches!(out.role.as_str(), "orders" | "billing") {
        return Err("--role orders or --role billing".into());
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // The same allow-list on both sides.
    let bus = Bus::builder()
        .bridge_topics()
        .topic::<OrderCreated>()
        .topic::<PaymentSettled>()
        .build()?;
    let connect = Connect::to(args.url.clone()).connect_timeout(Duration::from_secs(30));
    let mut bridge = Bridge::builder(&bus, connect).name(args.role.clone());
    if !args.core {
        // A replica killed with orders in hand has them delivered to
        // another after `ack_wait`.
        bridge = bridge.durable(
            Durable::new("SHOP", ["orders.>", "payments.>"]).ack_wait(Duration::from_secs(2)),
        );
    }
    if let Some(group) = &args.group {
        bridge = bridge.group(group.clone());
    }

    if args.role == "billing" {
        let bridge = bridge
            .import::<OrderCreated>()
            .export::<PaymentSettled>()
            .start()
            .await?;
        let payments = bus.clone();
        let me = std::process::id();
        let replica = args.group.is_some();
        let _charge = bus
            .subscribe::<OrderCreated>()
            .name("charge")
            .handler(move |order| {
                let payments = payments.clone();
                async move {
                    if replica {
                        // The work of charging, so that a replica killed
                        // part-way has orders in hand.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    } else {
                        println!(
                            "billing: charging order {} ({} cents)",
                            order.id, order.total_cents
                        );
                    }
                    payments
                        .publish(PaymentSettled {
                            order: order.id,
                            cents: order.total_cents,
                            by: me,
                        })
                        .await
                        .map(|_| ())
                }
            })?;
        println!(
            "billing {me}: waiting for orders on {} (Ctrl-C to stop)",
            args.url
        );
        tokio::signal::ctrl_c().await?;
        println!(
            "billing: {:?}",
            bridge.shutdown(Duration::from_secs(10)).await.stats
        );
    } else {
        let bridge = bridge
            .export::<OrderCreated>()
            .import::<PaymentSettled>()
            .start()
            .await?;
        let mut settled = bus.subscribe::<PaymentSettled>().stream()?;
        let mut replicas = start_replicas(&args)?;
        // Keys unique to this run: JetStream remembers message ids for its
        // duplicate window (2 minutes), and would drop a second run's
        // `order-1` as a repeat of the first's.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for id in 1..=args.orders {
            let order = OrderCreated {
                id,
                total_cents: 100 * id,
            };
            // The order id is the idempotency key: a retried publish is
            // charged once, here and across the broker.
            bus.publish_with(
                order,
                PublishOptions::new().idempotency_key(format!("order-{run}-{id}")),
            )
            .await?;
        }
        println!(
            "orders: published {} orders; waiting for payments",
            args.orders
        );
        let mut paid = 0;
        let mut by_order: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
        let mut killed = None;
        while paid < args.orders {
            match tokio::time::timeout(Duration::from_secs(30), settled.recv()).await {
                Ok(Some(p)) => {
                    let first = !by_order.contains_key(&p.order);
                    by_order.entry(p.order).or_default().push(p.by);
                    if first {
                        paid += 1;
                    }
                    if replicas.is_empty() {
                        println!("orders: order {} paid ({} cents)", p.order, p.cents);
                    } else if killed.is_none() && paid >= args.orders / 3 {
                        let mut victim = replicas.remove(0);
                        let pid = victim.id();
                        // SIGKILL: no shutdown, nothing flushed.
                        let killed_now = victim.kill();
                        victim.wait()?;
                        killed_now?;
                        println!("orders: killed billing {pid} after {paid} payments");
                        killed = Some(pid);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let dropped = bridge.stats().export_duplicates;
                    if dropped > 0 {
                        println!("orders: the broker dropped {dropped} order(s) as duplicates of earlier message ids");
                    } else {
                        println!("orders: no payment for 30 s; is `--role billing` running?");
                    }
                    break;
                }
            }
        }
        if !replicas.is_empty() || killed.is_some() {
            // Late second payments of an order, if any.
            while let Ok(Some(p)) =
                tokio::time::timeout(Duration::from_secs(3), settled.recv()).await
            {
                by_order.entry(p.order).or_default().push(p.by);
            }
            report_replicas(&by_order, args.orders, killed);
            for mut r in replicas {
                let _ = r.kill();
                let _ = r.wait();
            }
        }
        println!(
            "orders: {paid}/{} paid; {:?}",
            args.orders,
            bridge.shutdown(Duration::from_secs(10)).await.stats
        );
    }
    Ok(())
}

/// Starts `--replicas` billing processes (this program again, in group
/// `billing`), once each says it is waiting.
fn start_replicas(args: &Args) -> Result<Vec<std::process::Child>, Box<dyn std::error::Error>> {
    use std::io::BufRead;
    let mut children = Vec::new();
    for _ in 0..args.replicas {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args([
            "--role", "billing", "--group", "billing", "--url", &args.url,
        ]);
        if args.core {
            cmd.arg("--core");
        }
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(out).lines();
        // Waits for "billing N: waiting for orders", then lets it print.
        for line in lines.by_ref() {
            if line?.contains("waiting for orders") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        children.push(child);
    }
    if !children.is_empty() {
        println!("orders: {} billing replicas running", children.len());
    }
    Ok(children)
}

/// Who charged what, once the replicas are done.
fn report_replicas(
    by_order: &std::collections::BTreeMap<u64, Vec<u32>>,
    orders: u64,
    killed: Option<u32>,
) {
    let mut per_replica: std::collections::BTreeMap<u32, u64> = Default::default();
    for by in by_order.values().flatten() {
        *per_replica.entry(*by).or_default() += 1;
    }
    for (pid, n) in &per_replica {
        let mark = if Some(*pid) == killed {
            " (killed)"
        } else {
            ""
        };
        println!("orders: billing {pid}{mark} charged {n} orders");
    }
    let twice: Vec<u64> = by_order
        .iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    let missing = (1..=orders).filter(|id| !by_order.contains_key(id)).count();
    println!(
        "orders: {} of {orders} orders paid, {missing} missing; charged twice: {} {:?}",
        by_order.len(),
        twice.len(),
        &twice[..twice.len().min(10)]
    );
}
