//! The capacity tuner: how big should a subscription's queue be for this
//! workload? Sweeps capacity over powers of two, prints a table and a
//! recommendation, and draws throughput and publish p99 against capacity in
//! `target/tune.svg`.
//!
//! ```sh
//! cargo run --release -p tidings-benches --example tune -- \
//!     --publishers 2 --subscribers 8 --handler-cost 50us --rate 200000 --policy block
//! ```
//!
//! `--help` explains every flag. To tune against your own handler, call
//! `tidings::tune::sweep` with it (this program's `main` shows how).

use std::time::{Duration, Instant};

use plotters::prelude::*;
use tidings::tune::{self, Step, Tuning, Workload};
use tidings::{Event, Overflow};

const HELP: &str = "\
tune: sweep subscription capacity for a workload and recommend one

flags (defaults in brackets):
  --publishers N       publishing tasks [2]
  --subscribers N      subscriptions, each a .sync() handler [8]
  --handler-cost D     CPU each handler spends per event, e.g. 50us, 2ms [50us]
  --rate N             events per second over all publishers; 0 = as fast as possible [200000]
  --events N           events per capacity step [10000]
  --policy P           block | drop-oldest | drop-newest | fail [block]
  --p99-target D       publish p99 the recommendation must meet [1ms]
  --from N, --to N     capacities swept: powers of two from..=to [1, 65536]
  --help               this text";

#[derive(Debug, Event)]
#[event(topic = "tune.order")]
struct Order {
    id: u64,
}

fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "ns" => Duration::from_nanos(n),
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(format!("bad duration {s:?}: use ns, us, ms or s")),
    })
}

fn policy(s: &str) -> Result<Overflow, String> {
    Ok(match s {
        "block" => Overflow::Block,
        "drop-oldest" => Overflow::DropOldest,
        "drop-newest" => Overflow::DropNewest,
        "fail" => Overflow::Fail,
        _ => {
            return Err(format!(
                "bad policy {s:?}: block, drop-oldest, drop-newest or fail"
            ))
        }
    })
}

fn plot(tuning: &Tuning, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let steps = &tuning.steps;
    let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
        return Ok(());
    };
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_tp = steps.iter().map(|s| s.throughput / 1e6).fold(0.0, f64::max) * 1.1;
    let max_p99 = steps
        .iter()
        .map(|s| s.publish_p99.as_secs_f64() * 1e3)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let x = (first.capacity as f64)..(last.capacity as f64).max(first.capacity as f64 * 2.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput and publish p99 vs capacity", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(x.clone().log_scale(), 0.0..max_tp)?
        .set_secondary_coord(x.log_scale(), 0.0..max_p99);
    chart
        .configure_mesh()
        .x_desc("capacity (log)")
        .y_desc("M deliveries/s")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("publish p99 (ms)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            steps
                .iter()
                .map(|s| (s.capacity as f64, s.throughput / 1e6)),
            BLUE.stroke_width(2),
        ))?
        .label("throughput")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(
            steps
                .iter()
                .map(|s| (s.capacity as f64, s.publish_p99.as_secs_f64() * 1e3)),
            RED.stroke_width(2),
        ))?
        .label("publish p99")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut workload = Workload {
        publishers: 2,
        subscribers: 8,
        events: 10_000,
        rate: Some(200_000),
        policy: Overflow::Block,
        p99_target: Duration::from_millis(1),
    };
    let mut cost = Duration::from_micros(50);
    let (mut from, mut to) = (1usize, 65_536usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            return Ok(());
        }
        let value = args
            .next()
            .ok_or(format!("{flag} needs a value; see --help"))?;
        match flag.as_str() {
            "--publishers" => workload.publishers = value.parse()?,
            "--subscribers" => workload.subscribers = value.parse()?,
            "--handler-cost" => cost = duration(&value)?,
            "--rate" => workload.rate = Some(value.parse()?).filter(|&r| r > 0),
            "--events" => workload.events = value.parse()?,
            "--policy" => workload.policy = policy(&value)?,
            "--p99-target" => workload.p99_target = duration(&value)?,
            "--from" => from = value.parse()?,
            "--to" => to = value.parse()?,
            other => return Err(format!("unknown flag {other}; see --help").into()),
        }
    }
    let capacities = tune::powers_of_two(from, to);
    eprintln!(
        "{} publishers → {} subscribers, {cost:?} of CPU per event, {} events/s, {} per step, policy {}; {} steps",
        workload.publishers,
        workload.subscribers,
        workload.rate.map_or("max".to_owned(), |r| r.to_string()),
        workload.events,
        workload.policy,
        capacities.len()
    );
    let steps = capacities.len();
    let mut done = 0;
    let tuning = tune::sweep(
        &workload,
        capacities,
        |id| Order { id },
        move |order: &Order| {
            // The handler's cost: real CPU work.
            let start = Instant::now();
            let mut h = order.id;
            while start.elapsed() < cost {
                h = h.rotate_left(5) ^ 0x9e37_79b9_7f4a_7c15;
            }
            std::hint::black_box(h);
        },
        |step: &Step| {
            done += 1;
            eprintln!(
                "[{done:>2}/{steps}] capacity {:>6}: {:>10.0} deliveries/s, publish p99 {:?}, dropped {}",
                step.capacity, step.throughput, step.publish_p99, step.dropped
            );
        },
    )
    .await?;
    println!("\n{tuning}");
    std::fs::create_dir_all("target")?;
    plot(&tuning, "target/tune.svg")?;
    println!("chart: target/tune.svg");
    Ok(())
}
