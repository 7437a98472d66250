//! Property tests of the delivery guarantees over random topologies:
//! publishers (1–4) with plain, cancelled and never-waiting publishes;
//! subscriptions (1–6) of every kind with random capacity (1–64), policy and
//! handler concurrency (1–3), some leaving part-way (draining or
//! discarding); a topic capacity (1–64) that sizes the topic's ring, so that
//! lossless subscriptions read the ring or, when larger, queues of their own;
//! a shutdown at a random point. For every subscription it checks:
//!
//! - no event id twice; sequence numbers (hence each publisher's events) in
//!   publish order;
//! - only accepted events arrive (never a refused or cancelled one);
//! - under `Block` and `Fail`: exactly the accepted events, with no gap, up to
//!   where it left (guarantee 1);
//! - under the lossy policies: each envelope's `missed` is exactly the number
//!   of accepted events it lost since the previous envelope, and the in-band
//!   counts plus the unreported ones equal `dropped` (guarantee 4);
//! - `accepted == delivered + dropped + discarded + cut_off + queued`, and
//!   the queue never held more than its capacity.
//!
//! Cases default to 48; set `PROPTEST_CASES` for more.

mod common;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::poll;
use proptest::prelude::*;
use tidings::error::Refusal;
use tidings::{Bus, Event, Overflow, SubscriptionStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Event)]
#[event(topic = "props.ev")]
struct Ev {
    publisher: u8,
    n: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Async,
    Sync,
}

#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Stop taking events and handle what is queued.
    Drain,
    /// Drop the subscription with what is queued (streams only).
    Discard,
}

#[derive(Debug, Clone)]
struct SubPlan {
    kind: Kind,
    /// Handler runners (1 for streams).
    concurrency: usize,
    capacity: usize,
    policy: Overflow,
    /// Leave after receiving this many events.
    leave: Option<(usize, Leave)>,
}

#[derive(Debug, Clone, Copy)]
enum How {
    Publish,
    /// Poll `publish` once, then drop it.
    Cancel,
    TryPublish,
}

#[derive(Debug, Clone)]
struct Plan {
    /// The topic's default capacity, which also sizes the ring that lossless
    /// subscriptions share: subscriptions larger than the ring get a queue of
    /// their own, so both paths are exercised.
    topic_capacity: usize,
    publishers: Vec<Vec<How>>,
    subs: Vec<SubPlan>,
    /// Shut down once this many events were accepted.
    shutdown_after: Option<usize>,
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![6 => Just(How::Publish), 1 => Just(How::Cancel), 1 => Just(How::TryPublish)]
}

fn policy() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        3 => Just(Overflow::Block),
        2 => Just(Overflow::DropOldest),
        2 => Just(Overflow::DropNewest),
        1 => Just(Overflow::Fail),
    ]
}

fn sub_plan() -> impl Strategy<Value = SubPlan> {
    (
        prop_oneof![Just(Kind::Stream), Just(Kind::Async), Just(Kind::Sync)],
        prop_oneof![3 => Just(1usize), 1 => 2usize..=3],
        1usize..=64,
        policy(),
        proptest::option::weighted(
            0.3,
            (
                0usize..80,
                prop_oneof![Just(Leave::Drain), Just(Leave::Discard)],
            ),
        ),
    )
        .prop_map(|(kind, concurrency, capacity, policy, leave)| SubPlan {
            kind,
            concurrency: if kind == Kind::Stream { 1 } else { concurrency },
            capacity,
            policy,
            // Handlers leave by draining; a discarding drop is the stream path.
            leave: leave.map(|(k, how)| match kind {
                Kind::Stream => (k, how),
                _ => (k, Leave::Drain),
            }),
        })
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        1usize..=64,
        proptest::collection::vec(proptest::collection::vec(how(), 0..120), 1..=4),
        proptest::collection::vec(sub_plan(), 1..=6),
        proptest::option::weighted(0.3, 0usize..200),
    )
        .prop_map(|(topic_capacity, publishers, subs, shutdown_after)| Plan {
            topic_capacity,
            publishers,
            subs,
            shutdown_after,
        })
}

/// One delivered envelope, as the subscriber saw it.
#[derive(Debug, Clone, Copy)]
struct Got {
    ev: Ev,
    id: u64,
    seq: u64,
    missed: u64,
}

impl Got {
    fn of(e: &tidings::Envelope<Ev>) -> Self {
        Got {
            ev: *e.event(),
            id: e.id().get(),
            seq: e.seq(),
            missed: e.missed(),
        }
    }
}

#[derive(Default)]
struct Outcome {
    /// seq -> (event, id) of every accepted publish.
    accepted: HashMap<u64, (Ev, u64)>,
    /// Events whose publish was refused or cancelled.
    not_accepted: HashSet<Ev>,
    /// Publishes refused because the bus was shutting down.
    closed: u64,
}

use common::runtime;

async fn run(plan: Plan) -> (Outcome, Vec<(SubPlan, Vec<Got>, SubscriptionStats)>, Bus) {
    let bus = Bus::builder()
        .topic_with::<Ev>(tidings::TopicConfig::default().capacity(plan.topic_capacity))
        .build()
        .unwrap();

    enum Running {
        Stream(tokio::task::JoinHandle<(Vec<Got>, SubscriptionStats)>),
        Handler {
            got: Arc<Mutex<Vec<Got>>>,
            id: u64,
            leave: tokio::task::JoinHandle<Result<SubscriptionStats, tidings::SubscriptionHandle>>,
        },
    }

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut running = Vec::new();
    for sp in &plan.subs {
        let builder = bus
            .subscribe::<Ev>()
            .capacity(sp.capacity)
            .overflow(sp.policy);
        match sp.kind {
            Kind::Stream => {
                let mut sub = builder.stream().unwrap();
                let leave = sp.leave;
                running.push(Running::Stream(tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut left = false;
                    while let Some(e) = sub.recv().await {
                        got.push(Got::of(&e));
                        match leave {
                            Some((k, Leave::Drain)) if !left && got.len() >= k => {
                                left = true;
                                sub.close();
                            }
                            Some((k, Leave::Discard)) if got.len() >= k => {
                                return (got, sub.unsubscribe());
                            }
                            _ => {}
                        }
                    }
                    (got, sub.stats())
                })));
            }
            Kind::Async | Kind::Sync => {
                let got = Arc::new(Mutex::new(Vec::new()));
                let reached = Arc::new(tokio::sync::Notify::new());
                let want = sp.leave.map(|(k, _)| k);
                let record = {
                    let (got, reached) = (Arc::clone(&got), Arc::clone(&reached));
                    move |e: tidings::Envelope<Ev>| {
                        let mut got = got.lock().unwrap();
                        got.push(Got::of(&e));
                        if Some(got.len()) == want {
                            reached.notify_one();
                        }
                    }
                };
                let builder = builder.concurrency(sp.concurrency);
                let handle = if sp.kind == Kind::Async {
                    builder
                        .handler(move |e| {
                            record(e);
                            async {}
                        })
                        .unwrap()
                } else {
                    builder.sync(record).unwrap()
                };
                let stop = Arc::clone(&stop);
                let id = handle.id().get();
                let leave = tokio::spawn(async move {
                    let Some(k) = want else {
                        stop.notified().await;
                        return Err(handle); // stays subscribed until shutdown
                    };
                    if k > 0 {
                        tokio::select! {
                            _ = reached.notified() => {}
                            // Never got that far: stays subscribed until shutdown.
                            _ = stop.notified() => return Err(handle),
                        }
                    }
                    Ok(handle.unsubscribe().await)
                });
                running.push(Running::Handler { got, id, leave });
            }
        }
    }

    let accepted_count = Arc::new(AtomicUsize::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut publishers = Vec::new();
    for (p, script) in plan.publishers.iter().enumerate() {
        let bus = bus.clone();
        let script = script.clone();
        let outcome = Arc::clone(&outcome);
        let accepted_count = Arc::clone(&accepted_count);
        publishers.push(tokio::spawn(async move {
            for (n, how) in script.into_iter().enumerate() {
                let ev = Ev {
                    publisher: p as u8,
                    n: n as u32,
                };
                let result = match how {
                    How::Publish => Some(bus.publish(ev).await),
                    How::TryPublish => Some(bus.try_publish(ev)),
                    How::Cancel => {
                        let mut fut = pin!(bus.publish(ev));
                        match poll!(fut.as_mut()) {
                            std::task::Poll::Ready(r) => Some(r),
                            std::task::Poll::Pending => None, // dropped here
                        }
                    }
                };
                let mut o = outcome.lock().unwrap();
                match result {
                    Some(Ok(r)) => {
                        assert!(
                            o.accepted.insert(r.seq, (ev, r.id.get())).is_none(),
                            "seq {} twice",
                            r.seq
                        );
                        accepted_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(Err(err)) => {
                        let closed = matches!(err.reason(), Refusal::Closed { .. });
                        assert_eq!(err.into_inner(), ev, "the refused event is handed back");
                        o.not_accepted.insert(ev);
                        if closed {
                            o.closed += 1;
                            return;
                        }
                    }
                    None => {
                        o.not_accepted.insert(ev);
                    }
                }
            }
        }));
    }

    if let Some(after) = plan.shutdown_after {
        let bus = bus.clone();
        let accepted_count = Arc::clone(&accepted_count);
        let all_done = {
            let handles: Vec<_> = publishers.iter().map(|h| h.abort_handle()).collect();
            move || handles.iter().all(|h| h.is_finished())
        };
        tokio::spawn(async move {
            while accepted_count.load(Ordering::SeqCst) < after && !all_done() {
                tokio::task::yield_now().await;
            }
            bus.shutdown(Duration::from_secs(60)).await
        });
    }

    for p in publishers {
        p.await.unwrap();
    }
    stop.notify_waiters();
    // `notify_waiters` only reaches tasks already waiting: keep notifying
    // until every controller has finished.
    let mut subs = Vec::new();
    let mut leave_results = Vec::new();
    for r in running {
        match r {
            Running::Handler { got, id, leave } => {
                while !leave.is_finished() {
                    stop.notify_waiters();
                    tokio::task::yield_now().await;
                }
                leave_results.push(Some((got, id, leave.await.unwrap())));
                subs.push(None);
            }
            Running::Stream(h) => {
                leave_results.push(None);
                subs.push(Some(h));
            }
        }
    }
    let report = bus.shutdown(Duration::from_secs(60)).await;
    let closed = outcome.lock().unwrap().closed;
    assert!(
        !report.deadline_hit && report.cut_off() == 0 && report.in_flight() == 0,
        "a generous deadline drains everything: {report}"
    );
    assert_eq!(
        report.refused(),
        closed,
        "every publish refused by the shutdown is in the report: {report}"
    );
    assert_eq!(report.is_clean(), closed == 0, "{report}");

    let mut results = Vec::new();
    for ((sp, stream), handler) in plan.subs.iter().zip(subs).zip(leave_results) {
        let (got, stats) = match (stream, handler) {
            (Some(h), _) => {
                let (got, stats) = h.await.unwrap();
                (got, stats)
            }
            (None, Some((got, id, left))) => {
                let got = got.lock().unwrap().clone();
                let stats = match left {
                    Ok(stats) => stats,
                    // Still subscribed at shutdown: its numbers are in the report.
                    Err(_handle) => report
                        .subscriptions()
                        .find(|s| s.id.get() == id)
                        .cloned()
                        .expect("subscription in the report"),
                };
                (got, stats)
            }
            (None, None) => unreachable!("every subscription is a stream or a handler"),
        };
        results.push((sp.clone(), got, stats));
    }
    let outcome = Arc::try_unwrap(outcome).ok().unwrap().into_inner().unwrap();
    (outcome, results, bus)
}

fn check(
    plan: &Plan,
    outcome: &Outcome,
    results: &[(SubPlan, Vec<Got>, SubscriptionStats)],
    bus: &Bus,
) {
    let published = bus.stats().topic("props.ev").unwrap().published;
    assert_eq!(
        published as usize,
        outcome.accepted.len(),
        "published counts accepted publishes"
    );
    // Accepted seqs are exactly 1..=published.
    for seq in 1..=published {
        assert!(
            outcome.accepted.contains_key(&seq),
            "seq {seq} missing from receipts"
        );
    }
    for (sp, got, stats) in results {
        let ctx = format!("{sp:?} {stats}");
        // Accounting.
        assert_eq!(stats.queue_depth, 0, "{ctx}");
        assert_eq!(stats.cut_off, 0, "{ctx}");
        assert_eq!(
            stats.accepted,
            stats.delivered + stats.dropped() + stats.discarded + stats.cut_off,
            "{ctx}"
        );
        assert_eq!(stats.delivered, got.len() as u64, "{ctx}");
        assert!(
            stats.high_water <= stats.capacity,
            "queue outgrew its capacity: {ctx}"
        );
        assert!(stats.accepted <= published, "{ctx}");
        if sp.leave.is_none() && plan.shutdown_after.is_none() {
            assert_eq!(stats.accepted, published, "subscribed throughout: {ctx}");
        }
        // With several handler runners, events finish in any order; they are
        // still taken in order, which the seq checks below verify once the
        // records are put back in taking order.
        let mut got = got.clone();
        if sp.concurrency > 1 {
            got.sort_by_key(|g| g.seq);
        }
        // No duplicates, order, only accepted events.
        let mut ids = HashSet::new();
        let mut last_n: HashMap<u8, u32> = HashMap::new();
        let mut prev_seq = 0;
        let mut missed_sum = 0;
        for g in &got {
            assert!(ids.insert(g.id), "event id {} twice: {ctx}", g.id);
            assert!(g.seq > prev_seq, "seq {} after {prev_seq}: {ctx}", g.seq);
            if let Some(&n) = last_n.get(&g.ev.publisher) {
                assert!(
                    g.ev.n > n,
                    "publisher {} out of order: {ctx}",
                    g.ev.publisher
                );
            }
            last_n.insert(g.ev.publisher, g.ev.n);
            assert!(
                !outcome.not_accepted.contains(&g.ev),
                "refused/cancelled {:?} delivered: {ctx}",
                g.ev
            );
            assert_eq!(outcome.accepted.get(&g.seq), Some(&(g.ev, g.id)), "{ctx}");
            assert!(
                g.seq <= stats.accepted,
                "seq outside this subscription's window: {ctx}"
            );
            // The window is seqs 1..=accepted (subscribed before any publish),
            // so the events lost between two envelopes are the seqs between.
            assert_eq!(
                g.missed,
                g.seq - prev_seq - 1,
                "in-band missed count: {ctx}"
            );
            missed_sum += g.missed;
            prev_seq = g.seq;
        }
        if sp.policy.is_lossless() {
            assert_eq!(stats.dropped(), 0, "{ctx}");
            assert_eq!(missed_sum, 0, "{ctx}");
            assert_eq!(
                stats.delivered + stats.discarded,
                stats.accepted,
                "no loss: {ctx}"
            );
            let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
            let want: Vec<u64> = (1..=stats.delivered).collect();
            assert_eq!(seqs, want, "exactly the accepted events, in order: {ctx}");
        } else {
            assert_eq!(
                missed_sum + stats.missed_unreported,
                stats.dropped(),
                "{ctx}"
            );
            assert_eq!(
                stats.accepted - prev_seq,
                stats.missed_unreported + stats.discarded,
                "what follows the last envelope is counted: {ctx}"
            );
            if sp.policy == Overflow::DropOldest {
                assert_eq!(stats.dropped_newest, 0, "{ctx}");
            } else {
                assert_eq!(stats.dropped_oldest, 0, "{ctx}");
            }
        }
        if stats.discarded > 0 {
            assert!(matches!(sp.leave, Some((_, Leave::Discard))), "{ctx}");
        }
    }
}

fn cases() -> u32 {
    common::cases(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn delivery_guarantees_hold(plan in plan()) {
        let (outcome, results, bus) = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(120), run(plan.clone()))
                .await
                .expect("a case finishes (no deadlock)")
        });
        check(&plan, &outcome, &results, &bus);
        if std::env::var("PROPS_DEBUG").is_ok() {
            let dropped: u64 = results.iter().map(|r| r.2.dropped()).sum();
            let discarded: u64 = results.iter().map(|r| r.2.discarded).sum();
            let delivered: u64 = results.iter().map(|r| r.2.delivered).sum();
            eprintln!("accepted {} refused {} delivered {delivered} dropped {dropped} discarded {discarded}", outcome.accepted.len(), outcome.not_accepted.len());
        }
    }
}
