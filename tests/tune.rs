//! The capacity tuner as a library call: one step per capacity, exact
//! accounting in each, and a recommendation drawn from the steps. No timing
//! is asserted.

use std::time::Duration;

use tidings::tune::{self, Workload};
use tidings::{Event, Overflow};

#[derive(Debug, Event)]
#[event(topic = "tune.test")]
struct Job {
    id: u64,
}

fn workload(policy: Overflow) -> Workload {
    Workload {
        publishers: 2,
        subscribers: 3,
        events: 400,
        rate: None,
        policy,
        // Generous: every step can meet it, so a recommendation exists.
        p99_target: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_measures_every_capacity_and_recommends_one_of_them() {
    let mut seen = Vec::new();
    let tuning = tune::sweep(
        &workload(Overflow::Block),
        tune::powers_of_two(1, 16),
        |id| Job { id },
        |job: &Job| {
            std::hint::black_box(job.id);
        },
        |step| seen.push(step.capacity),
    )
    .await
    .expect("valid topic");
    assert_eq!(seen, [1, 2, 4, 8, 16], "progress is reported per step");
    assert_eq!(tuning.steps.len(), 5);
    for step in &tuning.steps {
        assert!(step.throughput > 0.0);
        assert_eq!(step.dropped, 0, "Block loses nothing");
        assert_eq!(
            step.delivered,
            400 * 3,
            "every subscription got every event"
        );
        assert!(step.peak_queued <= step.capacity, "{step:?}");
        assert!(step.publish_p50 <= step.publish_p99 && step.publish_p99 <= step.publish_p999);
    }
    let best = tuning
        .steps
        .iter()
        .map(|s| s.throughput)
        .fold(0.0, f64::max);
    let recommended = tuning.recommended.expect("the target is generous");
    let step = tuning
        .steps
        .iter()
        .find(|s| s.capacity == recommended)
        .expect("a swept capacity");
    assert!(step.throughput >= 0.95 * best);
    assert!(
        tuning
            .steps
            .iter()
            .filter(|s| s.capacity < recommended)
            .all(|s| s.throughput < 0.95 * best),
        "the smallest that qualifies"
    );
    let table = tuning.to_string();
    assert!(
        table.contains(&format!("recommended capacity: {recommended}")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_policy_reports_its_drops() {
    let tuning = tune::sweep(
        &workload(Overflow::DropNewest),
        [1],
        |id| Job { id },
        |_job: &Job| std::thread::sleep(Duration::from_micros(200)), // slower than publishing
        |_| {},
    )
    .await
    .expect("valid topic");
    let step = &tuning.steps[0];
    assert!(step.dropped > 0, "{step:?}");
    assert_eq!(step.delivered + step.dropped, 400 * 3, "{step:?}");
    assert!(step.filled(), "a queue of one that drops was full");
}

/// A capacity that a step's events cannot fill is not run: it would only
/// repeat the largest one that can. The table says which were left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacities_a_step_cannot_fill_are_not_presented_as_measurements() {
    let mut seen = Vec::new();
    let tuning = tune::sweep(
        &workload(Overflow::Block),
        tune::powers_of_two(64, 1024),
        |id| Job { id },
        |job: &Job| {
            std::hint::black_box(job.id);
        },
        |step| seen.push(step.capacity),
    )
    .await
    .expect("valid topic");
    assert_eq!(seen, [64, 128, 256], "400 events per step fill at most 399");
    assert_eq!(tuning.unfillable, [512, 1024]);
    let table = tuning.to_string();
    assert!(table.contains("not run: capacities 512 to 1024"), "{table}");
    for step in &tuning.steps {
        if !step.filled() {
            assert!(table.contains("(never full)"), "{table}");
        }
    }
}

#[test]
fn powers_of_two_cover_the_range() {
    assert_eq!(tune::powers_of_two(1, 65_536).len(), 17);
    assert_eq!(tune::powers_of_two(3, 20), [3, 6, 12]);
    assert_eq!(tune::powers_of_two(0, 1), [1]);
}
