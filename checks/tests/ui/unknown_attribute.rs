use tidings::Event;

#[derive(Event)]
#[event(topc = "orders.created")]
struct OrderCreated;

fn main() {}
