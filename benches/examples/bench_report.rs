//! One command, one comparison: S1 (1→1), S2 (1→16 and 1→64 fan-out), S3
//! (M→N: 2→1, 2→8, 4→8) and S4 (isolation from a slow subscriber) over
//! tidings and its peers, in five
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
    AsyncBroadcast, Contender, Flume, Jaeb, Kanal, Shape, TidingsBlock, TidingsCoarse,
    TidingsDropOldest, TokioBroadcast, TokioMpsc,
};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Rounds: 5, or `--rounds N` (at least 1; `--rounds 1` to try the
/// program out, not to measure).
fn rounds() -> usize {
    static ROUNDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROUNDS.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--rounds")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(5usize)
            .max(1)
    })
}
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

/// Runs every case once per round, [`rounds`] rounds, so that a change in the
/// shared VM's speed between minutes hits every contender alike; the ratio
/// to tidings compares runs of the same round.
fn measure(rt: &tokio::runtime::Runtime, cases: &[Case]) -> Vec<Row> {
    let mut rates = vec![Vec::with_capacity(rounds()); cases.len()];
    for round in 0..rounds() {
        eprintln!("  round {} of {}", round + 1, rounds());
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
                rate: common::median(own.clone()),
                ratio: common::median(ratios),
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

const TIDINGS: RGBColor = RGBColor(31, 96, 196);
const TIDINGS_LOSSY: RGBColor = RGBColor(140, 180, 235);
const PEER: RGBColor = RGBColor(110, 110, 110);
const PEER_LOSSY: RGBColor = RGBColor(195, 195, 195);

/// One horizontal bar: its label, its value, its colour.
struct Bar {
    label: String,
    value: f64,
    color: RGBColor,
}

/// A panel of horizontal bars with the value written at each bar's end and
/// a legend of `keys` (colour, meaning) in its lower right corner.
fn bars(
    panel: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    decimals: usize,
    data: &[Bar],
    keys: &[(RGBColor, &str)],
) -> Result<(), Box<dyn std::error::Error>> {
    let max = data.iter().map(|b| b.value).fold(0.0, f64::max);
    // Room right of the longest bar for its number and for the legend.
    let mut c = ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(290)
        // `0..n - 1` segmented is n rows: one per bar, none left empty.
        .build_cartesian_2d(
            0.0..max * 1.45,
            (0..data.len().saturating_sub(1)).into_segmented(),
        )?;
    c.configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(data.len())
        .y_label_style(("sans-serif", 15))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => data.get(*i).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(unit)
        .x_label_style(("sans-serif", 13))
        .draw()?;
    for (color, meaning) in keys {
        let color = *color;
        c.draw_series(
            data.iter()
                .enumerate()
                .filter(|(_, b)| b.color == color)
                .map(|(i, b)| {
                    Rectangle::new(
                        [
                            (0.0, SegmentValue::Exact(i)),
                            (b.value, SegmentValue::Exact(i + 1)),
                        ],
                        color.filled(),
                    )
                }),
        )?
        .label(*meaning)
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    // A white rim around each bar sets it apart from its neighbours.
    c.draw_series(data.iter().enumerate().map(|(i, b)| {
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (b.value, SegmentValue::Exact(i + 1)),
            ],
            WHITE.stroke_width(6),
        )
    }))?;
    c.draw_series(data.iter().enumerate().map(|(i, b)| {
        let text = format!(" {:.decimals$}", b.value);
        Text::new(
            text,
            (b.value, SegmentValue::CenterOf(i)),
            TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Every scenario the report prints: S1 to S3 as deliveries per second,
/// S4 as the latencies of the median pair.
fn chart(
    rows: &[Row],
    isolation: (common::Isolation, common::Isolation),
    path: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let scenarios = ["S1 1→1", "S2 1→16", "S2 1→64", "S3 2→1", "S3 2→8", "S3 4→8"];
    let height = 200 + 60 * rows.len() as u32 + 380;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    // Each panel as tall as its bars; S4 last.
    let mut heights: Vec<u32> = scenarios
        .iter()
        .map(|s| 110 + 42 * rows.iter().filter(|r| r.scenario == *s).count() as u32)
        .collect();
    heights.push(380);
    let mut panels = Vec::new();
    let mut rest = root.clone();
    for h in &heights[..heights.len() - 1] {
        let (top, bottom) = rest.split_vertically(*h);
        panels.push(top);
        rest = bottom;
    }
    panels.push(rest);
    let keys = [
        (TIDINGS, "tidings, lossless"),
        (TIDINGS_LOSSY, "tidings, lossy"),
        (PEER, "peer, lossless"),
        (PEER_LOSSY, "peer, lossy"),
    ];
    for (panel, scenario) in panels.iter().zip(scenarios) {
        let data: Vec<Bar> = rows
            .iter()
            .filter(|r| r.scenario == scenario)
            .map(|r| Bar {
                label: r.name.to_owned(),
                value: r.rate / 1e6,
                color: match (r.name.starts_with("tidings"), r.lossless) {
                    (true, true) => TIDINGS,
                    (true, false) => TIDINGS_LOSSY,
                    (false, true) => PEER,
                    (false, false) => PEER_LOSSY,
                },
            })
            .collect();
        let used: Vec<(RGBColor, &str)> = keys
            .iter()
            .copied()
            .filter(|(c, _)| data.iter().any(|b| b.color == *c))
            .collect();
        bars(
            panel,
            &format!(
                "{scenario}: deliveries per second (median of {} round(s))",
                rounds()
            ),
            "million deliveries per second",
            2,
            &data,
            &used,
        )?;
    }
    let (quiet, noisy) = isolation;
    const ALONE: RGBColor = RGBColor(140, 180, 235);
    const BESIDE_SLOW: RGBColor = TIDINGS;
    let mut data = Vec::new();
    for (what, q, n) in [
        ("fast readers' p50", quiet.fast_p50_us, noisy.fast_p50_us),
        ("fast readers' p99", quiet.fast_p99_us, noisy.fast_p99_us),
        ("publish p99", quiet.publish_p99_us, noisy.publish_p99_us),
    ] {
        data.push(Bar {
            label: format!("{what}, alone"),
            value: q as f64,
            color: ALONE,
        });
        data.push(Bar {
            label: format!("{what}, beside the slow one"),
            value: n as f64,
            color: BESIDE_SLOW,
        });
    }
    bars(
        &panels[scenarios.len()],
        &format!(
            "S4 isolation: 15 fast readers, with and without a slow one (the median of {} pair(s))",
            rounds()
        ),
        "microseconds (lower is better)",
        0,
        &data,
        &[
            (ALONE, "15 fast readers alone"),
            (BESIDE_SLOW, "beside 1 slow reader (1 ms CPU/event)"),
        ],
    )?;
    root.present()?;
    Ok(())
}

/// The throughput goals of tidings (issue "hot path v3"), each checked
/// against the median of the ratios of runs made in the same round; where
/// a goal names several peers, against the fastest of them.
fn goals(rows: &[Row]) {
    let ratio = |scenario: &str, peer: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.name == peer)
            .map(|r| 1.0 / r.ratio)
    };
    // tidings ÷ the fastest of `peers`: the lowest of the ratios.
    let against_best = |scenario: &str, peers: &[&str]| {
        peers
            .iter()
            .filter_map(|peer| ratio(scenario, peer))
            .min_by(f64::total_cmp)
    };
    println!("\n| goal | tidings (Block) ÷ peer, median of the rounds | met |");
    println!("|---|---:|---|");
    let raw_1to1 = [TokioMpsc::NAME, Flume::NAME, Kanal::NAME];
    for (goal, scenario, peers, at_least) in [
        (
            "1→1 at least 1.0× the fastest of tokio mpsc, flume, kanal",
            "S1 1→1",
            &raw_1to1[..],
            1.0,
        ),
        ("1→1 at least 8× jaeb", "S1 1→1", &[Jaeb::NAME][..], 8.0),
        (
            "1→16 lossless at least 1.0× tokio broadcast",
            "S2 1→16",
            &[TokioBroadcast::NAME][..],
            1.0,
        ),
        (
            "1→64 lossless at least 1.0× tokio broadcast",
            "S2 1→64",
            &[TokioBroadcast::NAME][..],
            1.0,
        ),
        (
            "2→1 at least 1.0× tokio mpsc",
            "S3 2→1",
            &[TokioMpsc::NAME][..],
            1.0,
        ),
    ] {
        if let Some(r) = against_best(scenario, peers) {
            let met = if r >= at_least { "yes" } else { "**no**" };
            println!("| {goal} | {r:.2}× | {met} |");
        }
    }
    // What the precise timestamp costs 1→1: the same goal with the coarse
    // clock, for comparison.
    let coarse = rows
        .iter()
        .find(|r| r.scenario == "S1 1→1" && r.name == TidingsCoarse::NAME);
    if let (Some(coarse), Some(mpsc)) = (coarse, ratio("S1 1→1", TokioMpsc::NAME)) {
        println!(
            "| (1→1 with `Clock::Coarse`: about {:.2}× tokio mpsc, the product of the two medians) | | |",
            coarse.ratio * mpsc
        );
    }
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
    let wide = Shape {
        subscribers: 64,
        per_publisher: EVENTS / 4,
        ..one
    };
    // M→N: the same events in all, split between the publishers.
    let many = |publishers: usize, subscribers: usize| Shape {
        publishers,
        subscribers,
        capacity: 1024,
        per_publisher: EVENTS / publishers as u64,
    };
    eprintln!(
        "measuring ({} rounds, every contender once per round)…",
        rounds()
    );
    let rows = measure(
        &rt,
        &[
            case::<TidingsBlock>("S1 1→1", one),
            case::<TidingsCoarse>("S1 1→1", one),
            case::<TokioMpsc>("S1 1→1", one),
            case::<Flume>("S1 1→1", one),
            case::<Kanal>("S1 1→1", one),
            case::<Jaeb>("S1 1→1", one),
            case::<TidingsBlock>("S2 1→16", fan),
            case::<TidingsDropOldest>("S2 1→16", fan),
            case::<TokioBroadcast>("S2 1→16", fan),
            case::<AsyncBroadcast>("S2 1→16", fan),
            case::<TokioMpsc>("S2 1→16", fan),
            case::<Jaeb>("S2 1→16", fan),
            case::<TidingsBlock>("S2 1→64", wide),
            case::<TokioBroadcast>("S2 1→64", wide),
            case::<AsyncBroadcast>("S2 1→64", wide),
            case::<TidingsBlock>("S3 2→1", many(2, 1)),
            case::<TokioMpsc>("S3 2→1", many(2, 1)),
            case::<Flume>("S3 2→1", many(2, 1)),
            case::<Kanal>("S3 2→1", many(2, 1)),
            case::<TidingsBlock>("S3 2→8", many(2, 8)),
            case::<TokioBroadcast>("S3 2→8", many(2, 8)),
            case::<TokioMpsc>("S3 2→8", many(2, 8)),
            case::<TidingsBlock>("S3 4→8", many(4, 8)),
            case::<TokioBroadcast>("S3 4→8", many(4, 8)),
            case::<TokioMpsc>("S3 4→8", many(4, 8)),
        ],
    );
    // S4 in interleaved pairs (alone, then with the slow subscriber): one
    // pair's tail is at the mercy of the VM's scheduler, so the report gives
    // the median pair and the spread of the ratio.
    let mut pairs: Vec<(common::Isolation, common::Isolation)> = (0..rounds())
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
    println!("tidings bench report: {cores} cores, multi-thread runtime\n");
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
         (the median of {} interleaved pairs, shown above; all pairs {lowest:.2}×–{highest:.2}×).",
        rounds()
    );
    goals(&rows);
    std::fs::create_dir_all("target")?;
    chart(&rows, (quiet, noisy), "target/bench_report.svg")?;
    println!("chart: target/bench_report.svg");
    Ok(())
}
