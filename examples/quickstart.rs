//! A tour of tidings in one program: typed events, the allow-list, the three
//! kinds of subscriber, a lossy subscription that says what it missed, stats
//! and a draining shutdown.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tidings::{Bus, Event, Overflow, TopicConfig};

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
    total_cents: u64,
}

#[derive(Debug, Event)]
#[event(topic = "prices.tick")]
struct PriceTick {
    cents: u64,
}

/// Not registered on the bus below: publishing it is an error, not a no-op.
#[derive(Debug, Event)]
#[event(topic = "orders.refunded")]
struct OrderRefunded {
    id: u64,
}

/// Stands in for CPU-heavy work (fraud scoring, PDF rendering…).
fn heavy_score(order: &OrderCreated) -> u64 {
    (0..20_000u64).fold(order.id ^ order.total_cents, |h, i| {
        h.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The allow-list: every topic this bus carries.
    let bus = Bus::builder()
        .topic::<OrderCreated>()
        .topic_with::<PriceTick>(TopicConfig::default().capacity(256))
        .build()?;
    println!("bus carries topics: {:?}", bus.topics());

    // 2. Subscribers of three kinds.
    // A blocking, CPU-heavy handler: runs on the bus's own threads, so the
    //    async runtime stays responsive.
    let scored = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&scored);
    let _fraud = bus
        .subscribe::<OrderCreated>()
        .name("fraud-check")
        .concurrency(2)
        .sync(move |order| {
            std::hint::black_box(heavy_score(&order));
            s.fetch_add(1, Ordering::Relaxed);
        })?;

    // An async handler that fails now and then: failures are counted, the
    //    subscription keeps going.
    let _mailer = bus
        .subscribe::<OrderCreated>()
        .name("mailer")
        .concurrency(4)
        .handler(|order| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if order.id % 10 == 7 {
                return Err(format!("mail server refused order {}", order.id));
            }
            Ok(())
        })?;

    // A stream that keeps only the 8 latest ticks and says how many it missed.
    let mut ticker = bus
        .subscribe::<PriceTick>()
        .name("dashboard")
        .capacity(8)
        .overflow(Overflow::DropOldest)
        .stream()?;

    // 3. Publish.
    let orders = bus.publisher::<OrderCreated>()?; // resolved once
    for id in 0..50 {
        orders
            .publish(OrderCreated {
                id,
                total_cents: 990 + id,
            })
            .await?;
    }
    for cents in 0..100 {
        bus.publish(PriceTick { cents }).await?; // never waits: DropOldest
    }
    let mut shown = 0;
    while let Ok(tick) = ticker.try_recv() {
        if shown < 2 {
            println!(
                "dashboard got tick {} (seq {}), missed {} before it",
                tick.cents,
                tick.seq(),
                tick.missed()
            );
        }
        shown += 1;
    }
    println!("dashboard read {shown} of 100 ticks; the rest were evicted and counted");

    // 4. Bad input is an error that hands the event back.
    match bus.publish(OrderRefunded { id: 3 }).await {
        Ok(_) => unreachable!("orders.refunded is not on the allow-list"),
        Err(err) => println!("refused: {err} (order {} handed back)", err.event().id),
    }

    // 5. Stats while the handlers are still busy, then a draining shutdown
    //    with a report. The report names every loose end: here the orders
    //    whose mail failed while the bus drained (dead-lettered).
    tokio::time::sleep(Duration::from_millis(5)).await;
    println!("\n{}", bus.stats());
    let ticker_task = tokio::spawn(async move { ticker.count().await });
    let report = bus.shutdown(Duration::from_secs(10)).await;
    println!("{report}");
    println!(
        "fraud-check scored {} orders; the dashboard stream ended after {} more ticks",
        scored.load(Ordering::Relaxed),
        ticker_task.await?
    );
    match bus
        .publish(OrderCreated {
            id: 99,
            total_cents: 1,
        })
        .await
    {
        Err(err) => println!("after shutdown: {err}"),
        Ok(_) => unreachable!("the bus is shut down"),
    }
    Ok(())
}
