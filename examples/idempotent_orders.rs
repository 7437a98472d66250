//! A client that retries: its first publish of an order times out on its
//! side (the bus did accept it), so it publishes the same order again. With
//! an idempotency key the bus recognises the second publish and the
//! customer is charged once.
//!
//! Run it with `cargo run --release --example idempotent_orders`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::{Bus, DedupWindow, Event, PublishOptions, TopicConfig};

#[derive(Debug, Clone, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    order: String,
    cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder()
        .topic_with::<OrderPlaced>(
            TopicConfig::default()
                // Keys are remembered for the longest a client retries.
                .dedup(
                    DedupWindow::new()
                        .max_keys(100_000)
                        .max_age(Duration::from_secs(600)),
                ),
        )
        .build()?;

    let charged = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&charged);
    let billing = bus
        .subscribe::<OrderPlaced>()
        .name("billing")
        .sync(move |e| {
            total.fetch_add(e.cents, Ordering::Relaxed);
            println!(
                "  billing: charged {} cents for {} (key {:?})",
                e.cents,
                e.order,
                e.idempotency_key()
            );
        })?;

    let order = OrderPlaced {
        order: "order-42".into(),
        cents: 1999,
    };
    let key = || PublishOptions::new().idempotency_key(order.order.clone());

    println!("client: publish order-42");
    let first = bus.publish_with(order.clone(), key()).await?;
    println!("  accepted as {} (seq {})", first.id, first.seq);

    println!("client: no answer in time, publish order-42 again");
    let again = bus.publish_with(order.clone(), key()).await?;
    match again.duplicate {
        Some(d) => println!(
            "  duplicate of {} (seq {}): not delivered again",
            d.original, d.original_seq
        ),
        None => println!("  accepted again (should not happen)"),
    }

    println!("without a key, the same retry is a second order:");
    bus.publish(order.clone()).await?;

    let stats = billing.unsubscribe().await;
    println!(
        "billing handled {} events, charged {} cents in all (2 x 1999: once keyed, once unkeyed)",
        stats.handled,
        charged.load(Ordering::Relaxed)
    );
    assert_eq!(stats.handled, 2);
    assert_eq!(charged.load(Ordering::Relaxed), 2 * 1999);
    Ok(())
}
