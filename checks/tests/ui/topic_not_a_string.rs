use tidings::Event;

#[derive(Event)]
#[event(topic = 42)]
struct OrderCreated;

fn main() {}
