//! Property tests of the reliability guarantees:
//!
//! - **retries and dead letters**: random handler failure and panic patterns
//!   under random retry policies (1–4 attempts), kinds, concurrency and
//!   circuit breakers → every event is either handled successfully exactly
//!   once or dead-lettered exactly once, after exactly the attempts its
//!   pattern says, with every attempt counted; with one runner, events
//!   finish in publish order;
//! - **idempotency keys**: random keys from racing publishers → each distinct
//!   key delivered exactly once, every duplicate naming the one original;
//!   and for one publisher with a small count window, each receipt is what a
//!   model of the window predicts;
//! - **replay hand-over**: a subscription starting at a random point of the
//!   retained log while publishers run → the sequence numbers it sees are
//!   exactly the contiguous range from its start, no gap, no duplicate, and
//!   what it was told is unrecoverable is exactly what is missing.
//!
//! Cases default to 32; set `PROPTEST_CASES` for more.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use proptest::prelude::*;
use tidings::{BreakerPolicy, Bus, Event, PublishOptions, RetryPolicy, StartAt, TopicConfig};

#[derive(Debug, Event)]
#[event(topic = "props.job")]
struct Job {
    n: u64,
}

fn cases() -> u32 {
    common::cases(32)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Panics are part of the plan: keep them off stderr.
fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Ok,
    Err,
    Panic,
}

/// What attempt `attempt` of event `n` does, for a subscription's `seed`
/// and failure rate (percent).
fn attempt_outcome(seed: u64, rate: u64, n: u64, attempt: u32) -> Attempt {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(attempt) << 40);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 29;
    if z % 100 >= rate {
        Attempt::Ok
    } else if (z >> 8) % 4 == 0 {
        Attempt::Panic
    } else {
        Attempt::Err
    }
}

#[derive(Debug, Clone)]
struct RetrySub {
    sync: bool,
    concurrency: usize,
    attempts: u32,
    seed: u64,
    rate: u64,
    breaker: Option<u32>,
}

fn retry_sub() -> impl Strategy<Value = RetrySub> {
    (
        any::<bool>(),
        1usize..=3,
        1u32..=4,
        any::<u64>(),
        prop_oneof![Just(0u64), 10u64..60, Just(100u64)],
        prop::option::of(1u32..=3),
    )
        .prop_map(
            |(sync, concurrency, attempts, seed, rate, breaker)| RetrySub {
                sync,
                concurrency,
                attempts,
                seed,
                rate,
                breaker,
            },
        )
}

/// What a subscription's handler saw: `(n, attempt, outcome)` per attempt,
/// and the order in which events finished (succeeded or failed for good).
#[derive(Default)]
struct Seen {
    attempts: Vec<(u64, u32, Attempt)>,
    finished: Vec<u64>,
}

async fn run_retries(events: u64, plan: Vec<RetrySub>) {
    let bus = Bus::builder().topic::<Job>().build().expect("bus");
    let mut dead = bus.dead_letters().stream().expect("dead letters");
    let mut subs = Vec::new();
    for (i, sp) in plan.iter().enumerate() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let log = Arc::clone(&seen);
        let sp2 = sp.clone();
        let handle = move |n: u64, attempt: u32| -> Result<(), String> {
            let outcome = attempt_outcome(sp2.seed, sp2.rate, n, attempt);
            let mut seen = log.lock().expect("log");
            seen.attempts.push((n, attempt, outcome));
            if outcome == Attempt::Ok || attempt == sp2.attempts {
                seen.finished.push(n);
            }
            drop(seen);
            match outcome {
                Attempt::Ok => Ok(()),
                Attempt::Err => Err(format!("err {n}/{attempt}")),
                Attempt::Panic => panic!("panic {n}/{attempt}"),
            }
        };
        let mut builder = bus
            .subscribe::<Job>()
            .name(format!("sub{i}"))
            .concurrency(sp.concurrency)
            .retry(RetryPolicy::fixed(Duration::from_micros(200)).max_attempts(sp.attempts));
        if let Some(threshold) = sp.breaker {
            builder =
                builder.circuit_breaker(BreakerPolicy::new(threshold, Duration::from_millis(1)));
        }
        let handle = if sp.sync {
            builder.sync(move |e| handle(e.n, e.attempt()))
        } else {
            let handle = Arc::new(handle);
            builder.handler(move |e| {
                let handle = Arc::clone(&handle);
                async move { handle(e.n, e.attempt()) }
            })
        }
        .expect("subscribe");
        subs.push((handle, seen));
    }
    for n in 1..=events {
        bus.publish(Job { n }).await.expect("publish");
    }
    let mut finals = Vec::new();
    for (handle, seen) in subs {
        finals.push((handle.unsubscribe().await, seen));
    }
    // Every dead letter was published before its event counted as done.
    let mut letters: HashMap<String, Vec<(u64, u32, String)>> = HashMap::new();
    while let Ok(letter) = dead.try_recv() {
        let n = letter.event.downcast_ref::<Job>().expect("a Job").n;
        letters
            .entry(letter.subscription.clone())
            .or_default()
            .push((n, letter.attempts, letter.error.clone()));
    }

    for (i, (sp, (stats, seen))) in plan.iter().zip(&finals).enumerate() {
        let ctx = format!("sub{i} {sp:?} {stats:?}");
        let seen = seen.lock().expect("log");
        let letters = letters.remove(&format!("sub{i}")).unwrap_or_default();
        let mut handled = HashSet::new();
        let mut attempts_made = 0u64;
        let mut failed = 0u64;
        let mut panics = 0u64;
        for n in 1..=events {
            let mut runs: Vec<(u32, Attempt)> = seen
                .attempts
                .iter()
                .filter(|(m, ..)| *m == n)
                .map(|&(_, a, o)| (a, o))
                .collect();
            runs.sort_by_key(|r| r.0);
            // Attempts 1, 2, … each once, each doing what the pattern says,
            // and none after the first success or past the policy's bound.
            let expected: Vec<(u32, Attempt)> = (1..=sp.attempts)
                .map(|a| (a, attempt_outcome(sp.seed, sp.rate, n, a)))
                .scan(false, |done, run| {
                    if *done {
                        return None;
                    }
                    *done = run.1 == Attempt::Ok;
                    Some(run)
                })
                .collect();
            assert_eq!(runs, expected, "event {n}: {ctx}");
            attempts_made += runs.len() as u64;
            failed += runs.iter().filter(|r| r.1 == Attempt::Err).count() as u64;
            panics += runs.iter().filter(|r| r.1 == Attempt::Panic).count() as u64;
            let succeeded = runs.last().is_some_and(|r| r.1 == Attempt::Ok);
            let lettered: Vec<_> = letters.iter().filter(|l| l.0 == n).collect();
            if succeeded {
                assert!(
                    lettered.is_empty(),
                    "event {n} handled and dead-lettered: {ctx}"
                );
                handled.insert(n);
            } else {
                assert_eq!(lettered.len(), 1, "event {n} dead-lettered once: {ctx}");
                assert_eq!(lettered[0].1, sp.attempts, "{ctx}");
                let last = runs.last().expect("ran").1;
                let prefix = if last == Attempt::Panic {
                    "panic: "
                } else {
                    ""
                };
                assert_eq!(
                    lettered[0].2,
                    format!(
                        "{prefix}{} {n}/{}",
                        if last == Attempt::Panic {
                            "panic"
                        } else {
                            "err"
                        },
                        sp.attempts
                    ),
                    "{ctx}"
                );
            }
        }
        assert_eq!(stats.delivered, events, "{ctx}");
        assert_eq!(stats.handled, handled.len() as u64, "{ctx}");
        assert_eq!(stats.dead_lettered, letters.len() as u64, "{ctx}");
        assert_eq!(stats.handled + stats.dead_lettered, events, "{ctx}");
        assert_eq!(stats.retried, attempts_made - events, "{ctx}");
        assert_eq!((stats.failures, stats.panics), (failed, panics), "{ctx}");
        assert_eq!(
            (stats.in_flight, stats.dead_letters_unheard),
            (0, 0),
            "{ctx}"
        );
        if sp.concurrency == 1 {
            let order: Vec<u64> = (1..=events).collect();
            assert_eq!(seen.finished, order, "one runner keeps order: {ctx}");
        }
    }
}

#[derive(Debug, Clone)]
struct KeyPlan {
    /// Per publisher: the key index of each publish (`None`: no key).
    publishers: Vec<Vec<Option<u8>>>,
}

fn key_plan() -> impl Strategy<Value = KeyPlan> {
    prop::collection::vec(
        prop::collection::vec(prop::option::weighted(0.8, 0u8..8), 1..30),
        1..=3,
    )
    .prop_map(|publishers| KeyPlan { publishers })
}

async fn run_keys(plan: KeyPlan) {
    let bus = Bus::builder().topic::<Job>().build().expect("bus");
    let mut sub = bus.subscribe::<Job>().capacity(4096).stream().expect("sub");
    let tasks: Vec<_> = plan
        .publishers
        .iter()
        .enumerate()
        .map(|(p, keys)| {
            let bus = bus.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut receipts = Vec::new();
                for (i, k) in keys.into_iter().enumerate() {
                    let n = (p as u64) << 32 | i as u64;
                    let options = match k {
                        Some(k) => PublishOptions::new().idempotency_key(format!("key-{k}")),
                        None => PublishOptions::new(),
                    };
                    let receipt = bus.publish_with(Job { n }, options).await.expect("publish");
                    receipts.push((k, receipt));
                    tokio::task::yield_now().await;
                }
                receipts
            })
        })
        .collect();
    let mut originals: HashMap<u8, tidings::EventId> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut unkeyed = 0;
    for t in tasks {
        for (k, receipt) in t.await.expect("publisher") {
            match (k, receipt.duplicate) {
                (None, dup) => {
                    assert!(dup.is_none(), "an unkeyed publish is never a duplicate");
                    unkeyed += 1;
                }
                (Some(k), None) => {
                    let before = originals.insert(k, receipt.id);
                    assert!(before.is_none(), "key {k} accepted twice");
                }
                (Some(k), Some(d)) => duplicates.push((k, d.original)),
            }
        }
    }
    for (k, original) in duplicates {
        assert_eq!(originals.get(&k), Some(&original), "duplicate of key {k}");
    }
    sub.close();
    let mut delivered: HashMap<Option<String>, usize> = HashMap::new();
    while let Some(e) = sub.recv().await {
        *delivered
            .entry(e.idempotency_key().map(str::to_owned))
            .or_default() += 1;
    }
    assert_eq!(delivered.remove(&None).unwrap_or(0), unkeyed);
    assert_eq!(delivered.len(), originals.len());
    assert!(delivered.values().all(|&c| c == 1), "{delivered:?}");
}

async fn run_window(window: usize, keys: Vec<u8>) {
    let bus = Bus::builder()
        .topic_with::<Job>(
            TopicConfig::default().dedup(tidings::DedupWindow::new().max_keys(window)),
        )
        .build()
        .expect("bus");
    let mut model: VecDeque<u8> = VecDeque::new();
    for (i, k) in keys.into_iter().enumerate() {
        let options = PublishOptions::new().idempotency_key(format!("key-{k}"));
        let receipt = bus
            .publish_with(Job { n: i as u64 }, options)
            .await
            .expect("publish");
        let expect_duplicate = model.contains(&k);
        assert_eq!(
            receipt.is_duplicate(),
            expect_duplicate,
            "publish {i} key {k} window {model:?}"
        );
        if !expect_duplicate {
            model.push_back(k);
            if model.len() > window {
                model.pop_front();
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ReplayPlan {
    retain: usize,
    publishers: usize,
    per_publisher: u64,
    /// Yields before subscribing, so the start falls anywhere in the run.
    delay: usize,
    start: StartKind,
}

#[derive(Debug, Clone, Copy)]
enum StartKind {
    Earliest,
    Last(u64),
    /// This many back from the topic's next seq when looked at.
    Back(u64),
}

fn replay_plan() -> impl Strategy<Value = ReplayPlan> {
    (
        1usize..40,
        1usize..=3,
        1u64..60,
        0usize..80,
        prop_oneof![
            Just(StartKind::Earliest),
            (0u64..60).prop_map(StartKind::Last),
            (0u64..60).prop_map(StartKind::Back),
        ],
    )
        .prop_map(
            |(retain, publishers, per_publisher, delay, start)| ReplayPlan {
                retain,
                publishers,
                per_publisher,
                delay,
                start,
            },
        )
}

async fn run_replay(plan: ReplayPlan) {
    let bus = Bus::builder()
        .topic_with::<Job>(TopicConfig::default().retain(plan.retain))
        .build()
        .expect("bus");
    let total = plan.publishers as u64 * plan.per_publisher;
    let publishers: Vec<_> = (0..plan.publishers)
        .map(|_| {
            let bus = bus.clone();
            let count = plan.per_publisher;
            tokio::spawn(async move {
                for n in 0..count {
                    bus.publish(Job { n }).await.expect("publish");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for _ in 0..plan.delay {
        tokio::task::yield_now().await;
    }
    let start = match plan.start {
        StartKind::Earliest => StartAt::Earliest,
        StartKind::Last(n) => StartAt::Last(n),
        StartKind::Back(back) => {
            // `next` only grows, so this is never ahead of the topic.
            let next = bus.stats().topic("props.job").expect("topic").published + 1;
            StartAt::Seq(next.saturating_sub(back).max(1))
        }
    };
    // Room for everything: the reader starts only after the publishers.
    let mut sub = bus
        .subscribe::<Job>()
        .capacity(256)
        .from(start)
        .stream()
        .expect("subscribe");
    for p in publishers {
        p.await.expect("publisher");
    }
    let info = sub.started().clone();
    let ctx = format!("{plan:?} {info:?}");
    if let StartAt::Seq(s) = start {
        assert_eq!(info.requested, s, "{ctx}");
    }
    assert_eq!(info.unrecoverable.start, info.requested, "{ctx}");
    if !info.unrecoverable.is_empty() {
        assert_eq!(
            info.replayed, plan.retain as u64,
            "only a full log loses events: {ctx}"
        );
    }
    let first = info.unrecoverable.end;
    assert_eq!(first + info.replayed, info.live_from, "{ctx}");
    let mut got = Vec::new();
    while let Ok(e) = sub.try_recv() {
        got.push(e.seq());
    }
    let expected: Vec<u64> = (first..=total).collect();
    assert_eq!(got, expected, "contiguous, no gap, no duplicate: {ctx}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_event_is_handled_once_or_dead_lettered_once(
        events in 1u64..30,
        plan in prop::collection::vec(retry_sub(), 1..=3),
    ) {
        quiet_panics();
        runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(120), run_retries(events, plan))
                .await
                .expect("a case finishes (no deadlock)")
        });
    }

    #[test]
    fn each_key_within_the_window_is_delivered_once(plan in key_plan()) {
        runtime().block_on(run_keys(plan));
    }

    #[test]
    fn a_count_window_behaves_like_its_model(
        window in 1usize..6,
        keys in prop::collection::vec(0u8..8, 1..60),
    ) {
        runtime().block_on(run_window(window, keys));
    }

    #[test]
    fn replay_hand_over_has_no_gap_and_no_duplicate(plan in replay_plan()) {
        runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(120), run_replay(plan))
                .await
                .expect("a case finishes (no deadlock)")
        });
    }
}
