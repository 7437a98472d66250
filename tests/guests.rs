//! User code is a guest of the bus (guarantee 8): an `on_done` callback or
//! an event's `Drop` runs with no lock of the bus held, so it may read the
//! stats or publish; a panic in it is caught, counted and reported, and
//! never breaks the publish that set it off or the topic.
//!
//! Every scenario runs on a thread of its own and is waited for with a
//! generous deadline: a callback run under a lock of the bus deadlocks
//! that thread, which fails the test instead of hanging it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tidings::{Bus, Event, Overflow, PublishOptions, TopicConfig};

const HANG: Duration = Duration::from_secs(60);

#[derive(Debug, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

/// An event whose `Drop` reads the stats of the bus it is published on.
#[derive(Event)]
#[event(topic = "audit.line")]
struct AuditLine {
    id: u64,
    bus: Option<Bus>,
    drops: Arc<AtomicU64>,
}

impl Drop for AuditLine {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.take() {
            let stats = bus.stats();
            assert!(stats.topic("audit.line").is_some());
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Runs `scenario` on a thread of its own with its own runtime; fails if it
/// does not finish within `HANG` (a deadlock) or panics.
fn guarded(what: &'static str, scenario: impl std::future::Future<Output = ()> + Send + 'static) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(scenario);
        let _ = done.send(());
    });
    match finished.recv_timeout(HANG) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: deadlocked"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the scenario panicked"),
    }
}

fn bus() -> Bus {
    Bus::builder()
        .topic::<OrderPlaced>()
        .topic_with::<AuditLine>(TopicConfig::default().retain(2))
        .build()
        .expect("valid allow-list")
}

/// `on_done` that reads the stats, counting its runs.
fn reads_stats(bus: &Bus, runs: &Arc<AtomicU64>) -> PublishOptions {
    let (bus, runs) = (bus.clone(), Arc::clone(runs));
    PublishOptions::new().on_done(move || {
        let stats = bus.stats();
        assert!(stats.topic("orders.placed").is_some());
        runs.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn on_done_may_read_the_stats_when_its_event_is_evicted() {
    guarded("evicted", async {
        let bus = bus();
        let runs = Arc::new(AtomicU64::new(0));
        let mut latest = bus
            .subscribe::<OrderPlaced>()
            .capacity(1)
            .overflow(Overflow::DropOldest)
            .stream()
            .unwrap();
        bus.publish_with(OrderPlaced { id: 1 }, reads_stats(&bus, &runs))
            .await
            .unwrap();
        bus.publish(OrderPlaced { id: 2 }).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "evicted: done");
        assert_eq!(latest.recv().await.unwrap().id, 2);
    });
}

#[test]
fn on_done_may_read_the_stats_when_a_dropped_stream_discards_its_event() {
    guarded("discarded", async {
        let bus = bus();
        let runs = Arc::new(AtomicU64::new(0));
        let orders = bus.subscribe::<OrderPlaced>().stream().unwrap();
        let lossy = bus
            .subscribe::<OrderPlaced>()
            .overflow(Overflow::DropNewest)
            .stream()
            .unwrap();
        bus.publish_with(OrderPlaced { id: 1 }, reads_stats(&bus, &runs))
            .await
            .unwrap();
        drop(lossy);
        drop(orders);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "discarded: done");
    });
}

#[test]
fn on_done_may_read_the_stats_when_shutdown_cuts_its_event_off() {
    guarded("cut off", async {
        let bus = bus();
        let runs = Arc::new(AtomicU64::new(0));
        let _stuck = bus.subscribe::<OrderPlaced>().stream().unwrap();
        let _stuck_own = bus
            .subscribe::<OrderPlaced>()
            .overflow(Overflow::DropOldest)
            .stream()
            .unwrap();
        bus.publish_with(OrderPlaced { id: 1 }, reads_stats(&bus, &runs))
            .await
            .unwrap();
        let report = bus.shutdown(Duration::from_millis(10)).await;
        assert_eq!(report.cut_off(), 2, "{report}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "cut off: done");
    });
}

#[test]
fn an_event_whose_drop_reads_the_stats_may_be_evicted_discarded_retained_and_cut_off() {
    guarded("event drops", async {
        let bus = bus();
        let drops = Arc::new(AtomicU64::new(0));
        let line = |id| AuditLine {
            id,
            bus: Some(bus.clone()),
            drops: Arc::clone(&drops),
        };
        let mut latest = bus
            .subscribe::<AuditLine>()
            .capacity(1)
            .overflow(Overflow::DropOldest)
            .stream()
            .unwrap();
        // 1 is evicted by 2, and leaves the retained log (2 long) at 3.
        for id in 1..=3 {
            bus.publish(line(id)).await.unwrap();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1, "1 evicted everywhere");
        assert_eq!(latest.recv().await.unwrap().id, 3);
        // 4 is queued in a stream that is dropped, and cut off in another.
        let discarded = bus.subscribe::<AuditLine>().stream().unwrap();
        let _stuck = bus.subscribe::<AuditLine>().stream().unwrap();
        bus.publish(line(4)).await.unwrap();
        drop(discarded);
        let report = bus.shutdown(Duration::from_millis(10)).await;
        assert!(report.cut_off() >= 1, "{report}");
        drop(latest);
        drop(_stuck);
        // 2 and 3 were in the retained log; the log goes with the bus.
        assert!(drops.load(Ordering::SeqCst) >= 1);
    });
}

#[test]
fn a_panicking_on_done_is_counted_and_breaks_neither_the_publish_nor_the_topic() {
    guarded("panicking on_done", async {
        let bus = bus();
        let mut latest = bus
            .subscribe::<OrderPlaced>()
            .capacity(1)
            .overflow(Overflow::DropOldest)
            .stream()
            .unwrap();
        let mut all = bus.subscribe::<OrderPlaced>().capacity(2).stream().unwrap();
        let (closed, _) = mpsc::channel::<u64>();
        let options = PublishOptions::new().on_done(move || {
            closed.send(1).expect("the receiver is gone: panics");
        });
        bus.publish_with(OrderPlaced { id: 1 }, options)
            .await
            .unwrap();
        assert_eq!(all.recv().await.unwrap().id, 1);
        // Evicts 1 from `latest`, the last to hold it: its on_done panics.
        let receipt = bus.publish(OrderPlaced { id: 2 }).await.unwrap();
        assert_eq!(receipt.evicted_oldest, 1);
        // The topic goes on: the lossless reader gets 2, and more.
        assert_eq!(all.recv().await.unwrap().id, 2);
        for id in 3..=6 {
            bus.publish(OrderPlaced { id }).await.unwrap();
            assert_eq!(all.recv().await.unwrap().id, id);
        }
        assert_eq!(latest.recv().await.unwrap().id, 6);
        let stats = bus.stats();
        let topic = stats.topic("orders.placed").unwrap();
        assert_eq!(topic.published, 6);
        assert_eq!(topic.callback_panics, 1, "counted");
        for sub in &topic.subscriptions {
            assert_eq!(sub.queue_depth, 0, "{}: nothing left queued", sub.name);
        }
        let health = bus.health();
        let panic = health
            .callback_panics
            .iter()
            .find(|p| p.topic == "orders.placed")
            .expect("a health entry");
        assert_eq!(panic.count, 1);
        assert!(
            panic.last_message.contains("the receiver is gone"),
            "{}",
            panic.last_message
        );
        assert!(!health.is_healthy(), "{health}");
    });
}
