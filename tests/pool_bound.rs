//! A hundred blocking subscriptions at concurrency 4 run on no more threads
//! than the pool has workers, counted by name from `/proc/self/task`. In a
//! file of its own: the count sees every bus of the process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::{Bus, Event, WorkerPool};

#[derive(Debug, Clone, Event)]
#[event(topic = "work.job")]
struct Job(#[allow(dead_code)] u64);

/// Workers of this process's pools of kind `pool` (threads named
/// `tidings-<pool>-<n>`), whichever bus they belong to.
fn workers_running(pool: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let prefix = format!("tidings-{pool}-");
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter_map(|name| name.trim_end().strip_prefix(&prefix).map(str::to_owned))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .count()
}

/// Keeps the highest value it was shown.
#[derive(Default)]
struct Peak(AtomicUsize);

impl Peak {
    fn show(&self, n: usize) {
        self.0.fetch_max(n, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_subscriptions_at_concurrency_four_share_the_pool_s_threads() {
    const WORKERS: usize = 3;
    let bus = Bus::builder()
        .topic::<Job>()
        .cpu_workers(WORKERS)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let (peak_running, peak_threads) = (Arc::new(Peak::default()), Arc::new(Peak::default()));
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (running, peak_running, peak_threads) = (
                Arc::clone(&running),
                Arc::clone(&peak_running),
                Arc::clone(&peak_threads),
            );
            bus.subscribe::<Job>()
                .name(format!("module-{i}"))
                .concurrency(4)
                .sync(move |_| {
                    peak_running.show(running.fetch_add(1, Ordering::SeqCst) + 1);
                    peak_threads.show(workers_running("cpu"));
                    std::thread::sleep(Duration::from_micros(50));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .unwrap()
        })
        .collect();
    for i in 0..20 {
        bus.publish(Job(i)).await.unwrap();
    }
    let pools = bus.stats().pools;
    let cpu = pools.iter().find(|p| p.pool == WorkerPool::Cpu).unwrap();
    assert_eq!(cpu.max_workers, WORKERS);
    assert!(cpu.workers <= WORKERS, "{cpu:?}");
    for handle in handles {
        let stats = handle.unsubscribe().await;
        assert_eq!((stats.handled, stats.in_flight), (20, 0), "{stats}");
        assert!(
            stats.worker_wait.is_some() && stats.run_time.is_some(),
            "{stats}"
        );
    }
    assert!(
        peak_running.get() <= WORKERS,
        "{} handlers ran at once",
        peak_running.get()
    );
    assert!(
        peak_threads.get() <= WORKERS,
        "{} pool threads",
        peak_threads.get()
    );
    assert!(workers_running("cpu") <= WORKERS);
    assert_eq!(workers_running("io"), 0);
}
