use tidings::Event;

#[derive(Event)]
#[event(topic = "")]
struct OrderCreated;

fn main() {}
