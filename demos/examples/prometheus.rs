//! tidings' metrics, served for Prometheus on 127.0.0.1 while traffic runs.
//!
//! ```sh
//! cargo run --release -p tidings-demos --example prometheus -- --seconds 60
//! curl -s http://127.0.0.1:9898/metrics | grep tidings_
//! ```
//!
//! Flags: `--port N` (default 9898), `--seconds N` (default 30; 0 runs one
//! burst and stops). `tests/prometheus.rs` runs the same code and scrapes it.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use tidings::{Bus, Event, Overflow, Subscription, SubscriptionHandle};

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
pub struct OrderCreated {
    pub id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "prices.tick")]
pub struct PriceTick {
    pub cents: u64,
}

/// Installs the Prometheus exporter, serving `/metrics` on `addr`. Must run
/// before the bus is built: the bus registers its metric handles then.
pub fn install(addr: SocketAddr) -> Result<(), Box<dyn Error>> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    Ok(())
}

/// The service: billing (sync, sometimes failing), a mailer (async) and a
/// slow dashboard feed that drops what it cannot keep.
pub struct Service {
    pub bus: Bus,
    pub handlers: Vec<SubscriptionHandle>,
    pub dashboard: Subscription<PriceTick>,
}

pub fn build() -> Result<Service, Box<dyn Error>> {
    let bus = Bus::builder()
        .topic::<OrderCreated>()
        .topic::<PriceTick>()
        .build()?;
    let billing = bus
        .subscribe::<OrderCreated>()
        .name("billing")
        .sync(|order| {
            if order.id % 10 == 3 {
                return Err(format!("card declined for order {}", order.id));
            }
            Ok(())
        })?;
    let mailer = bus
        .subscribe::<OrderCreated>()
        .name("mailer")
        .concurrency(2)
        .handler(|_| async { tokio::task::yield_now().await })?;
    let dashboard = bus
        .subscribe::<PriceTick>()
        .name("dashboard")
        .capacity(16)
        .overflow(Overflow::DropOldest)
        .stream()?;
    Ok(Service {
        bus,
        handlers: vec![billing, mailer],
        dashboard,
    })
}

/// One burst of traffic: `orders` orders and ten ticks per order.
pub async fn burst(bus: &Bus, orders: u64) -> Result<(), Box<dyn Error>> {
    for id in 0..orders {
        bus.publish(OrderCreated { id }).await?;
        for cents in 0..10 {
            bus.publish(PriceTick { cents }).await?;
        }
    }
    Ok(())
}

#[tokio::main]
#[allow(dead_code)] // the test includes this file as a module
async fn main() -> Result<(), Box<dyn Error>> {
    let mut port = 9898u16;
    let mut seconds = 30u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            other => {
                return Err(format!("unknown flag {other}; flags: --port N, --seconds N").into())
            }
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    install(addr)?;
    let Service {
        bus,
        handlers: _handlers,
        mut dashboard,
    } = build()?;
    // The dashboard reads slowly: it keeps the latest 16 ticks and counts
    // what it missed.
    tokio::spawn(async move {
        while let Some(_tick) = dashboard.recv().await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    println!("serving http://{addr}/metrics for {seconds} s (curl it, or point Prometheus at it)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        burst(&bus, 100).await?;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = bus.shutdown(Duration::from_secs(5)).await;
    println!("{report}");
    Ok(())
}
