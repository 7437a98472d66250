//! Handler subscriptions: where they run, how failures and panics are
//! contained, concurrency and order, and unsubscribing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tidings::{Bus, Event, SubscriberKind};

#[derive(Debug, Event)]
#[event(topic = "jobs")]
struct Job(u64);

fn bus() -> Bus {
    // Tests below run up to four sync handlers at the same time: the CPU
    // pool must have the workers, whatever the machine's cores.
    Bus::builder()
        .topic::<Job>()
        .cpu_workers(4)
        .build()
        .expect("valid allow-list")
}

/// A generous bound so a broken bus fails the test instead of hanging it;
/// correct runs finish in microseconds.
const HANG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "current_thread")]
async fn sync_handlers_run_on_bus_threads_not_on_the_runtime() {
    let bus = bus();
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let h = bus
        .subscribe::<Job>()
        .name("blocking")
        .sync(move |e| {
            let in_runtime = tokio::runtime::Handle::try_current().is_ok();
            let thread = std::thread::current().name().map(str::to_owned);
            // Blocks until the runtime's only thread, after publishing, says
            // go. Were this handler on that thread, it would never be said.
            go_rx
                .lock()
                .unwrap()
                .recv_timeout(HANG)
                .expect("runtime thread stayed free");
            tx.send((e.0, in_runtime, thread)).unwrap();
        })
        .unwrap();
    bus.publish(Job(1)).await.unwrap();
    tokio::task::yield_now().await; // the runtime keeps running
    go_tx.send(()).unwrap();
    let (id, in_runtime, thread) = rx.recv_timeout(HANG).expect("handled");
    assert_eq!(id, 1);
    assert!(!in_runtime, "sync handler ran inside the tokio runtime");
    // A worker of the bus's CPU pool.
    assert!(
        thread
            .as_deref()
            .is_some_and(|t| t.starts_with("tidings-cpu-")),
        "{thread:?}"
    );
    assert_eq!(h.unsubscribe().await.handled, 1);
}

#[tokio::test]
async fn failing_and_panicking_handlers_are_counted_and_the_subscription_goes_on() {
    let bus = bus();
    let handler = |n: u64| -> Result<(), std::io::Error> {
        match n % 3 {
            0 => Ok(()),
            1 => Err(std::io::Error::other(format!("job {n} failed"))),
            _ => panic!("job {n} exploded"),
        }
    };
    let sync = bus.subscribe::<Job>().sync(move |e| handler(e.0)).unwrap();
    let asynk = bus
        .subscribe::<Job>()
        .handler(move |e| async move { handler(e.0) })
        .unwrap();
    for i in 0..9 {
        bus.publish(Job(i)).await.unwrap();
    }
    for stats in [sync.unsubscribe().await, asynk.unsubscribe().await] {
        assert_eq!(stats.delivered, 9, "{stats}");
        assert_eq!(
            (stats.handled, stats.failures, stats.panics),
            (3, 3, 3),
            "{stats}"
        );
        assert_eq!(stats.last_error.as_deref(), Some("panic: job 8 exploded"));
        assert_eq!(stats.in_flight, 0);
    }
}

#[tokio::test]
async fn a_handler_that_panics_before_returning_its_future_is_contained() {
    let bus = bus();
    let h = bus
        .subscribe::<Job>()
        .handler(|e| {
            assert!(e.0 != 0, "zero is not a job");
            async {}
        })
        .unwrap();
    bus.publish(Job(0)).await.unwrap();
    bus.publish(Job(1)).await.unwrap();
    let s = h.unsubscribe().await;
    assert_eq!((s.handled, s.panics), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_keeps_order_for_both_kinds() {
    let bus = bus();
    let seen_sync = Arc::new(Mutex::new(Vec::new()));
    let seen_async = Arc::new(Mutex::new(Vec::new()));
    let s1 = Arc::clone(&seen_sync);
    let s2 = Arc::clone(&seen_async);
    let hs = bus
        .subscribe::<Job>()
        .capacity(4)
        .sync(move |e| s1.lock().unwrap().push(e.0))
        .unwrap();
    let ha = bus
        .subscribe::<Job>()
        .capacity(4)
        .handler(move |e| {
            let s2 = Arc::clone(&s2);
            async move {
                tokio::task::yield_now().await;
                s2.lock().unwrap().push(e.0);
            }
        })
        .unwrap();
    for i in 0..500 {
        bus.publish(Job(i)).await.unwrap();
    }
    hs.unsubscribe().await;
    ha.unsubscribe().await;
    let want: Vec<u64> = (0..500).collect();
    assert_eq!(*seen_sync.lock().unwrap(), want);
    assert_eq!(*seen_async.lock().unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_n_runs_n_handlers_at_once() {
    let bus = bus();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let (r, p, b) = (
        Arc::clone(&running),
        Arc::clone(&peak),
        Arc::clone(&barrier),
    );
    let h = bus
        .subscribe::<Job>()
        .concurrency(4)
        .handler(move |_| {
            let (r, p, b) = (Arc::clone(&r), Arc::clone(&p), Arc::clone(&b));
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                // Only passes once four handlers run at the same time.
                tokio::time::timeout(HANG, b.wait())
                    .await
                    .expect("4 concurrent runs");
                r.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    for i in 0..8 {
        bus.publish(Job(i)).await.unwrap();
    }
    let s = h.unsubscribe().await;
    assert_eq!(s.handled, 8);
    assert_eq!(peak.load(Ordering::SeqCst), 4);

    // The same with sync threads.
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let b = Arc::clone(&barrier);
    let h = bus
        .subscribe::<Job>()
        .concurrency(3)
        .sync(move |_| {
            b.wait();
        })
        .unwrap();
    for i in 0..6 {
        bus.publish(Job(i)).await.unwrap();
    }
    assert_eq!(h.unsubscribe().await.handled, 6);
}

#[tokio::test]
async fn unsubscribe_drains_and_drop_discards_with_a_count() {
    let bus = bus();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Mutex::new(gate_rx);
    let h = bus
        .subscribe::<Job>()
        .capacity(16)
        .sync(move |_| {
            gate_rx.lock().unwrap().recv_timeout(HANG).expect("gate");
        })
        .unwrap();
    for i in 0..5 {
        bus.publish(Job(i)).await.unwrap();
    }
    for _ in 0..5 {
        gate_tx.send(()).unwrap();
    }
    let s = h.unsubscribe().await;
    assert_eq!(
        (s.accepted, s.handled, s.discarded, s.queue_depth),
        (5, 5, 0, 0)
    );
    assert!(s.closed);

    // Dropped while one event is being handled and three wait: the three
    // are discarded, and counted on the topic.
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Mutex::new(gate_rx);
    let h = bus
        .subscribe::<Job>()
        .sync(move |_| {
            started_tx.send(()).unwrap();
            gate_rx.lock().unwrap().recv_timeout(HANG).expect("gate");
        })
        .unwrap();
    for i in 0..4 {
        bus.publish(Job(i)).await.unwrap();
    }
    started_rx.recv_timeout(HANG).unwrap();
    drop(h);
    gate_tx.send(()).unwrap();
    let t = bus.stats().topic("jobs").cloned().unwrap();
    assert_eq!((t.unsubscribed, t.discarded_on_unsubscribe), (2, 3));
    assert!(t.subscriptions.is_empty());
    // Nothing is delivered to a dropped subscription.
    let r = bus.publish(Job(9)).await.unwrap();
    assert_eq!(r.enqueued, 0);
}

#[tokio::test]
async fn streams_work_with_tokio_stream_and_futures_combinators() {
    let bus = bus();
    let sub = bus.subscribe::<Job>().stream().unwrap();
    for i in 0..10 {
        bus.publish(Job(i)).await.unwrap();
    }
    let evens = tokio_stream::StreamExt::filter(sub, |e| e.0 % 2 == 0);
    let evens = tokio_stream::StreamExt::map(evens, |e| e.0);
    let evens: Vec<u64> =
        tokio_stream::StreamExt::collect(tokio_stream::StreamExt::take(evens, 3)).await;
    assert_eq!(evens, [0, 2, 4]);

    let mut sub = bus.subscribe::<Job>().stream().unwrap();
    bus.publish(Job(42)).await.unwrap();
    sub.close();
    let all: Vec<u64> = sub.map(|e| e.0).collect().await;
    assert_eq!(
        all,
        [42],
        "close lets the queue drain, then ends the stream"
    );
}

#[tokio::test]
async fn a_dropped_stream_unsubscribes_and_reports_its_final_numbers() {
    let bus = bus();
    let sub = bus.subscribe::<Job>().stream().unwrap();
    bus.publish(Job(1)).await.unwrap();
    bus.publish(Job(2)).await.unwrap();
    let s = sub.unsubscribe();
    assert_eq!(
        (s.accepted, s.delivered, s.discarded, s.kind),
        (2, 0, 2, SubscriberKind::Stream)
    );
    assert_eq!(bus.publish(Job(3)).await.unwrap().enqueued, 0);
}

#[tokio::test]
async fn handlers_see_envelope_metadata() {
    let bus = bus();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _h = bus
        .subscribe::<Job>()
        .handler(move |e| {
            let tx = tx.clone();
            async move { tx.send((e.seq(), e.id(), e.topic(), e.missed())) }
        })
        .unwrap();
    let r = bus.publish(Job(1)).await.unwrap();
    let (seq, id, topic, missed) = rx.recv().await.unwrap();
    assert_eq!((seq, id, topic, missed), (r.seq, r.id, "jobs", 0));
}
