//! A mailer whose SMTP relay is flaky, then down: retries with exponential
//! backoff and jitter, a circuit breaker that stops hammering the dead relay,
//! a handler timeout, and dead letters for what could not be sent, read by a
//! dead-letter log. Nothing is lost: every order ends up mailed or
//! dead-lettered, and the stats say which.
//!
//! Run it with `cargo run --release --example retry_and_dead_letters`.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::{BreakerPolicy, Bus, Event, RetryPolicy};

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
}

/// The relay's state: 0 flaky (every other call fails), 1 down, 2 healthy.
const FLAKY: u8 = 0;
const DOWN: u8 = 1;
const HEALTHY: u8 = 2;

struct Relay {
    state: AtomicU8,
    calls: AtomicU32,
}

impl Relay {
    async fn send(&self, order: u64) -> Result<(), String> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        match self.state.load(Ordering::Relaxed) {
            FLAKY if call % 2 == 0 => Err(format!("421 try again later (order {order})")),
            DOWN => Err("connection refused".to_owned()),
            // A hung relay: the subscription's timeout cancels this.
            _ if order == 13 => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().topic::<OrderCreated>().build()?;

    // Dead letters are events too: this log reads them as they come.
    let dead_log = bus.dead_letters().name("dead-letter-log").sync(|letter| {
        println!(
            "  dead letter: {} seq {} in `{}` after {} attempts: {}",
            letter.topic, letter.seq, letter.subscription, letter.attempts, letter.error
        );
    })?;

    let relay = Arc::new(Relay {
        state: AtomicU8::new(FLAKY),
        calls: AtomicU32::new(0),
    });
    let r = Arc::clone(&relay);
    let mailer = bus
        .subscribe::<OrderCreated>()
        .name("mailer")
        .retry(
            RetryPolicy::exponential(Duration::from_millis(5))
                .max_attempts(4)
                .max_delay(Duration::from_millis(40))
                .jitter(true),
        )
        .timeout(Duration::from_millis(100))
        .circuit_breaker(BreakerPolicy::new(5, Duration::from_millis(200)))
        .handler(move |order| {
            let relay = Arc::clone(&r);
            async move { relay.send(order.id).await }
        })?;

    println!("1. the relay is flaky: retries absorb it");
    for id in 1..=10 {
        bus.publish(OrderCreated { id }).await?;
    }
    settle(&bus).await;
    report(&mailer.stats());

    println!("2. order 13 hangs: the timeout cancels each attempt, then it is dead-lettered");
    relay.state.store(HEALTHY, Ordering::Relaxed);
    for id in 11..=15 {
        bus.publish(OrderCreated { id }).await?;
    }
    settle(&bus).await;
    report(&mailer.stats());

    println!("3. the relay goes down: the breaker opens and orders wait in the queue");
    relay.state.store(DOWN, Ordering::Relaxed);
    let before = relay.calls.load(Ordering::Relaxed);
    for id in 16..=30 {
        bus.publish(OrderCreated { id }).await?;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stats = mailer.stats();
    println!(
        "  breaker {:?} (opened {}x), {} relay calls for 15 orders, {} orders waiting",
        stats.breaker,
        stats.breaker_opened,
        relay.calls.load(Ordering::Relaxed) - before,
        stats.queue_depth
    );

    println!("4. the relay recovers: a probe closes the breaker and the queue drains");
    relay.state.store(HEALTHY, Ordering::Relaxed);
    let stats = mailer.unsubscribe().await;
    report(&stats);
    assert_eq!(
        stats.handled + stats.dead_lettered,
        30,
        "every order is mailed or dead-lettered"
    );
    let log = dead_log.unsubscribe().await;
    println!(
        "dead-letter log read {} letters; none unheard: {}",
        log.handled,
        stats.dead_letters_unheard == 0
    );
    Ok(())
}

/// Waits until the mailer has nothing queued or in flight.
async fn settle(bus: &Bus) {
    loop {
        let busy = bus
            .stats()
            .subscriptions()
            .any(|s| s.name == "mailer" && (s.queue_depth > 0 || s.in_flight > 0));
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(s: &tidings::SubscriptionStats) {
    println!(
        "  mailer: {} delivered, {} mailed, {} retries, {} failed attempts, {} timeouts, {} dead letters, breaker {:?}",
        s.delivered, s.handled, s.retried, s.failures, s.timeouts, s.dead_lettered, s.breaker
    );
}
