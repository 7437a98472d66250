use tidings::Event;

#[derive(Event)]
#[event(topic = "orders.created", topic = "orders.updated")]
struct OrderCreated;

fn main() {}
