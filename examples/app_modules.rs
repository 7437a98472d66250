//! How a service is laid out with tidings: each module registers the topics
//! it uses and subscribes its own handlers; services publish through the
//! global bus without being handed it.
//!
//! Run it with `cargo run --release --example app_modules`.

use std::time::Duration;

use tidings::{BusBuilder, SubscriptionHandle};

/// The events the modules share. Each module could own its own instead.
mod events {
    use tidings::Event;

    #[derive(Debug, Event)]
    #[event(topic = "orders.placed")]
    pub struct OrderPlaced {
        pub id: u64,
        pub total_cents: u64,
    }

    #[derive(Debug, Event)]
    #[event(topic = "payments.captured")]
    pub struct PaymentCaptured {
        pub order: u64,
        pub cents: u64,
    }

    #[derive(Debug, Event)]
    #[event(topic = "audit.line")]
    pub struct AuditLine(pub String);
}

/// Orders: publishes `OrderPlaced`, reads nothing.
mod orders {
    use super::events::{AuditLine, OrderPlaced};
    use tidings::error::PublishError;
    use tidings::BusBuilder;

    pub fn register(bus: BusBuilder) -> BusBuilder {
        bus.topic::<OrderPlaced>().topic::<AuditLine>()
    }

    /// A request handler of the orders service: it is not handed the bus.
    pub async fn place_order(id: u64, total_cents: u64) -> Result<(), PublishError<OrderPlaced>> {
        let bus = tidings::global();
        bus.publish(OrderPlaced { id, total_cents }).await?;
        // Audit is best effort here: a full audit queue must not fail the order.
        let _ = bus.try_publish(AuditLine(format!("order {id} placed")));
        Ok(())
    }
}

/// Billing: charges placed orders (blocking client, so a sync handler) and
/// publishes `PaymentCaptured`.
mod billing {
    use super::events::{AuditLine, OrderPlaced, PaymentCaptured};
    use tidings::error::SubscribeError;
    use tidings::{Bus, BusBuilder, SubscriptionHandle};

    pub fn register(bus: BusBuilder) -> BusBuilder {
        bus.topic::<OrderPlaced>()
            .topic::<PaymentCaptured>()
            .topic::<AuditLine>()
    }

    fn charge_card_blocking(order: &OrderPlaced) -> u64 {
        std::thread::sleep(std::time::Duration::from_millis(2)); // a blocking SDK call
        order.total_cents
    }

    pub fn start(bus: &Bus) -> Result<Vec<SubscriptionHandle>, SubscribeError> {
        let charge = bus
            .subscribe::<OrderPlaced>()
            .name("billing.charge")
            .concurrency(2)
            .sync(|order| {
                let cents = charge_card_blocking(&order);
                // Publishing from a sync handler: `try_publish` never waits;
                // a full queue is an error we report rather than block on.
                tidings::global()
                    .try_publish(PaymentCaptured {
                        order: order.id,
                        cents,
                    })
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?;
        Ok(vec![charge])
    }
}

/// Ledger: an async consumer of payments.
mod ledger {
    use super::events::PaymentCaptured;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tidings::error::SubscribeError;
    use tidings::{Bus, BusBuilder, SubscriptionHandle};

    pub fn register(bus: BusBuilder) -> BusBuilder {
        bus.topic::<PaymentCaptured>()
    }

    pub fn start(bus: &Bus, total: Arc<AtomicU64>) -> Result<SubscriptionHandle, SubscribeError> {
        bus.subscribe::<PaymentCaptured>()
            .name("ledger.book")
            .handler(move |p| {
                let total = Arc::clone(&total);
                async move {
                    tokio::task::yield_now().await; // an async DB write
                    if p.order == 0 {
                        println!("ledger: booked order 0");
                    }
                    total.fetch_add(p.cents, Ordering::Relaxed);
                }
            })
    }
}

/// Audit: a stream consumer that writes lines in batches.
mod audit {
    use super::events::AuditLine;
    use tidings::error::SubscribeError;
    use tidings::{Bus, BusBuilder, Overflow, TopicConfig};

    pub fn register(bus: BusBuilder) -> BusBuilder {
        // Same config as `orders` registers (the default): registering twice is fine.
        bus.topic_with::<AuditLine>(TopicConfig::default())
    }

    pub fn start(bus: &Bus) -> Result<tokio::task::JoinHandle<usize>, SubscribeError> {
        let mut lines = bus
            .subscribe::<AuditLine>()
            .name("audit.writer")
            .capacity(64)
            .overflow(Overflow::DropNewest)
            .stream()?;
        Ok(tokio::spawn(async move {
            let mut written = 0;
            while let Some(line) = lines.recv().await {
                if line.missed() > 0 {
                    eprintln!("audit: {} lines lost before this one", line.missed());
                }
                if written == 0 {
                    println!("audit: first line: {}", line.0);
                }
                written += 1;
            }
            written
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    // Start-up: every module adds its topics; the bus is built once and
    // installed as the global.
    let modules: [fn(BusBuilder) -> BusBuilder; 4] = [
        orders::register,
        billing::register,
        ledger::register,
        audit::register,
    ];
    let bus = modules
        .iter()
        .fold(tidings::Bus::builder(), |b, register| register(b))
        .build()?;
    tidings::set_global(bus.clone())?;
    println!("topics: {:?}", bus.topics());

    let booked = Arc::new(AtomicU64::new(0));
    let mut handles: Vec<SubscriptionHandle> = billing::start(&bus)?;
    handles.push(ledger::start(&bus, Arc::clone(&booked))?);
    let audit = audit::start(&bus)?;

    // Traffic: 200 orders from 4 concurrent "request handlers".
    let mut requests = Vec::new();
    for worker in 0..4u64 {
        requests.push(tokio::spawn(async move {
            for i in 0..50 {
                orders::place_order(worker * 1000 + i, 100 + i).await?;
            }
            Ok::<_, tidings::error::PublishError<events::OrderPlaced>>(())
        }));
    }
    for r in requests {
        r.await??;
    }

    // Stop: billing drains first (it publishes payments), then the bus.
    let billing = handles.remove(0).unsubscribe().await;
    println!("billing: {billing}");
    let report = tidings::global().shutdown(Duration::from_secs(10)).await;
    println!("{report}");
    println!(
        "ledger booked {} cents for {} payments; audit wrote {} lines",
        booked.load(Ordering::Relaxed),
        billing.handled,
        audit.await?
    );
    Ok(())
}
