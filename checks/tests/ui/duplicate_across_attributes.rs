use tidings::Event;

#[derive(Event)]
#[event(topic = "orders.created")]
#[event(topic = "orders.updated")]
struct OrderCreated;

fn main() {}
