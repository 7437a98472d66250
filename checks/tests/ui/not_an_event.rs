use tidings::Bus;

struct NotAnEvent;

fn main() {
    let _ = Bus::builder().topic::<NotAnEvent>();
}
