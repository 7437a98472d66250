//! Graceful shutdown: refuse, drain, wait, report; and what a deadline cuts.

use std::pin::pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures::poll;
use tidings::error::{Refusal, SubscribeError};
use tidings::{Bus, Event, UncleanKind};

#[derive(Debug, PartialEq, Event)]
#[event(topic = "work.item")]
struct Item(u64);

fn bus() -> Bus {
    Bus::builder()
        .topic::<Item>()
        .build()
        .expect("valid allow-list")
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_queue_into_its_handler_and_stream() {
    let bus = bus();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (h1, h2) = (Arc::clone(&handled), Arc::clone(&handled));
    let _sync = bus
        .subscribe::<Item>()
        .name("sync")
        .sync(move |e| {
            std::thread::sleep(Duration::from_micros(50));
            h1.lock().unwrap().push(("sync", e.0));
        })
        .unwrap();
    let _async = bus
        .subscribe::<Item>()
        .name("async")
        .handler(move |e| {
            let h2 = Arc::clone(&h2);
            async move {
                tokio::task::yield_now().await;
                h2.lock().unwrap().push(("async", e.0));
            }
        })
        .unwrap();
    let mut stream = bus.subscribe::<Item>().name("stream").stream().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = stream.recv().await {
            got.push(e.0);
        }
        got
    });
    for i in 0..200 {
        bus.publish(Item(i)).await.unwrap();
    }
    let report = bus.shutdown(LONG).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.cut_off(), 0);
    for s in report.subscriptions() {
        assert_eq!(
            (s.accepted, s.delivered, s.queue_depth),
            (200, 200, 0),
            "{s}"
        );
        assert!(s.closed);
    }
    let count = |kind: &str| {
        handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .count()
    };
    assert_eq!(count("sync"), 200);
    assert_eq!(count("async"), 200);
    let streamed = reader.await.unwrap();
    assert_eq!(
        streamed,
        (0..200).collect::<Vec<_>>(),
        "the stream ended after draining"
    );
}

#[tokio::test]
async fn after_shutdown_publishing_fails_and_hands_the_event_back() {
    let bus = bus();
    let publisher = bus.publisher::<Item>().unwrap();
    bus.shutdown(LONG).await;
    let err = bus.publish(Item(1)).await.expect_err("closed");
    assert!(matches!(
        err.reason(),
        Refusal::Closed {
            topic: "work.item",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "the bus is shut down; the event on topic `work.item` was not published"
    );
    assert_eq!(err.into_inner(), Item(1));
    assert!(matches!(
        bus.try_publish(Item(2)).map_err(|e| e.reason().clone()),
        Err(Refusal::Closed { .. })
    ));
    assert!(matches!(
        publisher
            .try_publish(Item(3))
            .map_err(|e| e.reason().clone()),
        Err(Refusal::Closed { .. })
    ));
    assert!(matches!(
        bus.subscribe::<Item>().stream(),
        Err(SubscribeError::Closed { topic: "work.item" })
    ));
    assert_eq!(bus.stats().topic("work.item").unwrap().published, 0);
}

#[tokio::test]
async fn a_publisher_waiting_for_room_is_released_with_closed() {
    let bus = bus();
    let mut sub = bus.subscribe::<Item>().capacity(1).stream().unwrap();
    bus.publish(Item(1)).await.unwrap();
    let mut waiting = pin!(bus.publish(Item(2)));
    assert!(poll!(waiting.as_mut()).is_pending());

    let mut shutdown = pin!(bus.shutdown(LONG));
    assert!(
        poll!(shutdown.as_mut()).is_pending(),
        "item 1 is not read yet"
    );
    let err = waiting.await.expect_err("released by shutdown");
    assert_eq!(err.into_inner(), Item(2));

    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    // The stream ends once the drain is over.
    let (report, last) = tokio::join!(shutdown, sub.recv());
    assert!(last.is_none());
    assert!(!report.deadline_hit && report.cut_off() == 0, "{report}");
    // The released publisher is a loose end, named.
    assert_eq!(report.refused(), 1, "{report}");
    assert!(!report.is_clean());
    assert_eq!(report.stats.topic("work.item").unwrap().published, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cuts_off_what_is_left_and_the_report_says_so() {
    let bus = bus();
    // A stream nobody reads: its events can only be cut off.
    let _unread = bus.subscribe::<Item>().name("unread").stream().unwrap();
    // An async handler stuck on its first event.
    let _stuck = bus
        .subscribe::<Item>()
        .name("stuck")
        .handler(|_| std::future::pending::<()>())
        .unwrap();
    for i in 0..5 {
        bus.publish(Item(i)).await.unwrap();
    }
    tokio::task::yield_now().await; // let the handler take its first event
    let report = bus.shutdown(Duration::from_millis(100)).await;
    assert!(report.deadline_hit);
    assert!(!report.is_clean());
    let by_name = |n: &str| {
        report
            .subscriptions()
            .find(|s| s.name == n)
            .cloned()
            .unwrap()
    };
    let unread = by_name("unread");
    assert_eq!(
        (unread.delivered, unread.cut_off, unread.queue_depth),
        (0, 5, 0)
    );
    let stuck = by_name("stuck");
    // Its run was cancelled: over, counted once, no longer in flight.
    assert_eq!(
        (
            stuck.delivered,
            stuck.cut_off,
            stuck.in_flight,
            stuck.cancelled
        ),
        (1, 4, 0, 1)
    );
    assert_eq!(report.cut_off(), 9);
    assert_eq!(report.in_flight(), 1);
    for s in report.subscriptions() {
        assert_eq!(s.accepted, s.delivered + s.undelivered(), "{s}");
    }
    let text = report.to_string();
    assert!(
        text.contains("deadline hit, 9 event(s) cut off, 1 handler run(s) unfinished"),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_twice_changes_nothing() {
    let bus = bus();
    let (tx, rx) = mpsc::channel();
    let _h = bus
        .subscribe::<Item>()
        .sync(move |e| tx.send(e.0).unwrap())
        .unwrap();
    bus.publish(Item(7)).await.unwrap();
    let first = bus.shutdown(LONG).await;
    let second = bus.shutdown(LONG).await;
    assert!(first.is_clean() && second.is_clean());
    assert_eq!(first.stats, second.stats);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [7]);
}

#[tokio::test]
async fn clones_share_one_bus() {
    let bus = bus();
    let clone = bus.clone();
    let mut sub = bus.subscribe::<Item>().stream().unwrap();
    clone.publish(Item(1)).await.unwrap();
    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    clone.shutdown(LONG).await;
    assert!(bus.publish(Item(2)).await.is_err());
}

// ---------------------------------------------------------------------------
// Chains of handlers, subscriptions still draining, and shutdown's own edges.
// ---------------------------------------------------------------------------

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated(u64);

#[derive(Debug, Event)]
#[event(topic = "invoices.rendered")]
struct InvoiceRendered(u64);

#[derive(Debug, Event)]
#[event(topic = "mail.sent")]
struct MailSent(u64);

#[derive(Debug, Event)]
#[event(topic = "chain.hop")]
struct Hop(u32);

fn chain_bus() -> Bus {
    Bus::builder()
        .topic::<OrderCreated>()
        .topic::<InvoiceRendered>()
        .topic::<MailSent>()
        .topic::<Hop>()
        .build()
        .expect("valid allow-list")
}

/// orders.created → invoicing (async, `publish().await`) → invoices.rendered
/// → mailer (sync, `try_publish`) → mail.sent → a stream. Shut down right
/// after the orders are published: every follow-on is accepted and handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_handlers_finish_during_the_drain() {
    let bus = chain_bus();
    let b = bus.clone();
    let _invoicing = bus
        .subscribe::<OrderCreated>()
        .name("invoicing")
        .handler(move |e| {
            let b = b.clone();
            async move { b.publish(InvoiceRendered(e.0)).await.map(|_| ()) }
        })
        .unwrap();
    let b = bus.clone();
    // Capacity 1: the invoicing handler waits for room during the drain,
    // and is not released with `Closed`.
    let _mailer = bus
        .subscribe::<InvoiceRendered>()
        .name("mailer")
        .capacity(1)
        .sync(move |e| {
            std::thread::sleep(Duration::from_micros(20));
            b.try_publish(MailSent(e.0)).map(|_| ())
        })
        .unwrap();
    let mut sent = bus
        .subscribe::<MailSent>()
        .name("archive")
        .stream()
        .unwrap();
    let archive = tokio::spawn(async move {
        let mut ids = Vec::new();
        while let Some(e) = sent.recv().await {
            ids.push(e.0);
        }
        ids
    });
    for id in 0..100 {
        bus.publish(OrderCreated(id)).await.unwrap();
    }
    let report = bus.shutdown(LONG).await;
    assert!(report.is_clean(), "{report}");
    let mut ids = archive.await.unwrap();
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<_>>(), "{report}");
    for s in report
        .subscriptions()
        .filter(|s| s.topic != "tidings.dead_letters")
    {
        assert_eq!((s.accepted, s.delivered), (100, 100), "{s}");
        assert_eq!(s.dead_lettered, 0, "{s}");
    }
    assert_eq!(
        report
            .stats
            .topic("tidings.dead_letters")
            .unwrap()
            .published,
        0
    );
}

/// A chain of 500 hops from one root event, every hop published by the
/// handler of the one before: it finishes before shutdown returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_any_depth_finishes() {
    let bus = chain_bus();
    let b = bus.clone();
    let _hops = bus
        .subscribe::<Hop>()
        .name("hops")
        .handler(move |e| {
            let b = b.clone();
            async move {
                if e.0 > 0 {
                    b.publish(Hop(e.0 - 1)).await.map(|_| ())
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    bus.publish(Hop(499)).await.unwrap();
    let report = bus.shutdown(LONG).await;
    assert!(report.is_clean(), "{report}");
    let hops = report.subscriptions().find(|s| s.name == "hops").unwrap();
    assert_eq!((hops.accepted, hops.handled), (500, 500), "{report}");
}

/// While the bus drains, publishes from outside its handlers are refused at
/// once, each named in the report; the drain itself goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_publishes_during_the_drain_are_refused_and_reported() {
    let bus = chain_bus();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    let _slow = bus
        .subscribe::<OrderCreated>()
        .name("slow")
        .handler(move |_| {
            let g = Arc::clone(&g);
            async move {
                let _permit = g.acquire().await;
            }
        })
        .unwrap();
    bus.publish(OrderCreated(1)).await.unwrap();
    let mut shutdown = pin!(bus.shutdown(LONG));
    assert!(
        poll!(shutdown.as_mut()).is_pending(),
        "the handler holds it up"
    );
    // From outside any handler: refused, the event handed back.
    let err = bus.publish(OrderCreated(2)).await.expect_err("refused");
    assert!(matches!(err.reason(), Refusal::Closed { .. }));
    assert_eq!(err.into_inner().0, 2);
    assert!(bus.try_publish(InvoiceRendered(3)).is_err());
    gate.add_permits(1);
    let report = shutdown.await;
    assert!(!report.deadline_hit, "{report}");
    assert_eq!(report.refused(), 2, "{report}");
    let refused: Vec<_> = report
        .unclean
        .iter()
        .map(|u| (u.kind, u.topic, u.count))
        .collect();
    assert_eq!(
        refused,
        [
            (UncleanKind::Refused, "invoices.rendered", 1),
            (UncleanKind::Refused, "orders.created", 1)
        ]
    );
    assert!(!report.is_clean());
    let text = report.to_string();
    assert!(text.contains("not clean: 2 publish(es) refused"), "{text}");
    assert!(
        text.contains("1 publish(es) on topic `orders.created` refused while the bus shut down"),
        "{text}"
    );
}

/// A gate that holds handlers until it is opened.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Subscriptions whose `unsubscribe()` future was dropped still drain:
/// shutdown waits for them and lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_subscriptions_still_draining_after_unsubscribe() {
    let bus = bus();
    let gate = Gate::default();
    let g = gate.clone();
    let sync = bus
        .subscribe::<Item>()
        .name("sync")
        .sync(move |_| g.wait())
        .unwrap();
    let g = gate.clone();
    let asynchronous = bus
        .subscribe::<Item>()
        .name("async")
        .handler(move |_| {
            let g = g.clone();
            async move { tokio::task::spawn_blocking(move || g.wait()).await.unwrap() }
        })
        .unwrap();
    for i in 0..200 {
        bus.publish(Item(i)).await.unwrap();
    }
    for handle in [sync, asynchronous] {
        let mut leaving = pin!(handle.unsubscribe());
        assert!(poll!(leaving.as_mut()).is_pending(), "events are queued");
        // Dropped: the subscription drains on in the background.
    }
    let stats = bus.stats();
    let topic = stats.topic("work.item").unwrap();
    assert!(topic.subscriptions.is_empty());
    assert_eq!(topic.draining.len(), 2, "{stats}");
    let mut shutdown = pin!(bus.shutdown(LONG));
    assert!(
        poll!(shutdown.as_mut()).is_pending(),
        "400 events to handle"
    );
    gate.open();
    let report = shutdown.await;
    assert!(report.is_clean(), "{report}");
    let draining = &report.stats.topic("work.item").unwrap().draining;
    assert_eq!(draining.len(), 2, "{report}");
    for s in draining {
        assert_eq!((s.accepted, s.handled, s.queue_depth), (200, 200, 0), "{s}");
    }
    assert!(report.to_string().contains("sync (left)"), "{report}");
}

/// The same, cut off by the deadline: the report names what was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_subscription_cut_off_by_the_deadline_is_named() {
    let bus = bus();
    let gate = Gate::default();
    let g = gate.clone();
    let sync = bus
        .subscribe::<Item>()
        .name("stuck")
        .sync(move |_| g.wait())
        .unwrap();
    for i in 0..10 {
        bus.publish(Item(i)).await.unwrap();
    }
    {
        let mut leaving = pin!(sync.unsubscribe());
        assert!(poll!(leaving.as_mut()).is_pending());
    }
    let report = bus.shutdown(Duration::from_millis(50)).await;
    gate.open();
    assert!(report.deadline_hit);
    let stuck: Vec<_> = report
        .unclean
        .iter()
        .filter(|u| u.subscription.as_deref() == Some("stuck"))
        .map(|u| (u.kind, u.count))
        .collect();
    assert_eq!(stuck.len(), 2, "{report}");
    let cut: u64 = stuck
        .iter()
        .filter(|(k, _)| *k == UncleanKind::CutOff)
        .map(|(_, n)| n)
        .sum();
    let unfinished: u64 = stuck
        .iter()
        .filter(|(k, _)| *k == UncleanKind::Unfinished)
        .map(|(_, n)| n)
        .sum();
    // One run was blocked at the gate, the rest still queued.
    assert_eq!((cut, unfinished), (9, 1), "{report}");
}

/// A handle dropped while its handler runs discards what is queued (counted),
/// but the run itself is a handler run of the bus: shutdown waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_run_of_a_dropped_handle() {
    let bus = chain_bus();
    let gate = Gate::default();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let g = gate.clone();
    let b = bus.clone();
    let handle = bus
        .subscribe::<OrderCreated>()
        .name("dropped")
        .sync(move |e| {
            let _ = started_tx.send(());
            g.wait();
            b.try_publish(InvoiceRendered(e.0)).map(|_| ())
        })
        .unwrap();
    let mut invoices = bus.subscribe::<InvoiceRendered>().stream().unwrap();
    for i in 0..5 {
        bus.publish(OrderCreated(i)).await.unwrap();
    }
    started_rx.recv().unwrap();
    drop(handle); // 4 queued events discarded, one run going
    let mut shutdown = pin!(bus.shutdown(LONG));
    assert!(poll!(shutdown.as_mut()).is_pending(), "the run is going");
    gate.open();
    let (report, invoice) = tokio::join!(shutdown, invoices.recv());
    assert!(report.is_clean(), "{report}");
    assert_eq!(invoice.map(|e| e.0), Some(0), "its follow-on was accepted");
    let topic = report.stats.topic("orders.created").unwrap();
    assert_eq!(topic.discarded_on_unsubscribe, 4);
    assert_eq!(topic.draining[0].handled, 1, "{report}");
}

/// A handler that awaits its own subscription's `unsubscribe()` returns; what
/// was queued behind it is still handled, and shutdown is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_can_unsubscribe_its_own_subscription() {
    for sync in [false, true] {
        let bus = bus();
        let own: Arc<Mutex<Option<tidings::SubscriptionHandle>>> = Arc::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (o, s) = (Arc::clone(&own), Arc::clone(&seen));
        let handle = if sync {
            bus.subscribe::<Item>()
                .name("self")
                .sync(move |e| {
                    s.lock().unwrap().push(e.0);
                    if e.0 == 2 {
                        let me = o.lock().unwrap().take().expect("the handle");
                        let stats = futures::executor::block_on(me.unsubscribe());
                        assert!(stats.closed);
                    }
                })
                .unwrap()
        } else {
            bus.subscribe::<Item>()
                .name("self")
                .handler(move |e| {
                    let (o, s) = (Arc::clone(&o), Arc::clone(&s));
                    async move {
                        s.lock().unwrap().push(e.0);
                        if e.0 == 2 {
                            let me = o.lock().unwrap().take().expect("the handle");
                            assert!(me.unsubscribe().await.closed);
                        }
                    }
                })
                .unwrap()
        };
        *own.lock().unwrap() = Some(handle);
        // Held back until all five are queued.
        let mut blocker = bus
            .subscribe::<Item>()
            .name("blocker")
            .capacity(5)
            .stream()
            .unwrap();
        for i in 0..5 {
            bus.publish(Item(i)).await.unwrap();
        }
        while blocker.try_recv().is_ok() {}
        let report = tokio::time::timeout(LONG, bus.shutdown(LONG))
            .await
            .expect("no deadlock");
        assert!(report.is_clean(), "sync={sync}: {report}");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        // Unsubscribed while events 3 and 4 were already queued: they are
        // handled too; nothing published later reaches it.
        assert_eq!(seen, [0, 1, 2, 3, 4], "sync={sync}");
        assert!(bus.publish(Item(9)).await.is_err());
    }
}

/// A handler that calls `shutdown` does not wait for itself: the rest of the
/// bus drains, the report does not count the caller's own run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_inside_a_handler_drains_the_rest() {
    let bus = chain_bus();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let b = bus.clone();
    let _admin = bus
        .subscribe::<OrderCreated>()
        .name("admin")
        .handler(move |_| {
            let b = b.clone();
            let tx = tx.lock().unwrap().take();
            async move {
                let report = b.shutdown(LONG).await;
                if let Some(tx) = tx {
                    let _ = tx.send(report);
                }
            }
        })
        .unwrap();
    let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h = Arc::clone(&handled);
    let _other = bus
        .subscribe::<InvoiceRendered>()
        .name("other")
        .sync(move |_| {
            std::thread::sleep(Duration::from_millis(1));
            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
    for i in 0..20 {
        bus.publish(InvoiceRendered(i)).await.unwrap();
    }
    bus.publish(OrderCreated(1)).await.unwrap();
    let report = tokio::time::timeout(LONG, rx)
        .await
        .expect("no deadlock")
        .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(handled.load(std::sync::atomic::Ordering::Relaxed), 20);
    let admin = report.subscriptions().find(|s| s.name == "admin").unwrap();
    assert_eq!(admin.in_flight, 1, "its own run, still going: {report}");
}

/// Dropping the shutdown future at any of its await points leaves the bus
/// draining; shutting down again finishes, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_shutdown_leaves_the_bus_draining_and_a_second_one_finishes() {
    for polls in 0..4 {
        let bus = bus();
        let gate = Gate::default();
        let g = gate.clone();
        let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = Arc::clone(&handled);
        let _slow = bus
            .subscribe::<Item>()
            .name("slow")
            .sync(move |_| {
                g.wait();
                h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap();
        let mut reader = bus.subscribe::<Item>().name("reader").stream().unwrap();
        for i in 0..10 {
            bus.publish(Item(i)).await.unwrap();
        }
        {
            let mut first = pin!(bus.shutdown(LONG));
            for _ in 0..polls {
                assert!(poll!(first.as_mut()).is_pending());
                tokio::task::yield_now().await;
            }
        } // dropped mid-drain
        if polls > 0 {
            assert!(bus.publish(Item(99)).await.is_err(), "still draining");
        }
        gate.open();
        let mut got = Vec::new();
        let (report, ()) = tokio::join!(bus.shutdown(LONG), async {
            while let Some(e) = reader.recv().await {
                got.push(e.0);
            }
        });
        assert!(!report.deadline_hit && report.cut_off() == 0, "{report}");
        assert_eq!(handled.load(std::sync::atomic::Ordering::Relaxed), 10);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(report.refused(), u64::from(polls > 0), "{report}");
    }
}

/// A handler that panics while the bus drains is counted; the drain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panics_during_the_drain_are_counted_and_the_drain_goes_on() {
    let bus = bus();
    let _flaky = bus
        .subscribe::<Item>()
        .name("flaky")
        .sync(|e| {
            if e.0 % 2 == 0 {
                panic!("even {}", e.0);
            }
        })
        .unwrap();
    let mut dead = bus.dead_letters().name("dead").stream().unwrap();
    let letters = tokio::spawn(async move {
        let mut n = 0;
        while dead.recv().await.is_some() {
            n += 1;
        }
        n
    });
    for i in 0..50 {
        bus.publish(Item(i)).await.unwrap();
    }
    let report = bus.shutdown(LONG).await;
    assert!(!report.deadline_hit && report.cut_off() == 0, "{report}");
    let flaky = report.subscriptions().find(|s| s.name == "flaky").unwrap();
    assert_eq!(
        (flaky.handled, flaky.panics, flaky.dead_lettered),
        (25, 25, 25)
    );
    assert_eq!(
        letters.await.unwrap(),
        25,
        "every dead letter reached its reader"
    );
}

/// Every handle of the bus dropped while it drains: the runners finish what
/// they hold, nothing panics, and the counts still add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_dropped_mid_drain_still_accounts_for_every_event() {
    let bus = bus();
    let gate = Gate::default();
    let g = gate.clone();
    let handle = bus
        .subscribe::<Item>()
        .name("slow")
        .sync(move |_| g.wait())
        .unwrap();
    for i in 0..20 {
        bus.publish(Item(i)).await.unwrap();
    }
    {
        let mut shutdown = pin!(bus.shutdown(LONG));
        assert!(poll!(shutdown.as_mut()).is_pending());
    }
    drop(bus);
    gate.open();
    let stats = handle.unsubscribe().await;
    assert_eq!(stats.accepted, 20);
    assert_eq!(
        stats.delivered + stats.undelivered(),
        stats.accepted,
        "{stats}"
    );
    assert_eq!(
        stats.delivered,
        stats.handled + stats.dead_lettered + stats.in_flight as u64 + stats.cancelled
    );
}

/// An async run that the deadline cancelled is finished in the books, once:
/// named as unfinished in the report, no longer in flight, so that a second
/// shutdown, `Duration::MAX` included, and `unsubscribe()` return at once.
#[tokio::test(start_paused = true)]
async fn a_run_cancelled_by_the_deadline_is_no_longer_in_flight() {
    let bus = bus();
    let stuck = bus
        .subscribe::<Item>()
        .name("stuck")
        .handler(|_| std::future::pending::<()>())
        .unwrap();
    bus.publish(Item(1)).await.unwrap();
    tokio::task::yield_now().await; // the handler takes it
    let first = bus.shutdown(Duration::from_millis(100)).await;
    assert!(first.deadline_hit, "{first}");
    assert_eq!(first.in_flight(), 1, "named once: {first}");
    let s = first.subscriptions().find(|s| s.name == "stuck").unwrap();
    assert_eq!((s.delivered, s.in_flight, s.cancelled), (1, 0, 1), "{s}");
    assert_eq!(
        s.delivered,
        s.handled + s.dead_lettered + s.in_flight as u64 + s.cancelled,
        "{s}"
    );
    // Paused time: a call that waited would auto-advance the clock.
    let before = tokio::time::Instant::now();
    let second = tokio::time::timeout(LONG, bus.shutdown(Duration::MAX))
        .await
        .expect("a second shutdown returns");
    assert_eq!(second.stats, first.stats, "changes nothing");
    let stats = tokio::time::timeout(LONG, stuck.unsubscribe())
        .await
        .expect("unsubscribe returns");
    assert_eq!((stats.in_flight, stats.cancelled), (0, 1));
    assert_eq!(before.elapsed(), Duration::ZERO, "nothing waited");
}

/// A subscription whose handler dead-letters its event during the drain and
/// that then leaves while the bus still drains is still in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_the_drain_is_reported_after_its_subscription_left() {
    let bus = bus();
    let (slow_gate, fail_gate) = (Gate::default(), Gate::default());
    let (g1, g2) = (slow_gate.clone(), fail_gate.clone());
    // Keeps the drain open until its gate opens.
    let _slow = bus
        .subscribe::<Item>()
        .name("slow")
        .sync(move |_| g1.wait())
        .unwrap();
    let failing = bus
        .subscribe::<Item>()
        .name("failing")
        .retry(tidings::RetryPolicy::none())
        .sync(move |_| {
            g2.wait();
            Err::<(), _>("gives up")
        })
        .unwrap();
    bus.publish(Item(1)).await.unwrap();
    let shutdown = tokio::spawn({
        let bus = bus.clone();
        async move { bus.shutdown(LONG).await }
    });
    // The drain has begun once a new subscription is refused.
    while let Ok(probe) = bus.subscribe::<Item>().stream() {
        drop(probe);
        tokio::task::yield_now().await;
    }
    // The failing handler gives up during the drain, then leaves.
    fail_gate.open();
    loop {
        let stats = failing.stats();
        if stats.dead_lettered == 1 && stats.in_flight == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    drop(failing);
    slow_gate.open();
    let report = shutdown.await.unwrap();
    assert_eq!(report.dead_lettered_in_drain(), 1, "{report}");
    assert!(!report.is_clean(), "{report}");
}

/// The drain begins with the first call: a second call, made after the
/// first was dropped mid-drain, reports what happened from the first on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shutdown_reports_the_drain_from_the_first_call() {
    let bus = bus();
    let gate = Gate::default();
    let g = gate.clone();
    let _failing = bus
        .subscribe::<Item>()
        .name("failing")
        .retry(tidings::RetryPolicy::none())
        .sync(move |_| {
            g.wait();
            Err::<(), _>("gives up")
        })
        .unwrap();
    bus.publish(Item(1)).await.unwrap();
    {
        let mut first = pin!(bus.shutdown(LONG));
        assert!(poll!(first.as_mut()).is_pending());
    } // dropped mid-drain, with the run in flight
    gate.open();
    // The run dead-letters its event while nobody waits for the drain.
    loop {
        let stats = bus.stats();
        let s = stats.subscriptions().find(|s| s.name == "failing").unwrap();
        if s.dead_lettered == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let second = bus.shutdown(LONG).await;
    assert_eq!(second.dead_lettered_in_drain(), 1, "{second}");
    assert!(!second.is_clean(), "{second}");
}
