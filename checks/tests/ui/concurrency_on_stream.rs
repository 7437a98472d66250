// A stream has one reader, the caller: concurrency is a handler's setting.
use tidings::{Bus, Event};

#[derive(Event)]
#[event(topic = "orders.created")]
struct OrderCreated(u64);

fn main() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let _ = bus.subscribe::<OrderCreated>().concurrency(4).stream();
}
