//! A small shop on one bus, with traffic: what the live view demo and its
//! browser test show. Orders are placed; payments charge them (and fail
//! for every seventh, which ends in a dead letter after retries); stock is
//! reserved on the CPU pool; a mailer writes to a slow relay behind a small
//! queue that drops its oldest; a fraud check blocks the runtime now and
//! then (the watch names it); an analytics stream reads slower than
//! emails arrive. Every step follows its cause, so the view draws the
//! chain.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{
    Bus, Event, Overflow, PublishOptions, RetryPolicy, Subscription, SubscriptionHandle,
};

/// An order placed by a customer.
#[derive(Clone, Debug, Serialize, Deserialize, Event, schemars::JsonSchema)]
#[event(topic = "orders.placed", serde)]
pub struct OrderPlaced {
    /// The order.
    pub id: u64,
    /// Its total, in cents.
    pub cents: u64,
    /// The customer's e-mail address.
    pub email: String,
}

/// An order's payment went through.
#[derive(Clone, Debug, Serialize, Deserialize, Event)]
#[event(topic = "payments.charged", serde)]
pub struct PaymentCharged {
    /// The order.
    pub order: u64,
    /// The amount charged, in cents.
    pub cents: u64,
}

/// Stock was set aside for an order.
#[derive(Clone, Debug, Event)]
#[event(topic = "stock.reserved")]
pub struct StockReserved {
    /// The order.
    pub order: u64,
}

/// A receipt was e-mailed.
#[derive(Clone, Debug, Event)]
#[event(topic = "emails.sent")]
pub struct EmailSent {
    /// The order.
    pub order: u64,
}

/// The shop's bus and the subscriptions that keep its handlers running.
#[derive(Debug)]
pub struct Shop {
    /// The bus.
    pub bus: Bus,
    /// Reads `emails.sent`, slowly: [`Shop::read_analytics`].
    analytics: Subscription<EmailSent>,
    _handlers: Vec<SubscriptionHandle>,
}

/// Builds the shop: its allow-list and its five subscribers.
pub fn shop() -> Result<Shop, Box<dyn std::error::Error + Send + Sync>> {
    let bus = Bus::builder()
        .topic::<OrderPlaced>()
        .topic::<PaymentCharged>()
        .topic::<StockReserved>()
        .topic::<EmailSent>()
        .build()?;
    let payments = {
        let bus = bus.clone();
        bus.subscribe::<OrderPlaced>()
            .name("payments")
            .retry(RetryPolicy::fixed(Duration::from_millis(5)).max_attempts(3))
            .handler(move |order| {
                let bus = bus.clone();
                async move {
                    if order.id % 7 == 0 {
                        return Err(format!("card declined for order {}", order.id));
                    }
                    let charged = PaymentCharged {
                        order: order.id,
                        cents: order.cents,
                    };
                    let options = PublishOptions::new().follows(&order);
                    bus.publish_with(charged, options)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                }
            })?
    };
    let stock = {
        let bus = bus.clone();
        bus.subscribe::<OrderPlaced>()
            .name("stock")
            .sync(move |order| {
                // A little CPU, as a real reservation's checks would take.
                let mut x = order.id;
                for _ in 0..20_000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                let options = PublishOptions::new().follows(&order);
                std::hint::black_box(x);
                bus.try_publish_with(StockReserved { order: order.id }, options)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?
    };
    let mailer = {
        let bus = bus.clone();
        bus.subscribe::<PaymentCharged>()
            .name("mailer")
            .capacity(16)
            .overflow(Overflow::DropOldest)
            .handler(move |charged| {
                let bus = bus.clone();
                async move {
                    // The relay is slow: the queue fills and drops its oldest.
                    tokio::time::sleep(Duration::from_millis(8)).await;
                    let options = PublishOptions::new().follows(&charged);
                    let _ = bus
                        .publish_with(
                            EmailSent {
                                order: charged.order,
                            },
                            options,
                        )
                        .await;
                }
            })?
    };
    // A fraud check written against a blocking SDK, called from an async
    // handler: every fiftieth order it holds a runtime thread for 15 ms,
    // and the blocked-runtime watch names it (the fix is `.blocking()`).
    let fraud = bus
        .subscribe::<OrderPlaced>()
        .name("fraud-check")
        .handler(|order| async move {
            if order.id % 50 == 0 {
                std::thread::sleep(Duration::from_millis(15));
            }
        })?;
    let analytics = bus
        .subscribe::<EmailSent>()
        .name("analytics")
        .capacity(32)
        .overflow(Overflow::DropNewest)
        .stream()?;
    Ok(Shop {
        bus,
        analytics,
        _handlers: vec![payments, stock, mailer, fraud],
    })
}

impl Shop {
    /// Stops the shop: the analytics reader leaves (what it had not read
    /// is counted as discarded), then the bus drains and reports.
    pub async fn shutdown(self, deadline: Duration) -> tidings::ShutdownReport {
        drop(self.analytics);
        self.bus.shutdown(deadline).await
    }

    /// Places `per_second` orders a second until `stop` resolves, and
    /// reads analytics at a third of the rate e-mails arrive.
    pub async fn run(&mut self, per_second: u32, stop: impl std::future::Future<Output = ()>) {
        let period = Duration::from_secs(1) / per_second.max(1);
        let mut tick = tokio::time::interval(period);
        tokio::pin!(stop);
        let mut id = 0u64;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    id += 1;
                    let order = OrderPlaced { id, cents: 1_000 + id % 9_000, email: format!("customer{}@example.com", id % 97) };
                    if self.bus.publish(order).await.is_err() {
                        return;
                    }
                    if id % 3 == 0 {
                        let _ = self.analytics.try_recv();
                    }
                }
            }
        }
    }
}
