//! Retries, dead letters, handler timeouts and circuit breakers.
//!
//! Tests that wait for time to pass run on tokio's paused clock, so a
//! one-hour cool-down passes as soon as nothing else can happen: no timed
//! asserts, no flakes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::error::SubscribeError;
use tidings::{BreakerPolicy, BreakerState, Bus, DeadLetter, Event, RetryPolicy};

#[derive(Debug, Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    id: u64,
}

fn bus() -> Bus {
    Bus::builder().topic::<OrderCreated>().build().unwrap()
}

fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(attempts)
}

#[tokio::test]
async fn a_retried_event_is_handled_once_its_attempt_succeeds() {
    let bus = bus();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let sub = bus
        .subscribe::<OrderCreated>()
        .retry(quick(5))
        .handler(move |e| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(e.attempt());
                if e.attempt() < 3 {
                    Err("flaky")
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    bus.publish(OrderCreated { id: 1 }).await.unwrap();
    let stats = sub.unsubscribe().await;
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!(
        (
            stats.delivered,
            stats.handled,
            stats.failures,
            stats.retried,
            stats.dead_lettered
        ),
        (1, 1, 2, 2, 0)
    );
}

#[tokio::test]
async fn exhausted_attempts_make_one_dead_letter_with_the_event_and_the_last_error() {
    let bus = bus();
    let mut dead = bus.dead_letters().stream().unwrap();
    let sub = bus
        .subscribe::<OrderCreated>()
        .name("billing")
        .retry(quick(3))
        .sync(|e| {
            if e.attempt() == 3 {
                panic!("card service bug on order {}", e.id);
            }
            Err::<(), _>("card declined")
        })
        .unwrap();
    let receipt = bus.publish(OrderCreated { id: 42 }).await.unwrap();
    let letter = dead.recv().await.expect("a dead letter");
    let DeadLetter {
        topic,
        event_id,
        seq,
        subscription,
        subscription_id,
        attempts,
        error,
        event,
        ..
    } = &*letter;
    assert_eq!((*topic, *event_id, *seq), ("orders.created", receipt.id, 1));
    assert_eq!(
        (subscription.as_str(), *subscription_id),
        ("billing", sub.id())
    );
    assert_eq!(*attempts, 3);
    assert_eq!(error, "panic: card service bug on order 42");
    let typed = event
        .clone()
        .downcast::<OrderCreated>()
        .expect("an OrderCreated");
    assert_eq!((typed.id, typed.id(), typed.seq()), (42, receipt.id, 1));

    let stats = sub.unsubscribe().await;
    assert_eq!(
        (
            stats.handled,
            stats.failures,
            stats.panics,
            stats.retried,
            stats.dead_lettered
        ),
        (0, 2, 1, 2, 1)
    );
    assert_eq!(stats.dead_letters_unheard, 0);
    assert_eq!(
        stats.last_error.as_deref(),
        Some("panic: card service bug on order 42")
    );
}

#[tokio::test]
async fn without_a_retry_policy_a_failure_is_a_dead_letter_at_once() {
    let bus = bus();
    let sub = bus
        .subscribe::<OrderCreated>()
        .handler(|_| async { Err::<(), _>("nope") })
        .unwrap();
    bus.publish(OrderCreated { id: 1 }).await.unwrap();
    bus.publish(OrderCreated { id: 2 }).await.unwrap();
    let stats = sub.unsubscribe().await;
    assert_eq!(
        (stats.failures, stats.retried, stats.dead_lettered),
        (2, 0, 2)
    );
    // Nobody listens to dead letters: counted, never silent.
    assert_eq!(stats.dead_letters_unheard, 2);
}

#[tokio::test]
async fn retries_keep_the_order_of_a_single_runner() {
    let bus = bus();
    let done = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&done);
    let sub = bus
        .subscribe::<OrderCreated>()
        .retry(quick(4))
        .handler(move |e| {
            let log = Arc::clone(&log);
            async move {
                // Every third order fails its first two attempts.
                if e.id % 3 == 0 && e.attempt() < 3 {
                    return Err("later");
                }
                log.lock().unwrap().push(e.id);
                Ok(())
            }
        })
        .unwrap();
    for id in 1..=20 {
        bus.publish(OrderCreated { id }).await.unwrap();
    }
    let stats = sub.unsubscribe().await;
    assert_eq!(*done.lock().unwrap(), (1..=20).collect::<Vec<_>>());
    assert_eq!((stats.handled, stats.retried), (20, 12));
}

#[tokio::test(start_paused = true)]
async fn a_retrying_subscription_holds_back_no_other() {
    let bus = bus();
    let failing = bus
        .subscribe::<OrderCreated>()
        .name("failing")
        .retry(RetryPolicy::fixed(Duration::from_secs(3600)).max_attempts(2))
        .handler(|_| async { Err::<(), _>("down") })
        .unwrap();
    let healthy = bus
        .subscribe::<OrderCreated>()
        .name("healthy")
        .handler(|_| async {})
        .unwrap();
    for id in 1..=5 {
        bus.publish(OrderCreated { id }).await.unwrap();
    }
    // `healthy` drains all five while `failing` waits an hour to retry its
    // first: the wait is its own.
    assert_eq!(healthy.unsubscribe().await.handled, 5);
    let stats = failing.stats();
    assert_eq!(
        (stats.in_flight, stats.handled, stats.queue_depth),
        (1, 0, 4)
    );
    let stats = failing.unsubscribe().await; // drains: each event retried once
    assert_eq!((stats.dead_lettered, stats.retried), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn an_async_handler_over_its_timeout_is_cancelled_and_retried() {
    let bus = bus();
    let mut dead = bus.dead_letters().stream().unwrap();
    let finished = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&finished);
    let sub = bus
        .subscribe::<OrderCreated>()
        .timeout(Duration::from_millis(20))
        .retry(quick(2))
        .handler(move |_| {
            let count = Arc::clone(&count);
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        })
        .unwrap();
    bus.publish(OrderCreated { id: 1 }).await.unwrap();
    let letter = dead.recv().await.expect("dead letter");
    assert_eq!(letter.error, "timed out after 20ms");
    assert_eq!(letter.attempts, 2);
    let stats = sub.unsubscribe().await;
    assert_eq!(
        (stats.timeouts, stats.retried, stats.dead_lettered),
        (2, 1, 1)
    );
    assert_eq!(
        finished.load(Ordering::Relaxed),
        0,
        "both runs were cancelled"
    );
}

#[tokio::test]
async fn a_sync_handler_over_its_timeout_is_reported_and_its_result_stands() {
    let bus = bus();
    let sub = bus
        .subscribe::<OrderCreated>()
        .timeout(Duration::from_millis(1))
        .sync(|_| std::thread::sleep(Duration::from_millis(20)))
        .unwrap();
    bus.publish(OrderCreated { id: 1 }).await.unwrap();
    let stats = sub.unsubscribe().await;
    assert_eq!(
        (stats.timeouts, stats.handled, stats.dead_lettered),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_calling_the_handler_and_loses_nothing() {
    let bus = bus();
    let up = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let (dependency, counter) = (Arc::clone(&up), Arc::clone(&calls));
    let sub = bus
        .subscribe::<OrderCreated>()
        .retry(RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(100))
        .circuit_breaker(BreakerPolicy::new(3, Duration::from_secs(3600)))
        .handler(move |_| {
            let (up, calls) = (Arc::clone(&dependency), Arc::clone(&counter));
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                if up.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("dependency down")
                }
            }
        })
        .unwrap();
    for id in 1..=10 {
        bus.publish(OrderCreated { id }).await.unwrap();
    }
    // Three failures open the breaker; ten minutes later it still holds the
    // handler back instead of burning the retries.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let stats = sub.stats();
    assert_eq!(stats.breaker, Some(BreakerState::Open));
    assert_eq!(
        (stats.breaker_opened, calls.load(Ordering::Relaxed)),
        (1, 3)
    );
    assert_eq!(
        (stats.in_flight, stats.queue_depth),
        (1, 9),
        "events wait in the queue"
    );

    // The dependency recovers; after the cool-down one probe succeeds and
    // the breaker closes.
    up.store(true, Ordering::Relaxed);
    let stats = sub.unsubscribe().await;
    assert_eq!(stats.breaker, Some(BreakerState::Closed));
    assert_eq!((stats.handled, stats.dead_lettered), (10, 0));
    assert_eq!(calls.load(Ordering::Relaxed), 3 + 10);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_breaker_again() {
    let bus = bus();
    let sub = bus
        .subscribe::<OrderCreated>()
        .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(4))
        .circuit_breaker(BreakerPolicy::new(2, Duration::from_secs(60)))
        .handler(|_| async { Err::<(), _>("still down") })
        .unwrap();
    bus.publish(OrderCreated { id: 1 }).await.unwrap();
    let stats = sub.unsubscribe().await;
    // Attempts 1, 2 fail: open. Attempt 3 is a probe, fails: open again.
    // Attempt 4, the last, is the next probe; it fails: a dead letter.
    assert_eq!(
        (stats.failures, stats.dead_lettered, stats.breaker_opened),
        (4, 1, 3)
    );
    assert_eq!(stats.breaker, Some(BreakerState::Open));
}

#[tokio::test]
async fn dead_letters_of_a_shutdown_drain_still_reach_their_readers() {
    let bus = bus();
    let letters = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&letters);
    let _reader = bus
        .dead_letters()
        .name("dead-letter-log")
        .sync(move |_| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    let _failing = bus
        .subscribe::<OrderCreated>()
        .name("failing")
        .retry(quick(2))
        .sync(|_| Err::<(), _>("no"))
        .unwrap();
    for id in 1..=3 {
        bus.publish(OrderCreated { id }).await.unwrap();
    }
    let dead = |stats: &tidings::BusStats| {
        stats
            .subscriptions()
            .find(|s| s.name == "failing")
            .map_or(0, |s| s.dead_lettered)
    };
    let before = dead(&bus.stats());
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert!(!report.deadline_hit, "{report}");
    assert_eq!(letters.load(Ordering::Relaxed), 3);
    let failing = report
        .subscriptions()
        .find(|s| s.name == "failing")
        .unwrap();
    assert_eq!((failing.dead_lettered, failing.retried), (3, 3));
    // Those given up during the drain are named in the report; the run was
    // clean only if there were none.
    let during = report.dead_lettered_in_drain();
    assert!(during <= 3 - before, "{report}");
    assert_eq!(report.is_clean(), during == 0, "{report}");
    assert_eq!(failing.dead_letters_unheard, 0);
    let text = report.to_string();
    assert!(text.contains("dead-letter-log"), "{text}");
    if during > 0 {
        assert!(
            text.contains(&format!(
                "{during} event(s) dead-lettered during the drain by subscription `failing`"
            )),
            "{text}"
        );
    }
}

#[tokio::test]
async fn retries_timeouts_and_breakers_need_sane_numbers() {
    // On a stream they do not exist: tests/ui/handler_setting_on_stream.rs.
    let bus = bus();
    let err = bus
        .subscribe::<OrderCreated>()
        .retry(RetryPolicy::none().max_attempts(0))
        .handler(|_| async {})
        .unwrap_err();
    assert!(matches!(
        err,
        SubscribeError::ZeroAttempts {
            topic: "orders.created"
        }
    ));
    let err = bus
        .subscribe::<OrderCreated>()
        .circuit_breaker(BreakerPolicy::new(0, Duration::from_secs(1)))
        .sync(|_| ())
        .unwrap_err();
    assert!(matches!(err, SubscribeError::ZeroBreakerThreshold { .. }));
}

/// Waits (in real time, with a generous guard against a hang) until `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let guard = std::time::Instant::now();
    while !done() {
        assert!(
            guard.elapsed() < Duration::from_secs(30),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `Duration::MAX` wherever the user gives a duration: retry delays, the
/// breaker's cool-down, handler timeouts, publish timeouts, the dedup window
/// and the watch. Nothing panics, no runner dies, and shutdown names what
/// the endless waits held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_anywhere_saturates_and_strands_nothing() {
    let bus = Bus::builder()
        .topic_with::<OrderCreated>(
            tidings::TopicConfig::default()
                .dedup(tidings::DedupWindow::new().max_age(Duration::MAX)),
        )
        .watch(
            tidings::WatchConfig::default()
                .slow_poll(Some(Duration::MAX))
                .sync_budget(Some(Duration::MAX))
                .publish_wait(Some(Duration::MAX))
                .report_every(Duration::MAX),
        )
        .build()
        .unwrap();
    let failing_first = |id: u64| if id == 1 { Err("down") } else { Ok(()) };
    let forever = BreakerPolicy::new(1, Duration::MAX);
    let never_again = RetryPolicy::fixed(Duration::MAX)
        .max_attempts(2)
        .max_delay(Duration::MAX)
        .jitter(true);
    let _h = [
        bus.subscribe::<OrderCreated>()
            .name("breaker-async")
            .circuit_breaker(forever)
            .timeout(Duration::MAX)
            .handler(move |e| async move { failing_first(e.id) }),
        bus.subscribe::<OrderCreated>()
            .name("breaker-sync")
            .circuit_breaker(forever)
            .timeout(Duration::MAX)
            .sync(move |e| failing_first(e.id)),
        bus.subscribe::<OrderCreated>()
            .name("retry-async")
            .retry(never_again)
            .handler(|_| async { Err::<(), _>("always") }),
        bus.subscribe::<OrderCreated>()
            .name("retry-sync")
            .retry(never_again)
            .sync(|_| Err::<(), _>("always")),
    ]
    .map(Result::unwrap);
    let options = tidings::PublishOptions::new()
        .idempotency_key("order-1")
        .timeout(Duration::MAX);
    bus.publish_with(OrderCreated { id: 1 }, options)
        .await
        .unwrap();
    bus.publish_timeout(OrderCreated { id: 2 }, Duration::MAX)
        .await
        .unwrap();
    let by_name = |stats: &tidings::BusStats, name: &str| {
        stats
            .subscriptions()
            .find(|s| s.name == name)
            .cloned()
            .unwrap()
    };
    // A failure is counted before its event is dead-lettered (a publish
    // on the dead-letter topic): wait for both.
    eventually(
        "each first attempt failed, and its dead letter went",
        || {
            let stats = bus.stats();
            ["breaker-async", "breaker-sync", "retry-async", "retry-sync"]
                .iter()
                .all(|n| by_name(&stats, n).failures == 1)
                && ["breaker-async", "breaker-sync"]
                    .iter()
                    .all(|n| by_name(&stats, n).dead_lettered == 1)
        },
    )
    .await;
    let stats = bus.stats();
    for name in ["breaker-async", "breaker-sync"] {
        let s = by_name(&stats, name);
        // The failure was counted and its event dead-lettered at once; the
        // breaker stays open "forever", holding event 2 back.
        assert_eq!((s.dead_lettered, s.in_flight), (1, 0), "{s}");
        assert_eq!(s.breaker, Some(BreakerState::Open), "{s}");
    }
    for name in ["retry-async", "retry-sync"] {
        let s = by_name(&stats, name);
        assert_eq!((s.retried, s.in_flight), (1, 1), "waiting to retry: {s}");
    }
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        bus.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("the waits end at the deadline");
    assert!(report.deadline_hit);
    for s in report
        .subscriptions()
        .filter(|s| s.topic == "orders.created")
    {
        assert_eq!(s.runner_failures, 0, "{s}");
        assert_eq!(s.accepted, 2, "{s}");
        assert_eq!(
            s.delivered,
            s.handled + s.dead_lettered + s.in_flight as u64 + s.cancelled,
            "{s}"
        );
        assert_eq!(s.accepted, s.delivered + s.undelivered(), "{s}");
    }
    let named = |kind, name: &str| {
        report
            .unclean
            .iter()
            .find(|u| u.kind == kind && u.subscription.as_deref() == Some(name))
            .map(|u| u.count)
    };
    use tidings::UncleanKind::{CutOff, Unfinished};
    for name in ["breaker-async", "breaker-sync"] {
        assert_eq!(named(CutOff, name), Some(1), "{report}");
    }
    for name in ["retry-async", "retry-sync"] {
        assert_eq!(named(Unfinished, name), Some(1), "{report}");
        assert_eq!(named(CutOff, name), Some(1), "{report}");
    }
}

/// A handler error whose `Display` panics is a failed attempt (a panic),
/// never a dead runner.
#[tokio::test]
async fn a_panicking_error_display_is_a_failed_attempt() {
    #[derive(Debug)]
    struct Nasty;
    impl std::fmt::Display for Nasty {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("display exploded")
        }
    }
    impl std::error::Error for Nasty {}
    let bus = bus();
    let mut dead = bus.dead_letters().stream().unwrap();
    let h = bus
        .subscribe::<OrderCreated>()
        .name("nasty")
        .handler(|_| async { Err::<(), _>(Nasty) })
        .unwrap();
    let s = bus
        .subscribe::<OrderCreated>()
        .name("nasty-sync")
        .sync(|_| Err::<(), _>(Nasty))
        .unwrap();
    bus.publish(OrderCreated { id: 1 }).await.unwrap();
    bus.publish(OrderCreated { id: 2 }).await.unwrap();
    for stats in [h.unsubscribe().await, s.unsubscribe().await] {
        assert_eq!((stats.panics, stats.dead_lettered), (2, 2), "{stats}");
        assert_eq!(stats.runner_failures, 0);
    }
    let letter = dead.recv().await.unwrap();
    assert_eq!(letter.error, "panic: display exploded");
}
