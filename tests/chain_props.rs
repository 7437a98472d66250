//! Property test of shutdown with chains of handlers across topics: a root
//! event on `chain.s0` is handled by a handler that publishes its follow-on
//! on `chain.s1`, and so on down a random number of stages to a sink; some
//! handlers fail for some roots (their event becomes a dead letter). The
//! bus shuts down at a random point, with a deadline that is sometimes too
//! short.
//!
//! Each accepted root is one token travelling down its chain; at any moment
//! it is queued in one stage, in one handler run, completed at the sink, or
//! given up as a dead letter. The test checks, for every case:
//!
//! - **never neither**: every root accepted before shutdown either completed
//!   its whole chain or shows up in the report: cut off, in a run left
//!   unfinished, or dead-lettered (during the drain, named in the report's
//!   loose ends; before it, in its stats);
//! - with time enough, every accepted root completed or was dead-lettered,
//!   and the report is clean exactly when nothing was refused or
//!   dead-lettered during the drain;
//! - once everything has stopped, tokens are conserved: accepted roots ==
//!   completed + dead-lettered + cut off + runs left unfinished;
//! - no root completes twice, and only accepted roots complete.
//!
//! Cases default to 32; set `PROPTEST_CASES` for more.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tidings::{Bus, BusStats, Event, ShutdownReport, SubscriberKind};

macro_rules! stages {
    ($($name:ident = $topic:literal),*) => {
        $(
            #[derive(Debug, Clone, Copy, Event)]
            #[event(topic = $topic)]
            struct $name(u64);
        )*
    };
}
stages!(
    S0 = "chain.s0",
    S1 = "chain.s1",
    S2 = "chain.s2",
    S3 = "chain.s3"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Async,
    Sync,
}

#[derive(Debug, Clone)]
struct Stage {
    kind: Kind,
    capacity: usize,
    concurrency: usize,
    /// The handler fails for roots with `root % fail_mod == fail_at`.
    fail: Option<(u64, u64)>,
    /// Work per event, in microseconds.
    work_us: u64,
}

#[derive(Debug, Clone)]
struct Plan {
    /// Handler stages before the sink (1..=3): s0 → … → the sink's topic.
    stages: Vec<Stage>,
    /// The sink reads the last topic as a stream (else a sync handler).
    stream_sink: bool,
    roots: u64,
    /// Shut down once this many roots were accepted.
    shutdown_after: u64,
    deadline: Duration,
}

fn stage() -> impl Strategy<Value = Stage> {
    (
        prop_oneof![Just(Kind::Async), Just(Kind::Sync)],
        1usize..=16,
        prop_oneof![3 => Just(1usize), 1 => 2usize..=3],
        proptest::option::weighted(0.3, (2u64..=7, 0u64..2)),
        prop_oneof![2 => Just(0u64), 1 => Just(50u64), 1 => Just(300u64)],
    )
        .prop_map(|(kind, capacity, concurrency, fail, work_us)| Stage {
            kind,
            capacity,
            concurrency,
            fail,
            work_us,
        })
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        proptest::collection::vec(stage(), 1..=3),
        any::<bool>(),
        1u64..=150,
        0u64..=150,
        prop_oneof![
            1 => Just(Duration::from_millis(1)),
            1 => Just(Duration::from_millis(20)),
            3 => Just(Duration::from_secs(60)),
        ],
    )
        .prop_map(|(stages, stream_sink, roots, after, deadline)| Plan {
            stages,
            stream_sink,
            roots,
            shutdown_after: after.min(roots),
            deadline,
        })
}

use common::runtime;

/// Subscribes stage `k` of the chain: handles `From`, publishes `To`.
fn link<From, To>(bus: &Bus, k: usize, stage: &Stage, wrap: fn(u64) -> To, root: fn(&From) -> u64)
where
    From: Event,
    To: Event,
{
    let fails = stage.fail;
    let work = Duration::from_micros(stage.work_us);
    let failing = move |r: u64| fails.is_some_and(|(m, at)| r % m == at);
    let builder = bus
        .subscribe::<From>()
        .name(format!("stage{k}"))
        .capacity(stage.capacity)
        .concurrency(stage.concurrency);
    let b = bus.clone();
    match stage.kind {
        Kind::Async => builder
            .handler(move |e| {
                let b = b.clone();
                let r = root(&e);
                async move {
                    if work.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(work).await;
                    }
                    if failing(r) {
                        return Err("this root fails here".to_owned());
                    }
                    b.publish(wrap(r))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .map(std::mem::forget)
            .unwrap(),
        Kind::Sync => builder
            .sync(move |e| {
                let r = root(&e);
                std::thread::sleep(work);
                if failing(r) {
                    return Err("this root fails here".to_owned());
                }
                futures::executor::block_on(b.publish(wrap(r)))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .map(std::mem::forget)
            .unwrap(),
    }
}

struct Outcome {
    accepted: HashSet<u64>,
    completed: Vec<u64>,
    report: ShutdownReport,
    /// Once every runner has stopped.
    settled: BusStats,
}

async fn run(plan: Plan) -> Outcome {
    // Sync stages wait (`block_on`) for room downstream while they hold a
    // worker of the CPU pool: the pool needs a worker for every sync runner
    // (3 stages of up to 3, and the sink), or a full stage waits forever
    // for a worker its upstream holds (see `HandlerBuilder::sync`).
    let bus = Bus::builder()
        .topic::<S0>()
        .topic::<S1>()
        .topic::<S2>()
        .topic::<S3>()
        .cpu_workers(10)
        .build()
        .unwrap();
    for (k, stage) in plan.stages.iter().enumerate() {
        match k {
            0 => link::<S0, S1>(&bus, k, stage, S1, |e| e.0),
            1 => link::<S1, S2>(&bus, k, stage, S2, |e| e.0),
            _ => link::<S2, S3>(&bus, k, stage, S3, |e| e.0),
        }
    }
    // The sink reads the topic after the last stage.
    let completed = Arc::new(Mutex::new(Vec::new()));
    let sink_topic = plan.stages.len();
    let record = {
        let completed = Arc::clone(&completed);
        move |r: u64| completed.lock().unwrap().push(r)
    };
    let sink_task = if plan.stream_sink {
        macro_rules! stream_sink {
            ($ty:ty) => {{
                let mut sub = bus.subscribe::<$ty>().name("sink").stream().unwrap();
                tokio::spawn(async move {
                    while let Some(e) = sub.recv().await {
                        record(e.0);
                    }
                    sub.stats()
                })
            }};
        }
        Some(match sink_topic {
            1 => stream_sink!(S1),
            2 => stream_sink!(S2),
            _ => stream_sink!(S3),
        })
    } else {
        macro_rules! handler_sink {
            ($ty:ty) => {{
                let h = bus
                    .subscribe::<$ty>()
                    .name("sink")
                    .sync(move |e| record(e.0))
                    .unwrap();
                std::mem::forget(h);
            }};
        }
        match sink_topic {
            1 => handler_sink!(S1),
            2 => handler_sink!(S2),
            _ => handler_sink!(S3),
        }
        None
    };

    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (bus, accepted, count) = (bus.clone(), Arc::clone(&accepted), Arc::clone(&count));
        tokio::spawn(async move {
            for r in 0..plan.roots {
                match bus.publish(S0(r)).await {
                    Ok(_) => {
                        accepted.lock().unwrap().insert(r);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return, // refused: shutting down
                }
            }
        })
    };
    while count.load(Ordering::SeqCst) < plan.shutdown_after && !publisher.is_finished() {
        tokio::task::yield_now().await;
    }
    let report = bus.shutdown(plan.deadline).await;
    publisher.await.unwrap();
    if let Some(sink) = sink_task {
        sink.await.unwrap();
    }
    // Sync runs cannot be cancelled: let them finish before the final count.
    let guard = std::time::Instant::now();
    let settled = loop {
        let stats = bus.stats();
        let running = stats
            .subscriptions()
            .any(|s| s.kind == SubscriberKind::Sync && s.in_flight > 0);
        if !running {
            break stats;
        }
        assert!(
            guard.elapsed() < Duration::from_secs(60),
            "sync runs never ended"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let accepted = accepted.lock().unwrap().clone();
    let completed = completed.lock().unwrap().clone();
    Outcome {
        accepted,
        completed,
        report,
        settled,
    }
}

fn chain(stats: &BusStats) -> impl Iterator<Item = &tidings::SubscriptionStats> {
    stats
        .subscriptions()
        .filter(|s| s.topic.starts_with("chain."))
}

fn check(plan: &Plan, o: &Outcome) {
    let report = &o.report;
    let ctx = format!("{plan:?}\n{report}");
    // No root twice, only accepted roots.
    let done: HashSet<u64> = o.completed.iter().copied().collect();
    assert_eq!(
        done.len(),
        o.completed.len(),
        "a root completed twice: {ctx}"
    );
    assert!(
        done.is_subset(&o.accepted),
        "an unaccepted root completed: {ctx}"
    );
    let accepted = o.accepted.len() as u64;
    let sink = |stats: &BusStats| {
        let s = stats
            .subscriptions()
            .find(|s| s.name == "sink")
            .expect("the sink");
        if plan.stream_sink {
            s.delivered
        } else {
            s.handled
        }
    };
    // Never neither: what did not complete by the report is named in it.
    let completed_then = sink(&report.stats);
    let dead_then: u64 = chain(&report.stats).map(|s| s.dead_lettered).sum();
    let named = report.cut_off() + report.in_flight() + dead_then;
    assert!(
        accepted - completed_then <= named,
        "{} accepted root(s) neither completed nor named: {ctx}",
        accepted - completed_then - named.min(accepted - completed_then)
    );
    if accepted > completed_then + dead_then {
        assert!(!report.is_clean(), "lost roots under a clean report: {ctx}");
    }
    if !report.deadline_hit {
        assert_eq!(report.cut_off() + report.in_flight(), 0, "{ctx}");
        assert_eq!(completed_then + dead_then, accepted, "{ctx}");
        assert_eq!(
            report.is_clean(),
            report.refused() == 0 && report.dead_lettered_in_drain() == 0,
            "{ctx}"
        );
    }
    // Conservation, once everything has stopped.
    let s = &o.settled;
    let dead: u64 = chain(s).map(|s| s.dead_lettered).sum();
    let cut: u64 = chain(s).map(|s| s.cut_off).sum();
    let unfinished: u64 = chain(s).map(|s| s.in_flight as u64 + s.cancelled).sum();
    assert_eq!(
        accepted,
        sink(s) + dead + cut + unfinished,
        "tokens conserved (completed {} dead {dead} cut {cut} unfinished {unfinished}): {ctx}\n{s}",
        sink(s)
    );
    assert_eq!(sink(s), o.completed.len() as u64, "{ctx}");
}

fn cases() -> u32 {
    common::cases(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_root_completes_or_is_named_in_the_report(plan in plan()) {
        let outcome = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(120), run(plan.clone()))
                .await
                .expect("a case finishes (no deadlock)")
        });
        check(&plan, &outcome);
        if std::env::var("PROPS_DEBUG").is_ok() {
            let r = &outcome.report;
            eprintln!(
                "accepted {} completed {} deadline_hit {} cut {} unfinished {} refused {} dead_in_drain {}",
                outcome.accepted.len(), outcome.completed.len(), r.deadline_hit,
                r.cut_off(), r.in_flight(), r.refused(), r.dead_lettered_in_drain()
            );
        }
    }
}
