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

/// A divisor and its unit, so that an axis reads 1 to 1000 and not
/// 0.00002 or 40000000.
fn rate_unit(max: f64) -> (f64, &'static str) {
    if max >= 1e6 {
        (1e6, "million deliveries per second")
    } else if max >= 1e3 {
        (1e3, "thousand deliveries per second")
    } else {
        (1.0, "deliveries per second")
    }
}

fn time_unit(max: Duration) -> (f64, &'static str) {
    if max >= Duration::from_millis(1) {
        (1e-3, "publish p99 (milliseconds)")
    } else {
        (1e-6, "publish p99 (microseconds)")
    }
}

/// Throughput (left axis) and publish p99 (right axis) against capacity;
/// both axes reach well above their highest point, leaving the legend room.
/// A step whose queues never filled is drawn hollow: the capacity did not
/// matter there. Capacities too large to fill are not drawn at all.
fn plot(tuning: &Tuning, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let steps = &tuning.steps;
    let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
        return Ok(());
    };
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (rate_div, rate_name) = rate_unit(steps.iter().map(|s| s.throughput).fold(0.0, f64::max));
    let max_p99 = steps
        .iter()
        .map(|s| s.publish_p99)
        .max()
        .unwrap_or_default();
    let (time_div, time_name) = time_unit(max_p99);
    let max_tp = steps
        .iter()
        .map(|s| s.throughput / rate_div)
        .fold(0.0, f64::max)
        * 1.7;
    let max_time = (max_p99.as_secs_f64() / time_div).max(1.0) * 1.7;
    let x = (first.capacity as f64 / 1.5)..(last.capacity as f64 * 1.5);
    let caption = match (tuning.unfillable.first(), tuning.unfillable.last()) {
        (Some(a), Some(b)) => format!(
            "throughput and publish p99 by capacity (capacities {a} to {b} not run: a step cannot fill them)"
        ),
        _ => "throughput and publish p99 by capacity".to_owned(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(x.clone().log_scale(), 0.0..max_tp)?
        .set_secondary_coord(x.log_scale(), 0.0..max_time);
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("capacity of each subscription's queue (log scale)")
        .x_label_formatter(&|v| format!("{}", v.round()))
        .y_desc(rate_name)
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(time_name)
        .label_style(("sans-serif", 14))
        .draw()?;
    let throughput = |s: &Step| (s.capacity as f64, s.throughput / rate_div);
    let p99 = |s: &Step| (s.capacity as f64, s.publish_p99.as_secs_f64() / time_div);
    chart
        .draw_series(LineSeries::new(
            steps.iter().map(throughput),
            BLUE.stroke_width(2),
        ))?
        .label("throughput (left axis)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart.draw_series(steps.iter().map(|s| {
        Circle::new(
            throughput(s),
            5,
            if s.filled() {
                BLUE.filled()
            } else {
                BLUE.stroke_width(2)
            },
        )
    }))?;
    chart
        .draw_secondary_series(LineSeries::new(steps.iter().map(p99), RED.stroke_width(2)))?
        .label("publish p99 (right axis)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart.draw_secondary_series(steps.iter().map(|s| {
        Circle::new(
            p99(s),
            5,
            if s.filled() {
                RED.filled()
            } else {
                RED.stroke_width(2)
            },
        )
    }))?;
    // Legend entries for the markers: an empty series carries each label.
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("filled dot: some queue was full")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("hollow dot: no queue filled (capacity did not matter)")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.stroke_width(2)));
    if let Some(c) = tuning.recommended {
        chart
            .draw_series(std::iter::once(PathElement::new(
                [(c as f64, 0.0), (c as f64, max_tp)],
                BLACK.mix(0.4).stroke_width(1),
            )))?
            .label(format!("recommended: {c}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
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
