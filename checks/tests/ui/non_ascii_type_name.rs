use tidings::Event;

#[derive(Event)]
struct Größe;

fn main() {}
