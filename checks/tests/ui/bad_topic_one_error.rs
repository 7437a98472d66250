// A topic that breaks the grammar is one error, at the topic: the type still
// implements `Event`, so using it adds no second error.
use tidings::{Bus, Event};

#[derive(Debug, Event)]
#[event(topic = "Orders.Created")]
struct OrderCreated(u64);

fn main() {
    let bus = Bus::builder().topic::<OrderCreated>().build().unwrap();
    let _ = bus.subscribe::<OrderCreated>().stream();
    let _ = bus.try_publish(OrderCreated(1));
}
