// Retries, timeouts, circuit breakers and concurrency belong to handlers: once
// a builder has one, it ends in `.handler()` or `.sync()`, never `.stream()`.
use std::time::Duration;
use tidings::{Bus, Event, RetryPolicy};

#[derive(Event)]
#[event(topic = "orders.created")]
struct OrderCreated(u64);

fn main() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let _ = bus
        .subscribe::<OrderCreated>()
        .retry(RetryPolicy::fixed(Duration::from_millis(10)))
        .stream();
}
