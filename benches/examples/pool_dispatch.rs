//! One blocking subscription of tidings at concurrency C, fed N events by
//! one publisher, its handler spinning for 1 µs: prints the wall time per
//! event, in nanoseconds, from the first publish to the last run's end.
//!
//! `pool_bench` builds this same program against this tree (handlers on
//! the bus's worker pool) and against the commit before the pool (a
//! thread per unit of concurrency), and runs both in each round.
//!
//! Usage: pool_dispatch [--events N] [--concurrency C] [--nice N]
//!
//! `--nice` sets the CPU pool's `cpu_worker_nice` (this tree only: the
//! lines between the `pool only` marks are left out of the build before
//! the pool).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::{Bus, Event};

#[derive(Debug, Event)]
#[event(topic = "bench.jobs")]
struct Job(#[allow(dead_code)] u64);

/// Work of `d`, on the CPU.
fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut events, mut concurrency) = (200_000u64, 2usize);
    let mut nice: Option<u8> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            "--concurrency" => concurrency = args.next().ok_or("--concurrency C")?.parse()?,
            "--nice" => nice = Some(args.next().ok_or("--nice N")?.parse()?),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let builder = Bus::builder().topic::<Job>();
        // pool only: from here
        let builder = match nice {
            Some(n) => builder.cpu_worker_nice(n),
            None => builder,
        };
        // pool only: to here
        let _ = nice;
        let bus = builder.build()?;
        let done = Arc::new(AtomicU64::new(0));
        let handle = {
            let done = Arc::clone(&done);
            bus.subscribe::<Job>()
                .capacity(1024)
                .concurrency(concurrency)
                .sync(move |_| {
                    spin(Duration::from_micros(1));
                    done.fetch_add(1, Ordering::Relaxed);
                })?
        };
        let publisher = bus.publisher::<Job>()?;
        let start = Instant::now();
        for i in 0..events {
            publisher.publish(Job(i)).await?;
        }
        let stats = handle.unsubscribe().await;
        let took = start.elapsed();
        assert_eq!(stats.handled, events);
        println!("ns_per_event {:.1}", took.as_nanos() as f64 / events as f64);
        Ok(())
    })
}
