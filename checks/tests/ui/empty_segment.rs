use tidings::Event;

#[derive(Event)]
#[event(topic = "orders..created")]
struct OrderCreated;

fn main() {}
