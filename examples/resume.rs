//! A subscriber that goes away and comes back without losing anything: the
//! topic retains its last events, and the subscriber resumes from the
//! sequence number after the last one it saw. A second subscriber comes
//! back too late and is told exactly which events are gone.
//!
//! Run it with `cargo run --release --example resume`.

use std::time::Duration;

use tidings::{Bus, Event, StartAt, TopicConfig};

#[derive(Debug, Event)]
#[event(topic = "positions.updated")]
struct PositionUpdated {
    vehicle: u32,
    km: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder()
        .topic_with::<PositionUpdated>(TopicConfig::default().retain(50))
        .build()?;

    // A publisher that keeps going whatever the subscribers do.
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for km in 1..=200u64 {
                bus.publish(PositionUpdated { vehicle: 7, km }).await?;
                if km % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<_, tidings::error::PublishError<PositionUpdated>>(())
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let mut sub = bus.subscribe::<PositionUpdated>().name("map").stream()?;
    for _ in 0..30 {
        let e = sub.recv().await.expect("open");
        seen.push(e.seq());
    }
    let last = *seen.last().expect("read some");
    println!("map: read up to seq {last}, then disconnects");
    drop(sub);
    tokio::time::sleep(Duration::from_millis(5)).await; // away while events flow

    let mut sub = bus
        .subscribe::<PositionUpdated>()
        .name("map")
        .from(StartAt::Seq(last + 1))
        .stream()?;
    let start = sub.started().clone();
    println!(
        "map: resumed at seq {}: {} retained events replayed, live from seq {}, unrecoverable {:?}",
        start.requested, start.replayed, start.live_from, start.unrecoverable
    );
    publisher.await??;
    sub.close(); // everything is published: read to the end
    while let Some(e) = sub.recv().await {
        seen.push(e.seq());
    }
    let expected: Vec<u64> = (seen[0]..=200).collect();
    assert_eq!(seen, expected, "no gap, no duplicate across the reconnect");
    println!(
        "map: saw seq {}..={} with no gap and no duplicate across the reconnect (vehicle {} at km {})",
        seen[0],
        seen[seen.len() - 1],
        bus.replay::<PositionUpdated>(200..=200)?.events[0].vehicle,
        bus.replay::<PositionUpdated>(200..=200)?.events[0].km
    );

    // Too late: only the last 50 are retained.
    let late = bus
        .subscribe::<PositionUpdated>()
        .from(StartAt::Seq(100))
        .stream()?;
    println!(
        "a subscriber resuming at seq 100 is told seq {:?} are gone and gets {} retained events",
        late.started().unrecoverable,
        late.started().replayed
    );
    Ok(())
}
