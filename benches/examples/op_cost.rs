//! What one publish and one receive cost on their own, without a second
//! core in the way: a current-thread runtime publishes a batch into a queue
//! large enough to hold it, then reads it back, and the same for tokio's
//! bounded mpsc. Each figure is the median of 15 batches of 60,000.
//!
//! `cargo run --release -p tidings-benches --example op_cost`
//!
//! The cross-core scenarios (`bench_report`, `cargo bench -p tidings-benches`) add what two
//! workers handing events to each other cost; this separates the work each
//! side does per event, which is where the precise publish timestamp shows
//! (compare the `Clock::Precise` and `Clock::Coarse` rows).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tidings::{Bus, Clock, Event, TopicConfig};
use tidings_benches::median;

const BATCH: u64 = 60_000;
const ROUNDS: usize = 15;

/// The payload every contender moves: a shared pointer, as in the benches.
#[derive(Event)]
#[event(topic = "bench.op")]
struct Op(Arc<u64>);

/// Nanoseconds per event of `batch`, timed once.
async fn per_event<F: Future<Output = ()>>(batch: F) -> f64 {
    let start = Instant::now();
    batch.await;
    start.elapsed().as_nanos() as f64 / BATCH as f64
}

/// Publish and receive costs, in nanoseconds, on a topic with `clock`.
async fn tidings(clock: Clock) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let bus = Bus::builder()
        .topic_with::<Op>(TopicConfig::default().clock(clock))
        .build()?;
    // Larger than a batch, so that nothing waits.
    let mut sub = bus.subscribe::<Op>().capacity(65_536).stream()?;
    let ops = bus.publisher::<Op>()?;
    let payload = Arc::new(1u64);
    let (mut publish, mut recv) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        publish.push(
            per_event(async {
                for _ in 0..BATCH {
                    ops.publish(Op(Arc::clone(&payload)))
                        .await
                        .expect("room for the batch");
                }
            })
            .await,
        );
        recv.push(
            per_event(async {
                for _ in 0..BATCH {
                    let e = sub.recv().await.expect("published");
                    std::hint::black_box(*e.0);
                }
            })
            .await,
        );
    }
    Ok((median(publish), median(recv)))
}

/// Send and receive costs of tokio's bounded mpsc, in nanoseconds, moving
/// the same event behind a shared pointer of its own, as the bus does.
async fn mpsc() -> (f64, f64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Op>>(65_536);
    let payload = Arc::new(1u64);
    let (mut send, mut recv) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        send.push(
            per_event(async {
                for _ in 0..BATCH {
                    tx.send(Arc::new(Op(Arc::clone(&payload))))
                        .await
                        .expect("open");
                }
            })
            .await,
        );
        recv.push(
            per_event(async {
                for _ in 0..BATCH {
                    std::hint::black_box(*rx.recv().await.expect("sent").0);
                }
            })
            .await,
        );
    }
    (median(send), median(recv))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        let precise = tidings(Clock::Precise).await?;
        let coarse = tidings(Clock::Coarse).await?;
        let peer = mpsc().await;
        println!("| one event, one thread | publish / send | receive |");
        println!("|---|---:|---:|");
        for (name, (send, recv)) in [
            ("tidings, `Clock::Precise` (default)", precise),
            ("tidings, `Clock::Coarse`", coarse),
            ("tokio mpsc (an `Arc` per send)", peer),
        ] {
            println!("| {name} | {send:.0} ns | {recv:.0} ns |");
        }
        Ok(())
    })
}
