//! Property test of guarantee 8, user code is a guest: random `on_done`
//! callbacks, handlers and event `Drop`s that panic, block briefly, read the
//! stats, publish, subscribe and unsubscribe, and shut the bus down, at
//! random points and under every overflow policy. For every case:
//!
//! - nothing deadlocks: the case, its shutdown and the settling of every
//!   `on_done` finish within a generous bound of the harness;
//! - every subscription's numbers satisfy the identities of the stats
//!   (`accepted == delivered + dropped + discarded + cut_off + queued`, and
//!   for handlers `delivered == handled + dead_lettered + in_flight +
//!   cancelled`);
//! - every accepted event's `on_done` runs exactly once (a panicking one
//!   included: it is entered once, and its panic is counted by the topic),
//!   and never one of a refused publish;
//! - the panics of `on_done` callbacks are all counted by the bus.
//!
//! Cases default to 24; set `PROPTEST_CASES` for more.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use tidings::{Bus, Event, Overflow, PublishOptions, RetryPolicy, TopicConfig};

/// What a callback, a handler or an event's `Drop` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Nothing,
    Panic,
    /// Reads the whole bus's stats (takes every topic's lock).
    Stats,
    /// Publishes a note on another topic, without waiting.
    Publish,
    /// Subscribes to the notes and drops the subscription at once.
    Subscribe,
    /// Sleeps a little: 1 ms (sync code) or 2 ms (an async handler).
    Block,
    /// Handlers only: fails the attempt.
    Fail,
    /// Async handlers only: shuts the bus down from inside, with this
    /// deadline in milliseconds.
    Shutdown(u64),
}

#[derive(Event)]
#[event(topic = "guest.ev")]
struct Ev {
    n: u32,
    on_drop: Act,
    bus: Option<Bus>,
}

impl Drop for Ev {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.take() {
            // Never a panic here: the test's own readers drop envelopes, and
            // a panic there would be the test's, not the bus's.
            act(
                &bus,
                if self.on_drop == Act::Panic {
                    Act::Stats
                } else {
                    self.on_drop
                },
            );
        }
    }
}

#[derive(Debug, Event)]
#[event(topic = "guest.note")]
struct Note;

/// Does `what`, as sync code: with no runtime needed.
fn act(bus: &Bus, what: Act) {
    match what {
        Act::Nothing | Act::Fail | Act::Shutdown(_) => {}
        Act::Panic => panic!("a guest panicked"),
        Act::Stats => {
            let stats = bus.stats();
            assert!(stats.topic("guest.ev").is_some());
        }
        Act::Publish => {
            let _ = bus.try_publish(Note);
        }
        Act::Subscribe => {
            if let Ok(sub) = bus.subscribe::<Note>().capacity(1).stream() {
                drop(sub);
            }
        }
        Act::Block => std::thread::sleep(Duration::from_millis(1)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Async,
    Sync,
}

#[derive(Debug, Clone)]
struct SubPlan {
    kind: Kind,
    capacity: usize,
    policy: Overflow,
    concurrency: usize,
    attempts: u32,
    /// What the handler does with event `n`: `acts[n % len]`.
    acts: Vec<Act>,
    /// Streams: drop the stream (discarding the rest) after this many.
    reads: Option<usize>,
}

#[derive(Debug, Clone)]
struct Pub {
    on_done: Option<Act>,
    on_drop: Act,
}

#[derive(Debug, Clone)]
struct Plan {
    retain: usize,
    dead_letters_retain: usize,
    subs: Vec<SubPlan>,
    publishes: Vec<Pub>,
    /// Shut down after this many publishes, with this deadline (ms).
    shutdown_at: usize,
    deadline_ms: u64,
}

fn guest_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        3 => Just(Act::Nothing),
        1 => Just(Act::Panic),
        1 => Just(Act::Stats),
        1 => Just(Act::Publish),
        1 => Just(Act::Subscribe),
        1 => Just(Act::Block),
    ]
}

fn handler_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => guest_act(),
        1 => Just(Act::Fail),
        1 => (0u64..30).prop_map(Act::Shutdown),
    ]
}

fn policy() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        Just(Overflow::Block),
        Just(Overflow::Fail),
        Just(Overflow::DropOldest),
        Just(Overflow::DropNewest),
    ]
}

fn sub_plan() -> impl Strategy<Value = SubPlan> {
    (
        prop_oneof![Just(Kind::Stream), Just(Kind::Async), Just(Kind::Sync)],
        1usize..8,
        policy(),
        1usize..4,
        1u32..3,
        prop::collection::vec(handler_act(), 1..6),
        prop::option::of(0usize..20),
    )
        .prop_map(
            |(kind, capacity, policy, concurrency, attempts, acts, reads)| SubPlan {
                kind,
                capacity,
                policy,
                concurrency: if kind == Kind::Stream { 1 } else { concurrency },
                attempts,
                acts,
                reads: if kind == Kind::Stream { reads } else { None },
            },
        )
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        0usize..4,
        0usize..3,
        prop::collection::vec(sub_plan(), 1..5),
        prop::collection::vec(
            (prop::option::of(guest_act()), guest_act())
                .prop_map(|(on_done, on_drop)| Pub { on_done, on_drop }),
            1..40,
        ),
        0usize..40,
        prop_oneof![0u64..20, Just(5_000)],
    )
        .prop_map(
            |(retain, dead_letters_retain, subs, publishes, shutdown_at, deadline_ms)| Plan {
                retain,
                dead_letters_retain,
                subs,
                shutdown_at: shutdown_at.min(publishes.len()),
                publishes,
                deadline_ms,
            },
        )
}

/// How each publish went, and every `on_done` run, by event number.
#[derive(Default)]
struct Ledger {
    accepted: Mutex<Vec<u32>>,
    with_on_done: Mutex<HashMap<u32, Act>>,
    done_runs: Mutex<HashMap<u32, u32>>,
}

async fn run_case(plan: Plan) -> Result<(), TestCaseError> {
    let bus = Bus::builder()
        .topic_with::<Ev>(TopicConfig::default().retain(plan.retain))
        .topic::<Note>()
        .dead_letters(TopicConfig::default().retain(plan.dead_letters_retain))
        .build()
        .expect("valid");
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    for (i, sp) in plan.subs.iter().enumerate() {
        let builder = bus
            .subscribe::<Ev>()
            .name(format!("sub-{i}"))
            .capacity(sp.capacity)
            .overflow(sp.policy);
        let acts = Arc::new(sp.acts.clone());
        match sp.kind {
            Kind::Stream => {
                let mut stream = builder.stream().expect("subscribed");
                let reads = sp.reads;
                readers.push(tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(env) = stream.recv().await {
                        drop(env);
                        n += 1;
                        if reads == Some(n) {
                            return; // dropped: the rest is discarded
                        }
                    }
                }));
            }
            Kind::Async => {
                let b = bus.clone();
                let handle = builder
                    .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(sp.attempts))
                    .concurrency(sp.concurrency)
                    .handler(move |e| {
                        let (bus, what) = (b.clone(), acts[e.n as usize % acts.len()]);
                        async move {
                            match what {
                                Act::Fail => return Err("failed"),
                                Act::Block => tokio::time::sleep(Duration::from_millis(2)).await,
                                Act::Shutdown(ms) => {
                                    bus.shutdown(Duration::from_millis(ms)).await;
                                }
                                other => act(&bus, other),
                            }
                            Ok(())
                        }
                    })
                    .expect("subscribed");
                handles.push(handle);
            }
            Kind::Sync => {
                let b = bus.clone();
                let handle = builder
                    .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(sp.attempts))
                    .concurrency(sp.concurrency)
                    .sync(move |e| match acts[e.n as usize % acts.len()] {
                        Act::Fail => Err("failed"),
                        other => {
                            act(&b, other);
                            Ok(())
                        }
                    })
                    .expect("subscribed");
                handles.push(handle);
            }
        }
    }
    let ledger = Arc::new(Ledger::default());
    let done_panics = Arc::new(AtomicU64::new(0));
    let mut report = None;
    for (n, p) in plan.publishes.iter().enumerate() {
        if n == plan.shutdown_at {
            report = Some(bus.shutdown(Duration::from_millis(plan.deadline_ms)).await);
        }
        let n = u32::try_from(n).expect("few publishes");
        let ev = Ev {
            n,
            on_drop: p.on_drop,
            bus: Some(bus.clone()),
        };
        let mut options = PublishOptions::new();
        if let Some(what) = p.on_done {
            let (bus, ledger, panics) =
                (bus.clone(), Arc::clone(&ledger), Arc::clone(&done_panics));
            options = options.on_done(move || {
                *ledger.done_runs.lock().unwrap().entry(n).or_default() += 1;
                if what == Act::Panic {
                    panics.fetch_add(1, Ordering::SeqCst);
                }
                act(&bus, what);
            });
        }
        // A Block subscription that is full waits; one whose stream was
        // dropped no longer holds anyone back. Bounded, so that a case that
        // stalls fails instead of hanging.
        match tokio::time::timeout(Duration::from_secs(30), bus.publish_with(ev, options)).await {
            Err(_) => return Err(TestCaseError::fail(format!("publish {n} stalled"))),
            Ok(Ok(_receipt)) => {
                ledger.accepted.lock().unwrap().push(n);
                if let Some(what) = p.on_done {
                    ledger.with_on_done.lock().unwrap().insert(n, what);
                }
            }
            Ok(Err(_refused)) => {}
        }
    }
    let last = bus.shutdown(Duration::from_millis(plan.deadline_ms)).await;
    let report = report.unwrap_or(last);
    for reader in readers {
        reader.await.expect("a reader ended");
    }
    let stats = bus.stats();
    for s in stats.subscriptions().filter(|s| s.topic == "guest.ev") {
        prop_assert_eq!(
            s.accepted,
            s.delivered + s.dropped() + s.discarded + s.cut_off + s.queue_depth as u64,
            "{}",
            s
        );
        if s.kind != tidings::SubscriberKind::Stream {
            prop_assert_eq!(
                s.delivered,
                s.handled + s.dead_lettered + s.in_flight as u64 + s.cancelled,
                "{}",
                s
            );
        }
    }
    let _ = report;
    drop(handles);
    // Every accepted event with an `on_done` is done once its subscriptions
    // are (sync runs the deadline could not stop finish on their own).
    let expected: HashMap<u32, Act> = ledger.with_on_done.lock().unwrap().clone();
    let mut waited = Duration::ZERO;
    loop {
        let runs = ledger.done_runs.lock().unwrap().clone();
        // A panicking `on_done` is counted by the bus once it has unwound,
        // a moment after it was entered.
        let counted = bus
            .stats()
            .topic("guest.ev")
            .expect("registered")
            .callback_panics;
        let settled = counted == done_panics.load(Ordering::SeqCst);
        if settled && expected.keys().all(|n| runs.get(n) == Some(&1)) {
            for (n, count) in &runs {
                prop_assert!(
                    expected.contains_key(n),
                    "on_done of refused publish {} ran",
                    n
                );
                prop_assert_eq!(*count, 1, "on_done of {} ran {} times", n, count);
            }
            break;
        }
        for (n, count) in &runs {
            prop_assert!(*count <= 1, "on_done of {} ran {} times", n, count);
        }
        if waited > Duration::from_secs(30) {
            let missing: Vec<_> = expected.keys().filter(|n| !runs.contains_key(n)).collect();
            return Err(TestCaseError::fail(format!(
                "on_done never ran for {missing:?}, or its panics were not all counted \
                 ({counted} of {})\n{}",
                done_panics.load(Ordering::SeqCst),
                bus.stats()
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        waited += Duration::from_millis(2);
    }
    let counted = bus
        .stats()
        .topic("guest.ev")
        .expect("registered")
        .callback_panics;
    prop_assert_eq!(
        counted,
        done_panics.load(Ordering::SeqCst),
        "on_done panics counted"
    );
    if std::env::var("PROPS_DEBUG").is_ok() {
        let t = bus.stats();
        let t = t.topic("guest.ev").expect("registered");
        eprintln!(
            "accepted {} of {}, on_done {}, panics {counted}, subs {}, delivered {}, handled {}, dead {}, cut {}",
            ledger.accepted.lock().unwrap().len(),
            plan.publishes.len(),
            expected.len(),
            plan.subs.len(),
            t.subscriptions.iter().chain(&t.draining).map(|s| s.delivered).sum::<u64>(),
            t.subscriptions.iter().chain(&t.draining).map(|s| s.handled).sum::<u64>(),
            t.subscriptions.iter().chain(&t.draining).map(|s| s.dead_lettered).sum::<u64>(),
            t.subscriptions.iter().chain(&t.draining).map(|s| s.cut_off).sum::<u64>(),
        );
    }
    Ok(())
}

use common::runtime;

fn cases() -> u32 {
    common::cases(24)
}

/// The panics this test makes on purpose are reported by the bus; the
/// default hook's messages would only bury a real failure.
fn quiet_guest_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guest = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| *m == "a guest panicked");
            if !guest {
                default(info);
            }
        }));
    });
}

static RUNS: AtomicU32 = AtomicU32::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn user_code_never_wedges_the_bus_and_every_event_is_accounted_for(plan in plan()) {
        quiet_guest_panics();
        RUNS.fetch_add(1, Ordering::Relaxed);
        runtime().block_on(async {
            match tokio::time::timeout(Duration::from_secs(120), run_case(plan)).await {
                Ok(result) => result,
                Err(_) => Err(TestCaseError::fail("the case deadlocked")),
            }
        })?;
    }
}
