//! The process-wide bus. In its own test binary: a global is set once per
//! process, so the steps run in one test, in order.

use std::panic::catch_unwind;

use tidings::{Bus, Event};

#[derive(Debug, Event)]
#[event(topic = "app.started")]
struct Started;

#[tokio::test]
async fn the_global_bus_is_set_once_and_shared() {
    assert!(tidings::try_global().is_none());
    let panic = catch_unwind(tidings::global).expect_err("unset global panics");
    let msg = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    assert!(msg.contains("before tidings::set_global(bus)"), "{msg}");

    let bus = Bus::builder().topic::<Started>().build().unwrap();
    let mut sub = bus.subscribe::<Started>().stream().unwrap();
    tidings::set_global(bus.clone()).expect("first set");

    let other = Bus::builder().build().unwrap();
    let refused = tidings::set_global(other).expect_err("second set");
    assert_eq!(refused.to_string(), "a global bus is already set");
    assert!(
        !refused.0.is_registered::<Started>(),
        "the refused bus is handed back"
    );

    tidings::global().publish(Started).await.unwrap();
    assert!(
        sub.recv().await.is_some(),
        "the global is the bus that was set"
    );
    assert!(tidings::try_global().is_some());
}
