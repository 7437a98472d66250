//! What a publish and a delivery allocate, counted by the allocator: at
//! most one allocation per publish (the event's `Arc`, shared by every
//! subscription), and none per delivery, for streams and for handlers, on
//! every kind of queue. Keyed publishes are left out: the key and its
//! metadata are allocated on purpose.
//!
//! The counter is per thread, and everything runs on one current-thread
//! runtime, so the count is exactly the work of the bus on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tidings::{Bus, Event, Overflow, Publisher, Subscription};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// only addition is a thread-local counter, const-initialized and without a
// destructor, so counting never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made on this thread while `f` runs.
async fn allocations<F: std::future::Future>(f: F) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f.await;
    ALLOCATIONS.with(Cell::get) - before
}

#[derive(Debug, Event)]
#[event(topic = "alloc.ev")]
struct Ev(u64);

const EVENTS: u64 = 2_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn publish(publisher: &Publisher<Ev>, n: u64) {
    for i in 0..n {
        publisher.publish(Ev(i)).await.expect("room");
    }
}

async fn receive(subs: &mut [Subscription<Ev>], n: u64) {
    for sub in subs.iter_mut() {
        for i in 0..n {
            let e = sub.recv().await.expect("published");
            assert_eq!(e.0, i);
        }
    }
}

/// Publishes and receives a warm-up batch, then counts a batch of each.
fn streams(subscribers: usize, overflow: Overflow) -> (u64, u64) {
    runtime().block_on(async {
        let bus = Bus::builder().topic::<Ev>().build().expect("valid");
        let mut subs: Vec<_> = (0..subscribers)
            .map(|_| {
                bus.subscribe::<Ev>()
                    .capacity(EVENTS as usize)
                    .overflow(overflow)
                    .stream()
                    .expect("subscribed")
            })
            .collect();
        let publisher = bus.publisher::<Ev>().expect("registered");
        publish(&publisher, EVENTS).await;
        receive(&mut subs, EVENTS).await;
        let published = allocations(publish(&publisher, EVENTS)).await;
        let received = allocations(async {
            for sub in subs.iter_mut() {
                for _ in 0..EVENTS {
                    drop(sub.recv().await.expect("published"));
                }
            }
        })
        .await;
        (published, received)
    })
}

#[test]
fn a_publish_allocates_once_and_a_delivery_never_for_every_policy() {
    for overflow in [
        Overflow::Block,
        Overflow::Fail,
        Overflow::DropOldest,
        Overflow::DropNewest,
    ] {
        for subscribers in [1, 16] {
            let (published, received) = streams(subscribers, overflow);
            assert!(
                published <= EVENTS,
                "{overflow:?}, {subscribers} subscribers: {published} allocations for {EVENTS} publishes"
            );
            assert_eq!(
                received,
                0,
                "{overflow:?}, {subscribers} subscribers: {received} allocations for {} deliveries",
                EVENTS * subscribers as u64
            );
        }
    }
}

/// An async handler: publishing and handling a batch allocates once per
/// event (its `Arc`); the handler runner, its waits and its wake-ups
/// nothing.
#[test]
fn a_handler_run_allocates_nothing() {
    runtime().block_on(async {
        let bus = Bus::builder().topic::<Ev>().build().expect("valid");
        let handled = Arc::new(AtomicU64::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let target = Arc::new(AtomicU64::new(EVENTS));
        let _handle = {
            let (handled, done, target) = (handled.clone(), done.clone(), target.clone());
            bus.subscribe::<Ev>()
                .capacity(EVENTS as usize)
                .concurrency(1)
                .handler(move |_e| {
                    let (handled, done, target) = (handled.clone(), done.clone(), target.clone());
                    async move {
                        if handled.fetch_add(1, Ordering::Relaxed) + 1
                            == target.load(Ordering::Relaxed)
                        {
                            done.notify_one();
                        }
                    }
                })
                .expect("subscribed")
        };
        let publisher = bus.publisher::<Ev>().expect("registered");
        let round = || async {
            publish(&publisher, EVENTS).await;
            done.notified().await;
        };
        // Warm-up: what is made once (the runner's task and its first
        // wait) is made before the count.
        for _ in 0..2 {
            round().await;
            target.fetch_add(EVENTS, Ordering::Relaxed);
        }
        let n = allocations(round()).await;
        assert_eq!(handled.load(Ordering::Relaxed), 3 * EVENTS);
        assert!(
            n <= EVENTS,
            "{n} allocations to publish and handle {EVENTS} events"
        );
    });
}

/// A sync handler, on its pool's worker: publishing and handling a batch
/// allocates once per event, counting this thread and the worker's.
/// The handler reports its thread's count with the last event of each
/// round, over a std channel (which allocates nothing per message once it
/// exists), so the runner's share is what it allocated from the end of one
/// round to the end of the next: its runs, its waits and its wake-ups.
#[test]
fn a_sync_handler_run_allocates_nothing() {
    runtime().block_on(async {
        // One worker, started with the subscription: a pool that may start
        // another starts it on the thread that woke a runner (a thread's
        // start allocates), and that worker's first run of a subscription
        // allocates that subscription's share of the stats' histograms.
        let bus = Bus::builder()
            .topic::<Ev>()
            .cpu_workers(1)
            .build()
            .expect("valid");
        let (done, finished) = std::sync::mpsc::sync_channel::<u64>(4);
        let handled = Arc::new(AtomicU64::new(0));
        let _handle = {
            let handled = Arc::clone(&handled);
            bus.subscribe::<Ev>()
                .capacity(EVENTS as usize)
                .sync(move |_e| {
                    let n = handled.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % EVENTS == 0 {
                        let _ = done.send(ALLOCATIONS.with(Cell::get));
                    }
                })
                .expect("subscribed")
        };
        let publisher = bus.publisher::<Ev>().expect("registered");
        let mut runner_before = 0;
        for _ in 0..2 {
            publish(&publisher, EVENTS).await;
            runner_before = finished.recv().expect("a round handled");
        }
        let mine = allocations(publish(&publisher, EVENTS)).await;
        let runner = finished.recv().expect("a round handled") - runner_before;
        assert_eq!(handled.load(Ordering::Relaxed), 3 * EVENTS);
        assert!(
            mine <= EVENTS,
            "{mine} allocations to publish {EVENTS} events"
        );
        assert_eq!(runner, 0, "{runner} allocations to handle {EVENTS} events");
    });
}

/// Publishes `EVENTS` events while a reader on the same thread takes
/// them.
async fn publish_and_receive(publisher: &Publisher<Ev>, sub: &mut Subscription<Ev>) {
    futures::join!(publish(publisher, EVENTS), async {
        for _ in 0..EVENTS {
            drop(sub.recv().await.expect("published"));
        }
    });
}

/// A publisher that waits for room and a reader that makes it, on one
/// thread: the publisher is parked and woken for (nearly) every event, yet
/// a publish still allocates only its event's `Arc`, and a delivery
/// nothing: the lists of waiting publishers keep their room when they are
/// woken. `prefill` events are queued before the count, so that a queue
/// larger than the ring (a queue of its own) is full too.
fn under_backpressure(capacity: usize, prefill: u64) -> u64 {
    runtime().block_on(async {
        let bus = Bus::builder().topic::<Ev>().build().expect("valid");
        let mut sub = bus
            .subscribe::<Ev>()
            .capacity(capacity)
            .stream()
            .expect("subscribed");
        let publisher = bus.publisher::<Ev>().expect("registered");
        for i in 0..prefill {
            publisher.publish(Ev(i)).await.expect("room");
        }
        publish_and_receive(&publisher, &mut sub).await;
        allocations(publish_and_receive(&publisher, &mut sub)).await
    })
}

#[test]
fn waiting_for_room_allocates_nothing_more() {
    for (capacity, prefill) in [(1, 0), (4, 0), (64, 0), (70_000, 70_000)] {
        let n = under_backpressure(capacity, prefill);
        assert!(
            n <= EVENTS,
            "capacity {capacity}: {n} allocations to publish and receive {EVENTS} events under backpressure"
        );
    }
}

#[derive(Debug, Event)]
#[event(topic = "alloc.follow_up")]
struct FollowUp(u64);

/// A bus with both topics, and a stream of the follow-ups with room for a
/// round of them.
fn follow_up_bus() -> (Bus, Subscription<FollowUp>) {
    // One worker, as in `a_sync_handler_run_allocates_nothing`: a second,
    // started part-way, would allocate its thread, and its first run of a
    // subscription that subscription's share of the stats' histograms.
    let bus = Bus::builder()
        .topic::<Ev>()
        .topic::<FollowUp>()
        .cpu_workers(1)
        .build()
        .expect("valid");
    let follow_ups = bus
        .subscribe::<FollowUp>()
        .capacity(EVENTS as usize)
        .stream()
        .expect("subscribed");
    (bus, follow_ups)
}

/// Publishes `EVENTS` events and takes the follow-up of each.
async fn round_trip(publisher: &Publisher<Ev>, follow_ups: &mut Subscription<FollowUp>) {
    for i in 0..EVENTS {
        publisher.publish(Ev(i)).await.expect("room");
    }
    for i in 0..EVENTS {
        assert_eq!(follow_ups.recv().await.expect("a follow-up").0, i);
    }
}

/// A publish made by a handler carries its cause in the event's metadata:
/// the event's `Arc` and one box for the metadata, two allocations, on
/// either kind of handler. The async handler's count includes the rest of
/// its run (its future, its waits), all on this thread.
#[test]
fn a_follow_up_published_by_a_handler_allocates_twice() {
    const PER_FOLLOW_UP: u64 = 2;
    // Sync: counted on the runner's thread, reported with each round's last event.
    runtime().block_on(async {
        let (bus, mut follow_ups) = follow_up_bus();
        let (done, finished) = std::sync::mpsc::sync_channel::<u64>(4);
        let _handle = {
            let bus = bus.clone();
            bus.clone()
                .subscribe::<Ev>()
                .capacity(EVENTS as usize)
                .sync(move |e| {
                    bus.try_publish(FollowUp(e.0)).expect("room");
                    if (e.0 + 1) % EVENTS == 0 {
                        let _ = done.send(ALLOCATIONS.with(Cell::get));
                    }
                })
                .expect("subscribed")
        };
        let publisher = bus.publisher::<Ev>().expect("registered");
        let mut before = 0;
        for round in 0..3u64 {
            for i in 0..EVENTS {
                publisher.publish(Ev(i)).await.expect("room");
            }
            let now = finished.recv().expect("a round handled");
            for i in 0..EVENTS {
                assert_eq!(follow_ups.recv().await.expect("a follow-up").0, i);
            }
            if round == 2 {
                let n = now - before;
                assert!(
                    n <= PER_FOLLOW_UP * EVENTS,
                    "sync: {n} allocations for {EVENTS} follow-ups"
                );
            }
            before = now;
        }
    });
    // Async: everything on this thread.
    runtime().block_on(async {
        let (bus, mut follow_ups) = follow_up_bus();
        let _handle = {
            let bus = bus.clone();
            bus.clone()
                .subscribe::<Ev>()
                .capacity(EVENTS as usize)
                .handler(move |e| {
                    let bus = bus.clone();
                    async move { bus.publish(FollowUp(e.0)).await.map(drop) }
                })
                .expect("subscribed")
        };
        let publisher = bus.publisher::<Ev>().expect("registered");
        round_trip(&publisher, &mut follow_ups).await;
        round_trip(&publisher, &mut follow_ups).await;
        // One of the three is the published event's own `Arc`.
        let n = allocations(round_trip(&publisher, &mut follow_ups)).await;
        assert!(
            n <= (PER_FOLLOW_UP + 1) * EVENTS,
            "async: {n} allocations to publish {EVENTS} events and their follow-ups"
        );
    });
}
