//! Events know what caused them: one published from inside a handler
//! carries the id of the event being handled (`caused_by`) and the root of
//! the chain (`correlation`), without the handler saying so.

use std::sync::{Arc, Mutex};

use tidings::{Bus, Event, EventRef, PublishOptions, SubscriptionHandle};

#[derive(Debug, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "orders.charged")]
struct OrderCharged {
    id: u64,
}

#[derive(Debug, Event)]
#[event(topic = "orders.shipped")]
struct OrderShipped {
    id: u64,
}

fn bus() -> Bus {
    Bus::builder()
        .topic::<OrderPlaced>()
        .topic::<OrderCharged>()
        .topic::<OrderShipped>()
        .build()
        .unwrap()
}

/// The chain placed -> charged -> shipped: a blocking handler on the bus's
/// threads publishes the charge, and an async handler of the charge the
/// shipment (on a later poll than its first, still inside the handler).
fn chain(bus: &Bus) -> [SubscriptionHandle; 2] {
    let b = bus.clone();
    let charge = bus
        .subscribe::<OrderPlaced>()
        .sync(move |o| {
            b.try_publish(OrderCharged { id: o.id }).unwrap();
        })
        .unwrap();
    let b = bus.clone();
    let ship = bus
        .subscribe::<OrderCharged>()
        .handler(move |c| {
            let b = b.clone();
            async move {
                tokio::task::yield_now().await;
                b.publish(OrderShipped { id: c.id }).await.map(|_| ())
            }
        })
        .unwrap();
    [charge, ship]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_handlers_carries_its_cause_and_its_root() {
    let bus = bus();
    let mut placed = bus.subscribe::<OrderPlaced>().stream().unwrap();
    let mut charged = bus.subscribe::<OrderCharged>().stream().unwrap();
    let mut shipped = bus.subscribe::<OrderShipped>().stream().unwrap();
    let _chain = chain(&bus);
    bus.publish(OrderPlaced { id: 7 }).await.unwrap();
    let order = placed.recv().await.unwrap();
    let charge = charged.recv().await.unwrap();
    let shipment = shipped.recv().await.unwrap();
    let root = EventRef::Local(order.id());
    assert_eq!(order.reference(), root);
    assert_eq!(
        (order.caused_by(), order.correlation()),
        (None, None),
        "a root"
    );
    assert_eq!(charge.caused_by(), Some(&root));
    assert_eq!(charge.correlation(), Some(&root));
    assert_eq!(shipment.id, 7);
    assert_eq!(shipment.caused_by(), Some(&charge.reference()));
    assert_eq!(
        shipment.correlation(),
        Some(&root),
        "the root, two steps up"
    );
}

#[tokio::test]
async fn outside_a_handler_nothing_is_caused_unless_said() {
    let bus = bus();
    let mut charged = bus.subscribe::<OrderCharged>().stream().unwrap();
    bus.publish(OrderCharged { id: 1 }).await.unwrap();
    let plain = charged.recv().await.unwrap();
    assert_eq!(plain.caused_by(), None);
    // A bridge says both outright, by the ids they crossed with.
    let options = PublishOptions::new()
        .remote_id("orders.1-2a-00000000000000ff")
        .cause(
            EventRef::Remote("orders.1-29-0000000000000001".into()),
            EventRef::Remote("orders.1-01-0000000000000002".into()),
        );
    bus.publish_with(OrderCharged { id: 2 }, options)
        .await
        .unwrap();
    let imported = charged.recv().await.unwrap();
    assert_eq!(
        imported.reference(),
        EventRef::Remote("orders.1-2a-00000000000000ff".into())
    );
    assert_eq!(
        imported.correlation().map(ToString::to_string).as_deref(),
        Some("orders.1-01-0000000000000002")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_handler_publishes_follows_an_imported_event_by_its_remote_id() {
    let bus = bus();
    let seen = Arc::new(Mutex::new(None));
    let mut charged = bus.subscribe::<OrderCharged>().stream().unwrap();
    let b = bus.clone();
    let s = Arc::clone(&seen);
    let _h = bus
        .subscribe::<OrderPlaced>()
        .sync(move |o| {
            *s.lock().unwrap() = Some(o.reference());
            b.try_publish(OrderCharged { id: o.id }).unwrap();
        })
        .unwrap();
    let options = PublishOptions::new().remote_id("shop-5-0123456789abcdef");
    bus.publish_with(OrderPlaced { id: 5 }, options)
        .await
        .unwrap();
    let charge = charged.recv().await.unwrap();
    let remote = EventRef::Remote("shop-5-0123456789abcdef".into());
    assert_eq!(charge.caused_by(), Some(&remote));
    assert_eq!(charge.correlation(), Some(&remote));
    assert_eq!(seen.lock().unwrap().clone(), Some(remote));
}

#[tokio::test]
async fn a_dead_letter_is_caused_by_the_event_that_failed() {
    let bus = bus();
    let mut letters = bus.dead_letters().stream().unwrap();
    let _fails = bus
        .subscribe::<OrderPlaced>()
        .handler(|_o| async { Err::<(), _>("the card was declined") })
        .unwrap();
    let placed = bus.publish(OrderPlaced { id: 9 }).await.unwrap();
    let letter = letters.recv().await.unwrap();
    let order = EventRef::Local(placed.id);
    assert_eq!(letter.event_id, placed.id);
    assert_eq!(letter.caused_by(), Some(&order));
    assert_eq!(letter.correlation(), Some(&order));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_count_accepted_events_by_the_topic_that_caused_them() {
    let bus = bus();
    let mut placed = bus.subscribe::<OrderPlaced>().stream().unwrap();
    // The chain, and every shipment fails into a dead letter.
    let _chain = chain(&bus);
    let _fails = bus
        .subscribe::<OrderShipped>()
        .handler(|_s| async { Err::<(), _>("no courier") })
        .unwrap();
    for id in 0..3 {
        bus.publish(OrderPlaced { id }).await.unwrap();
    }
    // A stream subscriber says what it follows; the second publish under
    // the same key is a duplicate, refused, and not counted.
    let order = placed.recv().await.unwrap();
    for _ in 0..2 {
        let options = PublishOptions::new()
            .idempotency_key("charge-0")
            .follows(&order);
        bus.publish_with(OrderCharged { id: 100 }, options)
            .await
            .unwrap();
    }
    // A bridge names a cause in another process by its id only.
    let options = PublishOptions::new().cause(
        EventRef::Remote("shop-1-0000000000000001".into()),
        EventRef::Remote("shop-1-0000000000000001".into()),
    );
    bus.publish_with(OrderCharged { id: 200 }, options)
        .await
        .unwrap();
    drop(placed);
    let report = bus.shutdown(std::time::Duration::from_secs(30)).await;
    assert_eq!((report.cut_off(), report.in_flight()), (0, 0), "{report}");

    let stats = bus.stats();
    let caused_by = |topic: &str| -> Vec<(Option<&str>, u64)> {
        let t = stats.topic(topic).unwrap();
        t.caused_by.iter().map(|c| (c.topic, c.events)).collect()
    };
    assert_eq!(caused_by("orders.placed"), vec![], "roots only");
    assert_eq!(
        caused_by("orders.charged"),
        vec![(Some("orders.placed"), 4), (None, 1)]
    );
    // The shipment of order 100 and of order 200 too: their handler ran.
    assert_eq!(
        caused_by("orders.shipped"),
        vec![(Some("orders.charged"), 5)]
    );
    assert_eq!(
        caused_by(tidings::DEAD_LETTER_TOPIC),
        vec![(Some("orders.shipped"), 5)]
    );
    let charged = stats.topic("orders.charged").unwrap();
    assert_eq!((charged.published, charged.caused()), (5, 5));
    // The second table of the printed stats, as the README shows it: rows
    // in topic order, then in the order the causes were first seen (the
    // order stream's `follows` comes before the cause known by id only).
    let table = stats.to_string();
    let causes = table.split("\n\n").nth(1).expect("a table of causes");
    assert_eq!(
        causes,
        "topic                 caused_by       events\n\
         orders.charged        orders.placed        4\n\
         orders.charged        (by id only)         1\n\
         orders.shipped        orders.charged       5\n\
         tidings.dead_letters  orders.shipped       5\n"
    );
}
