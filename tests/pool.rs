//! The bus's worker pools: bounded whatever the number of subscriptions,
//! fair between subscriptions, and watched: a stuck run and an exhausted
//! pool are named, panics never lose a worker, and shutdown keeps its
//! deadline with handlers that never return.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tidings::{Bus, Event, FindingKind, WatchConfig, WorkerPool};

#[derive(Debug, Clone, Event)]
#[event(topic = "work.job")]
struct Job(u64);

#[derive(Debug, Clone, Event)]
#[event(topic = "work.ping")]
struct Ping(#[allow(dead_code)] u64);

/// A generous bound so a broken pool fails the test instead of hanging it.
const HANG: Duration = Duration::from_secs(60);

/// Waits until `done` holds, or fails naming `what`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// With one worker, one subscription flooded with events and twenty quiet
/// ones: each quiet event starts before the flooded subscription's next
/// run, however many of its events wait.
#[test]
fn a_flooded_subscription_cannot_starve_quiet_ones() {
    const QUIET: usize = 20;
    const FLOOD: u64 = 2_000;
    let bus = Bus::builder()
        .topic::<Job>()
        .topic::<Ping>()
        .cpu_workers(1)
        .build()
        .unwrap();
    // The order in which runs start, by subscription name.
    let starts = Arc::new(Mutex::new(Vec::<String>::new()));
    let quiet: Vec<_> = (0..QUIET)
        .map(|i| {
            let starts = Arc::clone(&starts);
            bus.subscribe::<Ping>()
                .name(format!("quiet-{i}"))
                .sync(move |_| starts.lock().unwrap().push(format!("quiet-{i}")))
                .unwrap()
        })
        .collect();
    let flood = {
        let (starts, bus) = (Arc::clone(&starts), bus.clone());
        bus.clone()
            .subscribe::<Job>()
            .name("flood")
            .capacity(FLOOD as usize)
            .sync(move |e| {
                starts.lock().unwrap().push("flood".to_owned());
                // Every hundredth flooded event, a quiet one is published.
                if e.0 % 100 == 50 {
                    bus.try_publish(Ping(e.0)).unwrap();
                }
                // Some work, so that the flood has used more handler time
                // than the quiet ones.
                std::thread::sleep(Duration::from_micros(20));
            })
            .unwrap()
    };
    for i in 0..FLOOD {
        bus.try_publish(Job(i)).unwrap();
    }
    let stats = tidings_block_on(flood.unsubscribe());
    assert_eq!(stats.handled, FLOOD);
    for q in quiet {
        assert_eq!(tidings_block_on(q.unsubscribe()).handled, FLOOD / 100);
    }
    let starts = starts.lock().unwrap();
    // After the flooded run that published a ping, all twenty quiet
    // subscriptions start before the flood runs again.
    let mut checked = 0;
    let mut flooded = 0u64;
    let mut i = 0;
    while i < starts.len() {
        if starts[i] == "flood" {
            flooded += 1;
            if (flooded - 1) % 100 == 50 {
                let next: HashSet<&str> = starts[i + 1..i + 1 + QUIET]
                    .iter()
                    .map(String::as_str)
                    .collect();
                assert_eq!(next.len(), QUIET, "after flood run {flooded}: {next:?}");
                assert!(!next.contains("flood"));
                checked += 1;
                i += QUIET;
            }
        }
        i += 1;
    }
    assert_eq!(checked, FLOOD / 100);
}

fn tidings_block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_handlers_are_named_and_a_pool_they_exhaust_is_reported() {
    let watch = WatchConfig::default()
        .sync_budget(Some(Duration::from_millis(30)))
        .pool_exhausted(Some(Duration::from_millis(60)));
    let bus = Bus::builder()
        .topic::<Job>()
        .topic::<Ping>()
        .cpu_workers(3)
        .watch(watch)
        .build()
        .unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let stuck = |name: &str, concurrency: usize, bus: &Bus| {
        let gate = Arc::clone(&gate);
        bus.subscribe::<Job>()
            .name(name)
            .concurrency(concurrency)
            .sync(move |_| {
                // Waits until the test lets one run go.
                let _ = gate.lock().unwrap().recv_timeout(HANG);
            })
            .unwrap()
    };
    // A handler that waits holding the gate's lock holds its worker; the
    // others wait for the lock, holding theirs.
    let two = stuck("stuck-two", 2, &bus);
    for i in 0..2 {
        bus.publish(Job(i)).await.unwrap();
    }
    eventually("both runs of stuck-two named over budget", || {
        bus.health().findings.iter().any(|f| {
            f.subscription == "stuck-two" && f.kind == FindingKind::SyncOverBudget && f.count == 2
        })
    })
    .await;
    let stats = bus.stats();
    let cpu = &stats.pools[0];
    assert_eq!((cpu.busy, cpu.holders.len()), (2, 1), "{cpu:?}");
    assert_eq!(cpu.holders[0].subscription, "stuck-two");
    assert_eq!(cpu.holders[0].workers, 2);
    assert!(
        bus.health().pools.is_empty(),
        "2 of 3 workers is not exhausted"
    );
    // The runtime goes on meanwhile.
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // A third stuck run takes the last worker.
    let one = bus
        .subscribe::<Ping>()
        .name("stuck-one")
        .sync({
            let gate = Arc::clone(&gate);
            move |_| {
                let _ = gate.lock().unwrap().recv_timeout(HANG);
            }
        })
        .unwrap();
    bus.publish(Ping(0)).await.unwrap();
    eventually("the exhausted pool reported", || {
        !bus.health().pools.is_empty()
    })
    .await;
    let health = bus.health();
    assert!(!health.is_healthy(), "{health}");
    let exhausted = &health.pools[0];
    assert_eq!(
        (exhausted.pool, exhausted.workers, exhausted.count),
        (WorkerPool::Cpu, 3, 1)
    );
    let held: Vec<(&str, usize)> = exhausted
        .holders
        .iter()
        .map(|h| (h.subscription.as_str(), h.workers))
        .collect();
    assert_eq!(held, [("stuck-two", 2), ("stuck-one", 1)], "{health}");
    assert!(exhausted
        .holders
        .iter()
        .all(|h| h.oldest_run > Duration::ZERO));
    assert!(
        health.to_string().contains("cpu pool exhausted"),
        "{health}"
    );
    let ticked = ticks.load(Ordering::SeqCst);
    eventually("the runtime still runs tasks", || {
        ticks.load(Ordering::SeqCst) > ticked
    })
    .await;
    ticker.abort();
    // Let them all go: nothing was lost.
    for _ in 0..3 {
        release.send(()).unwrap();
    }
    let (two, one) = (two.unsubscribe().await, one.unsubscribe().await);
    assert_eq!((two.handled, one.handled), (2, 1));
    assert_eq!((two.over_budget, one.over_budget), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_panics_lose_no_event_and_no_worker() {
    const PANICKY: u64 = 10;
    const EVENTS: u64 = 1_000;
    let bus = Bus::builder()
        .topic::<Job>()
        .cpu_workers(2)
        .build()
        .unwrap();
    let mut dead = bus.dead_letters().capacity(20_000).stream().unwrap();
    // Ten subscriptions whose handler panics on every event, beside one
    // that handles every event on the same two workers.
    let mut handles: Vec<_> = (0..PANICKY)
        .map(|s| {
            bus.subscribe::<Job>()
                .name(format!("panicky-{s}"))
                .capacity(EVENTS as usize)
                .concurrency(2)
                .sync::<_, ()>(move |e| panic!("injected panic {s}/{}", e.0))
                .unwrap()
        })
        .collect();
    let steady = Arc::new(AtomicUsize::new(0));
    handles.push({
        let steady = Arc::clone(&steady);
        bus.subscribe::<Job>()
            .name("steady")
            .capacity(EVENTS as usize)
            .sync(move |_| {
                steady.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
    });
    for i in 0..EVENTS {
        bus.publish(Job(i)).await.unwrap();
    }
    let mut panics = 0;
    for handle in handles {
        let stats = handle.unsubscribe().await;
        assert_eq!(stats.delivered, EVENTS, "{stats}");
        assert_eq!(stats.handled + stats.dead_lettered, EVENTS, "{stats}");
        assert_eq!(stats.panics, stats.dead_lettered, "{stats}");
        assert_eq!((stats.in_flight, stats.runner_failures), (0, 0), "{stats}");
        panics += stats.panics;
    }
    assert_eq!(panics, PANICKY * EVENTS);
    assert_eq!(steady.load(Ordering::SeqCst) as u64, EVENTS);
    for _ in 0..panics {
        let letter = tokio::time::timeout(HANG, dead.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(letter.error.contains("injected panic"), "{}", letter.error);
    }
    // The last runners end just after their subscriptions' last runs.
    eventually("every worker free", || bus.stats().pools[0].busy == 0).await;
    let stats = bus.stats();
    let cpu = &stats.pools[0];
    assert_eq!((cpu.workers, cpu.queued), (2, 0), "{cpu:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_its_deadline_with_a_handler_that_never_returns() {
    let bus = Bus::builder()
        .topic::<Job>()
        .topic::<Ping>()
        .cpu_workers(2)
        .build()
        .unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let (started_tx, started) = mpsc::channel();
    bus.subscribe::<Ping>()
        .name("forever")
        .sync(move |_| {
            let _ = started_tx.send(());
            let _ = gate.lock().unwrap().recv_timeout(HANG);
        })
        .unwrap()
        .run_until_shutdown();
    let done = Arc::new(AtomicUsize::new(0));
    {
        let done = Arc::clone(&done);
        bus.subscribe::<Job>()
            .name("normal")
            .sync(move |_| {
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
            .run_until_shutdown();
    }
    bus.publish(Ping(0)).await.unwrap();
    started.recv_timeout(HANG).unwrap();
    for i in 0..50 {
        bus.publish(Job(i)).await.unwrap();
    }
    let report = tokio::time::timeout(HANG, bus.shutdown(Duration::from_secs(1)))
        .await
        .expect("the deadline is kept");
    assert!(report.deadline_hit, "{report}");
    let by_name = |name: &str| report.subscriptions().find(|s| s.name == name).unwrap();
    let normal = by_name("normal");
    assert_eq!(
        (normal.handled, normal.cut_off),
        (50, 0),
        "the rest finishes: {report}"
    );
    assert_eq!(by_name("forever").in_flight, 1, "{report}");
    assert_eq!(report.in_flight(), 1, "{report}");
    assert_eq!(done.load(Ordering::SeqCst), 50);
    release.send(()).unwrap();
}

#[test]
fn pool_sizes_out_of_range_are_refused() {
    for (bus, pool, workers) in [
        (Bus::builder().cpu_workers(0), WorkerPool::Cpu, 0),
        (Bus::builder().io_workers(0), WorkerPool::Io, 0),
        (
            Bus::builder().io_workers(usize::MAX),
            WorkerPool::Io,
            usize::MAX,
        ),
    ] {
        let err = bus.build().unwrap_err();
        assert!(
            matches!(err, tidings::error::BuildError::Workers { pool: p, workers: w, .. } if p == pool && w == workers),
            "{err}"
        );
        assert!(err.to_string().contains(pool.name()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_handlers_run_on_the_io_pool() {
    let bus = Bus::builder().topic::<Job>().io_workers(4).build().unwrap();
    let (tx, rx) = mpsc::channel();
    let h = bus
        .subscribe::<Job>()
        .name("ledger")
        .concurrency(8)
        .blocking(move |e| {
            let thread = std::thread::current().name().map(str::to_owned);
            tx.send((e.0, thread)).unwrap();
        })
        .unwrap();
    for i in 0..16 {
        bus.publish(Job(i)).await.unwrap();
    }
    let stats = h.unsubscribe().await;
    assert_eq!(
        (stats.kind, stats.handled),
        (tidings::SubscriberKind::Blocking, 16)
    );
    let seen: Vec<(u64, Option<String>)> = rx.try_iter().collect();
    assert_eq!(seen.len(), 16);
    assert!(seen
        .iter()
        .all(|(_, t)| t.as_deref().is_some_and(|t| t.starts_with("tidings-io-"))));
    let pools = bus.stats().pools;
    assert!(
        pools[1].workers <= 4 && pools[1].pool == WorkerPool::Io,
        "{pools:?}"
    );
    assert_eq!(pools[0].workers, 0, "the CPU pool started nothing");
}

/// A thread's nice value, from `/proc/thread-self/stat` (field 19).
#[cfg(target_os = "linux")]
fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_workers_run_below_the_runtime_and_io_workers_do_not() {
    let base = own_nice();
    for (nice, expected) in [
        (None, (base + 10).min(19)),
        (Some(0), base),
        (Some(3), (base + 3).min(19)),
    ] {
        let mut builder = Bus::builder().topic::<Job>();
        if let Some(nice) = nice {
            builder = builder.cpu_worker_nice(nice);
        }
        let bus = builder.build().unwrap();
        let (tx, rx) = mpsc::channel();
        let io_tx = tx.clone();
        let cpu = bus
            .subscribe::<Job>()
            .sync(move |_| tx.send(("cpu", own_nice())).unwrap())
            .unwrap();
        let io = bus
            .subscribe::<Job>()
            .blocking(move |_| io_tx.send(("io", own_nice())).unwrap())
            .unwrap();
        bus.publish(Job(0)).await.unwrap();
        cpu.unsubscribe().await;
        io.unsubscribe().await;
        let mut seen: Vec<(&str, i64)> = rx.try_iter().collect();
        seen.sort_unstable();
        assert_eq!(seen, [("cpu", expected), ("io", base)], "nice {nice:?}");
    }
    let err = Bus::builder().cpu_worker_nice(20).build().unwrap_err();
    assert!(
        matches!(
            err,
            tidings::error::BuildError::WorkerNice { nice: 20, max: 19 }
        ),
        "{err}"
    );
}
