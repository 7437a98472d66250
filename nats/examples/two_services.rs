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
}

struct Args {
    role: String,
    url: String,
    orders: u64,
    core: bool,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        role: String::new(),
        url: "nats://127.0.0.1:4222".into(),
        orders: 10,
        core: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--role" => out.role = value()?,
            "--url" => out.url = value()?,
            "--orders" => out.orders = value()?.parse().map_err(|e| format!("--orders: {e}"))?,
            "--core" => out.core = true,
            "--help" | "-h" => {
                return Err(
                    "usage: two_services --role orders|billing [--url URL] [--orders N] [--core]"
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
        bridge = bridge.durable(Durable::new("SHOP", ["orders.>", "payments.>"]));
    }

    if args.role == "billing" {
        let bridge = bridge
            .import::<OrderCreated>()
            .export::<PaymentSettled>()
            .start()
            .await?;
        let payments = bus.clone();
        let _charge = bus
            .subscribe::<OrderCreated>()
            .name("charge")
            .handler(move |order| {
                let payments = payments.clone();
                async move {
                    println!(
                        "billing: charging order {} ({} cents)",
                        order.id, order.total_cents
                    );
                    payments
                        .publish(PaymentSettled {
                            order: order.id,
                            cents: order.total_cents,
                        })
                        .await
                        .map(|_| ())
                }
            })?;
        println!(
            "billing: waiting for orders on {} (Ctrl-C to stop)",
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
        while paid < args.orders {
            match tokio::time::timeout(Duration::from_secs(30), settled.recv()).await {
                Ok(Some(p)) => {
                    paid += 1;
                    println!("orders: order {} paid ({} cents)", p.order, p.cents);
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
        println!(
            "orders: {paid}/{} paid; {:?}",
            args.orders,
            bridge.shutdown(Duration::from_secs(10)).await.stats
        );
    }
    Ok(())
}
