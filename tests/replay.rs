//! The retained log: where subscriptions start, resuming after a
//! disconnect, recovering a lossy subscription's misses, last-value topics.

use tidings::error::SubscribeError;
use tidings::{Bus, Event, Overflow, StartAt, TopicConfig};

#[derive(Debug, Event)]
#[event(topic = "ticks")]
struct Tick(u64);

fn bus(retain: usize) -> Bus {
    Bus::builder()
        .topic_with::<Tick>(TopicConfig::default().retain(retain))
        .build()
        .unwrap()
}

async fn publish(bus: &Bus, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        bus.publish(Tick(i)).await.unwrap();
    }
}

async fn seqs(sub: &mut tidings::Subscription<Tick>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sub.recv().await.expect("open").seq());
    }
    out
}

#[tokio::test]
async fn each_start_gets_the_retained_events_it_asked_for_then_live_ones() {
    let bus = bus(5);
    publish(&bus, 1..=8).await; // retained: seq 4..=8
    let mut earliest = bus
        .subscribe::<Tick>()
        .from(StartAt::Earliest)
        .stream()
        .unwrap();
    let mut last2 = bus
        .subscribe::<Tick>()
        .from(StartAt::Last(2))
        .stream()
        .unwrap();
    let mut seq6 = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(6))
        .stream()
        .unwrap();
    let mut latest = bus.subscribe::<Tick>().stream().unwrap();
    publish(&bus, 9..=9).await;
    assert_eq!(seqs(&mut earliest, 6).await, [4, 5, 6, 7, 8, 9]);
    assert_eq!(seqs(&mut last2, 3).await, [7, 8, 9]);
    assert_eq!(seqs(&mut seq6, 4).await, [6, 7, 8, 9]);
    assert_eq!(seqs(&mut latest, 1).await, [9]);
    let start = seq6.started();
    assert_eq!(
        (start.requested, start.replayed, start.live_from),
        (6, 3, 9)
    );
    assert!(start.unrecoverable.is_empty());
    // Replayed events count as accepted and delivered.
    let stats = seq6.stats();
    assert_eq!((stats.accepted, stats.delivered, stats.replayed), (4, 4, 3));
}

#[tokio::test]
async fn a_start_before_the_retained_log_is_told_exactly_what_is_gone() {
    let bus = bus(3);
    publish(&bus, 1..=10).await; // retained: 8, 9, 10
    let mut sub = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(5))
        .stream()
        .unwrap();
    assert_eq!(sub.started().unrecoverable, 5..8);
    assert_eq!(seqs(&mut sub, 3).await, [8, 9, 10]);
    let sub = bus
        .subscribe::<Tick>()
        .from(StartAt::Last(6))
        .stream()
        .unwrap();
    assert_eq!(
        (sub.started().requested, sub.started().unrecoverable.clone()),
        (5, 5..8)
    );
}

#[tokio::test]
async fn a_subscriber_that_drops_resumes_from_its_last_seq_without_loss() {
    let bus = bus(100);
    let mut sub = bus.subscribe::<Tick>().stream().unwrap();
    publish(&bus, 1..=5).await;
    let seen = seqs(&mut sub, 3).await; // reads 1..=3, then "disconnects"
    let last = *seen.last().unwrap();
    drop(sub);
    publish(&bus, 6..=9).await; // published while it was away
    let mut back = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(last + 1))
        .stream()
        .unwrap();
    publish(&bus, 10..=10).await;
    assert_eq!(seqs(&mut back, 7).await, [4, 5, 6, 7, 8, 9, 10]);
    assert!(back.started().unrecoverable.is_empty());
}

#[tokio::test]
async fn a_lossy_subscription_recovers_its_misses_from_the_log() {
    let bus = bus(4);
    let mut ui = bus
        .subscribe::<Tick>()
        .capacity(1)
        .overflow(Overflow::DropOldest)
        .stream()
        .unwrap();
    publish(&bus, 1..=6).await;
    let e = ui.recv().await.unwrap();
    assert_eq!((e.seq(), e.missed()), (6, 5));
    let back = bus.replay::<Tick>(e.seq() - e.missed()..e.seq()).unwrap();
    let got: Vec<u64> = back.events.iter().map(|e| e.seq()).collect();
    assert_eq!(got, [3, 4, 5]);
    assert_eq!(back.unrecoverable, 1..3);
    // Ranges past the end are clamped to what was published.
    let tail = bus.replay::<Tick>(5..).unwrap();
    assert_eq!(tail.events.len(), 2);
    assert!(tail.unrecoverable.is_empty());
}

#[tokio::test]
async fn a_last_value_topic_gives_late_subscribers_the_current_state() {
    let bus = bus(1);
    let mut empty = bus
        .subscribe::<Tick>()
        .from(StartAt::Last(1))
        .stream()
        .unwrap();
    assert!(empty.try_recv().is_err(), "nothing published yet");
    publish(&bus, 1..=3).await;
    let mut late = bus
        .subscribe::<Tick>()
        .from(StartAt::Last(1))
        .stream()
        .unwrap();
    assert_eq!(late.recv().await.map(|t| t.0), Some(3));
    assert_eq!(empty.recv().await.map(|t| t.0), Some(1));
}

#[tokio::test]
async fn starting_early_needs_a_retaining_topic_and_a_seq_already_reached() {
    let bus = bus(0);
    let err = bus
        .subscribe::<Tick>()
        .from(StartAt::Earliest)
        .stream()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "topic `ticks` retains no events, so a subscription cannot start at earliest; configure TopicConfig::retain"
    );
    let bus = self::bus(2);
    publish(&bus, 1..=2).await;
    let err = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(9))
        .stream()
        .unwrap_err();
    assert!(matches!(
        err,
        SubscribeError::SeqAhead {
            requested: 9,
            next: 3,
            ..
        }
    ));
    // The next seq itself is fine: nothing missed, nothing replayed.
    let sub = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(3))
        .stream()
        .unwrap();
    assert_eq!(sub.started().replayed, 0);
}

#[tokio::test]
async fn handlers_start_where_they_are_told_too() {
    let bus = bus(10);
    publish(&bus, 1..=4).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let h = bus
        .subscribe::<Tick>()
        .from(StartAt::Seq(3))
        .sync(move |e| log.lock().unwrap().push(e.seq()))
        .unwrap();
    assert_eq!(h.started().replayed, 2);
    publish(&bus, 5..=5).await;
    let stats = h.unsubscribe().await;
    assert_eq!(*seen.lock().unwrap(), [3, 4, 5]);
    assert_eq!((stats.accepted, stats.handled), (3, 3));
}
