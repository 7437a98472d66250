//! Overflow policies, one by one: what the publisher sees, what each
//! subscription gets, and that losses are counted in-band and in stats.

use std::pin::pin;
use std::time::Duration;

use std::future::Future;

use futures::{poll, FutureExt};
use tidings::error::Refusal;
use tidings::{Bus, Event, Overflow};

#[derive(Debug, PartialEq, Event)]
#[event(topic = "ticks")]
struct Tick(u64);

fn bus() -> Bus {
    Bus::builder()
        .topic::<Tick>()
        .build()
        .expect("valid allow-list")
}

#[tokio::test]
async fn block_makes_the_publisher_wait_until_there_is_room() {
    let bus = bus();
    let mut sub = bus.subscribe::<Tick>().capacity(2).stream().unwrap();
    bus.publish(Tick(1)).await.unwrap();
    bus.publish(Tick(2)).await.unwrap();

    let mut third = pin!(bus.publish(Tick(3)));
    assert!(
        poll!(third.as_mut()).is_pending(),
        "queue is full: publish waits"
    );
    assert!(poll!(third.as_mut()).is_pending(), "still full");
    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    let receipt = third.await.expect("room appeared");
    assert_eq!((receipt.seq, receipt.enqueued), (3, 1));

    let got: Vec<u64> = std::iter::from_fn(|| sub.try_recv().ok().map(|e| e.0)).collect();
    assert_eq!(got, [2, 3]);
    let s = sub.stats();
    assert_eq!(
        (s.accepted, s.delivered, s.dropped(), s.high_water),
        (3, 3, 0, 2)
    );
}

#[tokio::test]
async fn try_publish_never_waits_and_hands_the_event_back() {
    let bus = bus();
    let sub = bus
        .subscribe::<Tick>()
        .name("slow")
        .capacity(1)
        .stream()
        .unwrap();
    bus.try_publish(Tick(1)).unwrap();
    let err = bus.try_publish(Tick(2)).expect_err("full under Block");
    match err.reason() {
        Refusal::Full {
            topic,
            subscription,
            capacity,
            policy,
            ..
        } => {
            assert_eq!(*topic, "ticks");
            assert_eq!(&**subscription, "slow");
            assert_eq!((*capacity, *policy), (1, Overflow::Block));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "subscription `slow` on topic `ticks` is full (1 events, policy block); nothing was enqueued"
    );
    assert_eq!(err.into_inner(), Tick(2));
    assert_eq!(sub.stats().accepted, 1, "the refused event was not counted");
    assert_eq!(bus.stats().topic("ticks").unwrap().published, 1);
}

#[tokio::test(start_paused = true)]
async fn publish_timeout_gives_up_and_hands_the_event_back() {
    let bus = bus();
    let sub = bus
        .subscribe::<Tick>()
        .name("stuck")
        .capacity(1)
        .stream()
        .unwrap();
    bus.publish_timeout(Tick(1), Duration::from_millis(5))
        .await
        .expect("room");
    let err = bus
        .publish_timeout(Tick(2), Duration::from_millis(5))
        .await
        .expect_err("no room within 5 ms");
    assert!(
        matches!(err.reason(), Refusal::Timeout { subscription, waited, .. }
            if &**subscription == "stuck" && *waited == Duration::from_millis(5)),
        "{err:?}"
    );
    assert_eq!(err.into_inner(), Tick(2));
    assert_eq!(sub.stats().accepted, 1);
}

#[tokio::test]
async fn a_cancelled_publish_enqueues_nothing() {
    let bus = bus();
    let mut sub = bus.subscribe::<Tick>().capacity(1).stream().unwrap();
    let other = bus.subscribe::<Tick>().capacity(8).stream().unwrap();
    bus.publish(Tick(1)).await.unwrap();
    {
        let mut blocked = pin!(bus.publish(Tick(2)));
        assert!(poll!(blocked.as_mut()).is_pending());
    } // dropped while waiting
    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    assert!(sub.try_recv().is_err(), "the cancelled event never arrives");
    assert_eq!(other.stats().accepted, 1, "nor anywhere else");
    assert_eq!(bus.stats().topic("ticks").unwrap().published, 1);
}

#[tokio::test]
async fn drop_oldest_evicts_and_reports_the_loss_in_band() {
    let bus = bus();
    let mut sub = bus
        .subscribe::<Tick>()
        .capacity(3)
        .overflow(Overflow::DropOldest)
        .stream()
        .unwrap();
    for i in 1..=10 {
        let receipt = bus.try_publish(Tick(i)).expect("DropOldest never refuses");
        assert_eq!(receipt.enqueued, 1);
        assert_eq!(receipt.evicted_oldest, usize::from(i > 3));
    }
    let got: Vec<(u64, u64)> = std::iter::from_fn(|| sub.try_recv().ok())
        .map(|e| (e.0, e.missed()))
        .collect();
    assert_eq!(got, [(8, 7), (9, 0), (10, 0)]);
    let s = sub.stats();
    assert_eq!((s.accepted, s.delivered, s.dropped_oldest), (10, 3, 7));
}

#[tokio::test]
async fn drop_newest_discards_the_new_event_and_reports_it_on_the_next_one() {
    let bus = bus();
    let mut sub = bus
        .subscribe::<Tick>()
        .capacity(2)
        .overflow(Overflow::DropNewest)
        .stream()
        .unwrap();
    for i in 1..=5 {
        let receipt = bus.try_publish(Tick(i)).expect("DropNewest never refuses");
        assert_eq!(receipt.dropped_newest, usize::from(i > 2));
    }
    assert_eq!(sub.recv().await.map(|e| (e.0, e.missed())), Some((1, 0)));
    assert_eq!(sub.recv().await.map(|e| (e.0, e.missed())), Some((2, 0)));
    assert_eq!(
        sub.stats().missed_unreported,
        3,
        "lost after the last queued event"
    );
    bus.try_publish(Tick(6)).unwrap();
    assert_eq!(sub.recv().await.map(|e| (e.0, e.missed())), Some((6, 3)));
    let s = sub.stats();
    assert_eq!(
        (
            s.accepted,
            s.delivered,
            s.dropped_newest,
            s.missed_unreported
        ),
        (6, 3, 3, 0)
    );
}

#[tokio::test]
async fn fail_refuses_the_publish_everywhere() {
    let bus = bus();
    let strict = bus
        .subscribe::<Tick>()
        .name("strict")
        .capacity(1)
        .overflow(Overflow::Fail)
        .stream()
        .unwrap();
    let roomy = bus.subscribe::<Tick>().capacity(100).stream().unwrap();
    bus.publish(Tick(1)).await.unwrap();
    let err = bus.publish(Tick(2)).await.expect_err("strict is full");
    assert!(
        matches!(err.reason(), Refusal::Full { subscription, policy: Overflow::Fail, .. } if &**subscription == "strict"),
        "{err:?}"
    );
    assert_eq!(err.into_inner(), Tick(2));
    assert_eq!(
        roomy.stats().accepted,
        1,
        "all or nothing: roomy did not get it"
    );
    assert_eq!(strict.stats().accepted, 1);
}

#[tokio::test]
async fn a_slow_lossy_subscriber_never_stalls_the_publisher_or_the_others() {
    let bus = bus();
    // Never read: a subscriber that has stopped.
    let stalled = bus
        .subscribe::<Tick>()
        .capacity(4)
        .overflow(Overflow::DropNewest)
        .stream()
        .unwrap();
    let mut fast = bus.subscribe::<Tick>().capacity(1024).stream().unwrap();
    for i in 0..1000 {
        // Never has to wait: `now_or_never` would return None if it did.
        bus.publish(Tick(i))
            .now_or_never()
            .expect("publish did not wait")
            .expect("accepted");
    }
    let mut n = 0;
    while let Ok(e) = fast.try_recv() {
        assert_eq!((e.0, e.missed()), (n, 0));
        n += 1;
    }
    assert_eq!(n, 1000);
    let s = stalled.stats();
    assert_eq!((s.queue_depth, s.dropped_newest), (4, 996));
}

#[tokio::test]
async fn the_receipt_counts_every_subscription() {
    let bus = bus();
    let _a = bus
        .subscribe::<Tick>()
        .capacity(1)
        .overflow(Overflow::DropOldest)
        .stream()
        .unwrap();
    let _b = bus
        .subscribe::<Tick>()
        .capacity(1)
        .overflow(Overflow::DropNewest)
        .stream()
        .unwrap();
    let _c = bus.subscribe::<Tick>().capacity(8).stream().unwrap();
    let first = bus.try_publish(Tick(1)).unwrap();
    assert_eq!(
        (first.enqueued, first.evicted_oldest, first.dropped_newest),
        (3, 0, 0)
    );
    let second = bus.try_publish(Tick(2)).unwrap();
    assert_eq!(
        (
            second.enqueued,
            second.evicted_oldest,
            second.dropped_newest
        ),
        (2, 1, 1)
    );
    assert!(second.id > first.id);
    assert_eq!(second.seq, first.seq + 1);
}

#[tokio::test]
async fn a_publisher_handle_resolves_once_and_behaves_like_the_bus() {
    let bus = bus();
    let mut sub = bus.subscribe::<Tick>().capacity(1).stream().unwrap();
    let ticks = bus.publisher::<Tick>().unwrap();
    let clone = ticks.clone();
    ticks.publish(Tick(1)).await.unwrap();
    assert!(matches!(
        clone.try_publish(Tick(2)).map_err(|e| e.reason().clone()),
        Err(Refusal::Full { .. })
    ));
    assert_eq!(sub.recv().await.map(|e| e.0), Some(1));
    clone
        .publish_timeout(Tick(3), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(ticks.subscription_stats().len(), 1);
    assert_eq!(ticks.topic(), "ticks");
}

#[tokio::test]
async fn envelopes_share_one_event_across_subscriptions() {
    #[derive(Debug, Event)]
    #[event(topic = "blobs")]
    struct Blob(Vec<u8>); // not Clone: fan-out must not need it

    let bus = Bus::builder().topic::<Blob>().build().unwrap();
    let mut a = bus.subscribe::<Blob>().stream().unwrap();
    let mut b = bus.subscribe::<Blob>().stream().unwrap();
    bus.publish(Blob(vec![7; 1024])).await.unwrap();
    let ea = a.recv().await.unwrap();
    let eb = b.recv().await.unwrap();
    assert!(
        std::ptr::eq(ea.event(), eb.event()),
        "one allocation, shared"
    );
    assert_eq!((ea.id(), ea.seq(), ea.topic()), (eb.id(), 1, "blobs"));
    assert!(ea.published_at() <= std::time::SystemTime::now());
    let kept = ea.shared();
    drop((ea, eb));
    assert_eq!(kept.0.len(), 1024);
}

#[tokio::test]
async fn publish_time_follows_the_topics_clock() {
    use std::time::{Duration, SystemTime};
    use tidings::{Clock, TopicConfig};

    #[derive(Debug, Event)]
    #[event(topic = "ticks.precise")]
    struct Precise(u32);
    #[derive(Debug, Event)]
    #[event(topic = "ticks.coarse")]
    struct Coarse(u32);

    let bus = Bus::builder()
        .topic::<Precise>()
        .topic_with::<Coarse>(TopicConfig::default().clock(Clock::Coarse))
        .build()
        .unwrap();
    assert_eq!(TopicConfig::default().timestamp_clock(), Clock::Precise);
    let mut precise = bus.subscribe::<Precise>().stream().unwrap();
    let mut coarse = bus.subscribe::<Coarse>().stream().unwrap();
    let before = SystemTime::now();
    for i in 0..100 {
        bus.publish(Precise(i)).await.unwrap();
        bus.publish(Coarse(i)).await.unwrap();
    }
    let after = SystemTime::now();
    let (mut last_precise, mut last_coarse) = (SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH);
    for i in 0..100 {
        let p = precise.recv().await.unwrap();
        assert_eq!(p.0, i);
        let p = p.published_at();
        assert!(
            before <= p && p <= after,
            "precise: {p:?} outside the publish window"
        );
        assert!(p >= last_precise, "precise timestamps go forward");
        last_precise = p;
        // The coarse clock reads the last timer tick: never later than the
        // precise clock, and at most a tick (≤ 10 ms; 1 s allowed here, for a
        // busy machine) earlier.
        let c = coarse.recv().await.unwrap();
        assert_eq!(c.0, i);
        let c = c.published_at();
        assert!(c <= after, "coarse: {c:?} after the publish window");
        assert!(
            c + Duration::from_secs(1) >= before,
            "coarse: {c:?} far before it"
        );
        assert!(c >= last_coarse, "coarse timestamps go forward");
        last_coarse = c;
    }
}

#[tokio::test]
async fn events_are_freed_once_every_subscription_has_them() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    static FREED: AtomicUsize = AtomicUsize::new(0);
    #[derive(Debug, Event)]
    #[event(topic = "counted")]
    struct Counted(#[allow(dead_code)] Arc<()>);
    impl Drop for Counted {
        fn drop(&mut self) {
            FREED.fetch_add(1, Ordering::SeqCst);
        }
    }

    let bus = Bus::builder().topic::<Counted>().build().unwrap();
    let mut a = bus.subscribe::<Counted>().stream().unwrap(); // lossless: reads the ring
    let mut b = bus.subscribe::<Counted>().stream().unwrap();
    let mut lossy = bus
        .subscribe::<Counted>()
        .overflow(Overflow::DropNewest)
        .stream()
        .unwrap(); // a queue of its own
    for _ in 0..3 {
        bus.publish(Counted(Arc::new(()))).await.unwrap();
    }
    for _ in 0..3 {
        drop(a.recv().await);
        drop(lossy.recv().await);
    }
    assert_eq!(FREED.load(Ordering::SeqCst), 0, "b has not taken them yet");
    drop(b.recv().await);
    assert_eq!(FREED.load(Ordering::SeqCst), 1, "taken by all: freed");
    drop(b); // leaves with two unread: they are let go of too
    assert_eq!(FREED.load(Ordering::SeqCst), 3);
}

/// Counts how often it is woken.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl futures::task::ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &std::sync::Arc<Self>) {
        arc_self
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn counting() -> (std::sync::Arc<CountingWaker>, std::task::Waker) {
    let count = std::sync::Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = futures::task::waker(std::sync::Arc::clone(&count));
    (count, waker)
}

#[tokio::test]
async fn waiting_publishers_get_room_in_the_order_they_started_waiting() {
    let bus = bus();
    let mut sub = bus.subscribe::<Tick>().capacity(1).stream().unwrap();
    bus.publish(Tick(0)).await.unwrap();
    // Five publishers start waiting, 1 first.
    let mut waiting: Vec<_> = (1..=5).map(|i| Box::pin(bus.publish(Tick(i)))).collect();
    let (_, waker) = counting();
    let mut cx = std::task::Context::from_waker(&waker);
    for f in &mut waiting {
        assert!(f.as_mut().poll(&mut cx).is_pending());
    }
    let mut order = Vec::new();
    let mut done = [false; 5];
    for _ in 0..5 {
        order.push(sub.recv().await.unwrap().0);
        // Room for one: poll the newest first, so that a race would go to it.
        for (i, f) in waiting.iter_mut().enumerate().rev() {
            if !done[i] && f.as_mut().poll(&mut cx).is_ready() {
                done[i] = true;
            }
        }
    }
    order.push(sub.recv().await.unwrap().0);
    assert_eq!(order, [0, 1, 2, 3, 4, 5], "first come, first served");
}

#[tokio::test]
async fn a_waiting_publisher_that_gives_up_hands_its_turn_on() {
    let bus = bus();
    let mut sub = bus.subscribe::<Tick>().capacity(1).stream().unwrap();
    bus.publish(Tick(0)).await.unwrap();
    let mut first = Box::pin(bus.publish(Tick(1)));
    let mut second = Box::pin(bus.publish(Tick(2)));
    let (first_wakes, w1) = counting();
    let (second_wakes, w2) = counting();
    assert!(first
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&w1))
        .is_pending());
    assert!(second
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&w2))
        .is_pending());
    // The first in line is dropped: the second is woken to take its place,
    // then waits for room like the first did.
    drop(first);
    let woken = second_wakes.0.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(woken, 1, "the turn was handed on");
    assert!(second
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&w2))
        .is_pending());
    assert_eq!(sub.recv().await.map(|t| t.0), Some(0));
    assert_eq!(
        second_wakes.0.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "room wakes the new first in line"
    );
    assert!(second
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&w2))
        .is_ready());
    assert_eq!(sub.recv().await.map(|t| t.0), Some(2));
    drop(first_wakes); // a stale wake of the dropped one is harmless
}

/// Two lossless subscriptions on a ring of 2 slots: one reads everything
/// and waits for the next event, whose slot still holds an event the other
/// (full) one has not taken. The one behind still takes its events, and
/// the one ahead is woken by the next publish. (A waiting reader marks the
/// slot it waits for; the reader a ring behind used to mistake the mark
/// for a slot not written and wait forever.)
#[tokio::test]
async fn a_reader_a_whole_ring_ahead_does_not_hide_events_from_one_behind() {
    let bus = Bus::builder()
        .topic_with::<Tick>(tidings::TopicConfig::default().capacity(2))
        .build()
        .unwrap();
    let mut ahead = bus.subscribe::<Tick>().stream().unwrap();
    let mut behind = bus.subscribe::<Tick>().stream().unwrap();
    bus.publish(Tick(1)).await.unwrap();
    bus.publish(Tick(2)).await.unwrap();
    assert_eq!(ahead.recv().await.map(|e| e.0), Some(1));
    assert_eq!(ahead.recv().await.map(|e| e.0), Some(2));
    let mut next = pin!(ahead.recv());
    assert!(poll!(next.as_mut()).is_pending(), "nothing for it yet");
    assert_eq!(behind.try_recv().map(|e| e.0).ok(), Some(1));
    assert_eq!(behind.try_recv().map(|e| e.0).ok(), Some(2));
    bus.publish(Tick(3)).await.unwrap();
    assert_eq!(next.await.map(|e| e.0), Some(3));
    assert_eq!(behind.recv().await.map(|e| e.0), Some(3));
}

/// Room is counted per lossless subscription even when the publisher skips
/// looking: the smallest queue stops the publish, one that joins later
/// counts from its own start, and once the smallest leaves the next
/// smallest decides.
#[tokio::test]
async fn the_fullest_lossless_queue_decides_as_subscriptions_come_and_go() {
    let bus = bus();
    let small = bus.subscribe::<Tick>().capacity(2).stream().unwrap();
    let mut large = bus.subscribe::<Tick>().capacity(4).stream().unwrap();
    bus.try_publish(Tick(1)).unwrap();
    bus.try_publish(Tick(2)).unwrap();
    assert!(bus.try_publish(Tick(3)).is_err(), "the small queue is full");
    // Joins with room for 3 from here: it does not lift the small one's limit.
    let later = bus.subscribe::<Tick>().capacity(3).stream().unwrap();
    assert!(bus.try_publish(Tick(3)).is_err(), "still full");
    drop(small.unsubscribe());
    bus.try_publish(Tick(3)).unwrap();
    bus.try_publish(Tick(4)).unwrap();
    let err = bus.try_publish(Tick(5)).expect_err("the large one is full");
    assert!(
        matches!(err.reason(), Refusal::Full { capacity: 4, .. }),
        "{err}"
    );
    assert_eq!(large.recv().await.map(|e| e.0), Some(1));
    assert_eq!(large.recv().await.map(|e| e.0), Some(2));
    // The one that joined later holds 3 and 4: room for one more.
    bus.try_publish(Tick(5)).unwrap();
    let err = bus
        .try_publish(Tick(6))
        .expect_err("now the later one is full");
    assert!(
        matches!(err.reason(), Refusal::Full { capacity: 3, .. }),
        "{err}"
    );
    assert_eq!(later.stats().queue_depth, 3);
}
