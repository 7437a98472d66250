use tidings::Event;

#[derive(Event)]
#[event(topic = "orders.Created")]
struct OrderCreated;

fn main() {}
