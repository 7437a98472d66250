//! One command, one comparison: S1 (1→1), S2 (1→16 fan-out) and S4
//! (isolation from a slow subscriber) over tidings and its peers, in five
//! rounds that run every contender once each (medians; ratios compare runs
//! of the same round, with their spread), printed as a markdown table and
//! drawn as an SVG bar chart in `target/bench_report.svg`.
//!
//! `cargo run --release -p tidings-benches --example bench_report`
//!
//! The criterion benches (`cargo bench -p tidings-benches --bench throughput`) run the full
//! matrix with statistics; this is the quick side-by-side view.

use tidings_benches as common;

use std::time::Duration;

use common::{
    AsyncBroadcast, Contender, Flume, Jaeb, Shape, TidingsBlock, TidingsCoarse, TidingsDropOldest,
    TokioBroadcast, TokioMpsc,
};
use plotters::prelude::*;

const RUNS: usize = 5;
const EVENTS: u64 = 20_000;

struct Row {
    scenario: &'static str,
    name: &'static str,
    lossless: bool,
    /// Deliveries per second: the median of the runs.
    rate: f64,
    /// To tidings (Block) in the same scenario: the median of the ratios
    /// of runs made back to back.
    ratio: f64,
    /// The lowest and highest of those ratios.
    spread: (f64, f64),
}

/// One contender in one scenario.
struct Case {
    scenario: &'static str,
    name: &'static str,
    lossless: bool,
    shape: Shape,
    run: fn(&tokio::runtime::Runtime, Shape) -> f64,
}

fn case<C: Contender>(scenario: &'static str, shape: Shape) -> Case {
    Case {
        scenario,
        name: C::NAME,
        lossless: C::LOSSLESS,
        shape,
        run: once::<C>,
    }
}

/// Deliveries per second of one run.
fn once<C: Contender>(rt: &tokio::runtime::Runtime, shape: Shape) -> f64 {
    let took = rt.block_on(async { tokio::spawn(C::run::<8>(shape)).await.expect("run") });
    shape.deliveries() as f64 / took.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs every case once per round, `RUNS` rounds, so that a change in the
/// shared VM's speed between minutes hits every contender alike; the ratio
/// to tidings compares runs of the same round.
fn measure(rt: &tokio::runtime::Runtime, cases: &[Case]) -> Vec<Row> {
    let mut rates = vec![Vec::with_capacity(RUNS); cases.len()];
    for round in 0..RUNS {
        eprintln!("  round {} of {RUNS}", round + 1);
        for (case, rates) in cases.iter().zip(&mut rates) {
            rates.push((case.run)(rt, case.shape));
        }
    }
    cases
        .iter()
        .zip(&rates)
        .map(|(case, own)| {
            let base = cases
                .iter()
                .position(|b| b.scenario == case.scenario && b.name == TidingsBlock::NAME)
                .map_or(own, |i| &rates[i]);
            let ratios: Vec<f64> = own.iter().zip(base).map(|(o, b)| o / b).collect();
            let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = ratios.iter().copied().fold(0.0, f64::max);
            let row = Row {
                scenario: case.scenario,
                name: case.name,
                lossless: case.lossless,
                rate: median(own.clone()),
                ratio: median(ratios),
                spread: (lowest, highest),
            };
            eprintln!(
                "  {} {}: {:.2} M/s, {:.2}× tidings",
                row.scenario,
                row.name,
                row.rate / 1e6,
                row.ratio
            );
            row
        })
        .collect()
}

fn chart(rows: &[Row], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, scenario) in panels.iter().zip(["S1 1→1", "S2 1→16"]) {
        let data: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        let max = data.iter().map(|r| r.rate / 1e6).fold(0.0, f64::max) * 1.15;
        let mut c = ChartBuilder::on(panel)
            .caption(
                format!("{scenario}: M deliveries/s (median of {RUNS})"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(110)
            .y_label_area_size(45)
            .build_cartesian_2d((0..data.len()).into_segmented(), 0.0..max)?;
        let labels: Vec<String> = data
            .iter()
            .map(|r| format!("{}{}", r.name, if r.lossless { "" } else { " (lossy)" }))
            .collect();
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(data.len())
            .x_label_style(
                ("sans-serif", 11)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        c.draw_series(data.iter().enumerate().map(|(i, r)| {
            let color = if r.name.starts_with("tidings") {
                BLUE
            } else {
                RGBColor(150, 150, 150)
            };
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), r.rate / 1e6),
                ],
                color.filled(),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let one = Shape {
        publishers: 1,
        subscribers: 1,
        capacity: 1024,
        per_publisher: EVENTS,
    };
    let fan = Shape {
        subscribers: 16,
        ..one
    };
    eprintln!("measuring ({RUNS} rounds, every contender once per round)…");
    let rows = measure(
        &rt,
        &[
            case::<TidingsBlock>("S1 1→1", one),
            case::<TidingsCoarse>("S1 1→1", one),
            case::<TokioMpsc>("S1 1→1", one),
            case::<Flume>("S1 1→1", one),
            case::<Jaeb>("S1 1→1", one),
            case::<TidingsBlock>("S2 1→16", fan),
            case::<TidingsDropOldest>("S2 1→16", fan),
            case::<TokioBroadcast>("S2 1→16", fan),
            case::<AsyncBroadcast>("S2 1→16", fan),
            case::<TokioMpsc>("S2 1→16", fan),
            case::<Jaeb>("S2 1→16", fan),
        ],
    );
    // S4 in interleaved pairs (alone, then with the slow subscriber): one
    // pair's tail is at the mercy of the VM's scheduler, so the report gives
    // the median pair and the spread of the ratio.
    let mut pairs: Vec<(common::Isolation, common::Isolation)> = (0..RUNS)
        .map(|_| {
            let quiet = rt.block_on(common::isolation(2_000, Duration::from_micros(200), None));
            let noisy = rt.block_on(common::isolation(
                2_000,
                Duration::from_micros(200),
                Some(Duration::from_millis(1)),
            ));
            (quiet, noisy)
        })
        .collect();
    let ratio = |(q, n): &(common::Isolation, common::Isolation)| {
        n.fast_p99_us as f64 / q.fast_p99_us.max(1) as f64
    };
    pairs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let (lowest, highest) = (ratio(&pairs[0]), ratio(&pairs[pairs.len() - 1]));
    let median = ratio(&pairs[pairs.len() / 2]);
    let (quiet, noisy) = pairs.swap_remove(pairs.len() / 2);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "tidings {} — {cores} cores, multi-thread runtime\n",
        env!("CARGO_PKG_VERSION")
    );
    println!("| scenario | implementation | deliveries/s | vs tidings (Block) | lossless | p99 |");
    println!("|---|---|---:|---:|---|---:|");
    for r in &rows {
        let spread = if r.name == TidingsBlock::NAME {
            String::new()
        } else {
            format!(" ({:.2}–{:.2})", r.spread.0, r.spread.1)
        };
        println!(
            "| {} | {} | {:.2} M | {:.2}×{spread} | {} | |",
            r.scenario,
            r.name,
            r.rate / 1e6,
            r.ratio,
            if r.lossless { "yes" } else { "no" }
        );
    }
    for (label, iso) in [
        ("15 fast readers alone", quiet),
        ("15 fast + 1 slow (1 ms CPU/event)", noisy),
    ] {
        println!(
            "| S4 isolation | tidings: {label} | fast p50 {} µs | | yes (fast) | fast p99 {} µs, publish p99 {} µs |",
            iso.fast_p50_us, iso.fast_p99_us, iso.publish_p99_us
        );
    }
    println!(
        "\nS4: the fast readers' p99 with the slow one is {median:.2}× their p99 without it \
         (the median of {RUNS} interleaved pairs, shown above; all pairs {lowest:.2}×–{highest:.2}×)."
    );
    std::fs::create_dir_all("target")?;
    chart(&rows, "target/bench_report.svg")?;
    println!("chart: target/bench_report.svg");
    Ok(())
}
