//! Retries, dead letters, handler timeouts and circuit breakers.
//!
//! Tests that wait for time to pass run on tokio's paused clock, so a
//! one-hour cool-down passes as soon as nothing else can happen: no timed
//! asserts, no flakes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::error::SubscribeError;
use tidings::{BreakerState, Bus, CircuitBreaker, DeadLetter, Event, RetryPolicy};

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
        .circuit_breaker(CircuitBreaker::new(3, Duration::from_secs(3600)))
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
        .circuit_breaker(CircuitBreaker::new(2, Duration::from_secs(60)))
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
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(letters.load(Ordering::Relaxed), 3);
    let failing = report
        .subscriptions()
        .find(|s| s.name == "failing")
        .unwrap();
    assert_eq!((failing.dead_lettered, failing.retried), (3, 3));
    assert_eq!(report.dead_lettered(), 3);
    assert_eq!(failing.dead_letters_unheard, 0);
    let text = report.to_string();
    assert!(text.contains("dead-letter-log"), "{text}");
    assert!(text.contains("3 event(s) dead-lettered in all"), "{text}");
}

#[tokio::test]
async fn retries_timeouts_and_breakers_need_a_handler_and_sane_numbers() {
    let bus = bus();
    let err = bus
        .subscribe::<OrderCreated>()
        .retry(quick(2))
        .stream()
        .unwrap_err();
    assert!(matches!(
        err,
        SubscribeError::NotAHandler {
            what: "a retry policy",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "subscription to topic `orders.created` is a stream: a retry policy needs a handler (.handler() or .sync())"
    );
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
        .circuit_breaker(CircuitBreaker::new(0, Duration::from_secs(1)))
        .sync(|_| ())
        .unwrap_err();
    assert!(matches!(err, SubscribeError::ZeroBreakerThreshold { .. }));
}
