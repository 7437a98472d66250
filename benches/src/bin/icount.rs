//! Exact instruction counts of tidings' hot paths, for CI: each scenario runs
//! under valgrind's callgrind, which counts the instructions executed inside
//! one function (`icount_measured`, after the scenario's set-up and a
//! warm-up batch), so the count does not move with the machine's load. The
//! counts are held against a committed baseline (`benches/icount.baseline`).
//!
//! ```text
//! cargo run --release -p tidings-benches --bin icount -- check   # CI: fail if a scenario costs > 2 % more
//! cargo run --release -p tidings-benches --bin icount -- bless   # write today's counts as the baseline
//! cargo run --release -p tidings-benches --bin icount -- show    # counts only, baseline untouched
//! ```
//!
//! `check` also fails when a scenario got more than 2 % *cheaper*: a change
//! that makes a path cheaper lowers its baseline in the same commit, so the
//! gate keeps what was won. Scenarios marked `peer` (tokio's channels in the
//! same shapes) are measured for comparison and never gated.
//!
//! Every scenario runs on one thread (a current-thread runtime), so the
//! count is the work of publishing and receiving, not of the scheduler's
//! cross-core hand-offs (those are what `bench_report` times).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tidings::{Bus, Clock, Event, Overflow, Publisher, Subscription, TopicConfig};

/// Events per measured run of a scenario.
const EVENTS: u64 = 8_192;
/// A capacity with room for every measured publish.
const ROOMY: usize = EVENTS as usize * 2;
/// How far a baseline may be off before `check` fails, in per cent.
const TOLERANCE: f64 = 2.0;

/// The payload of every scenario: a shared pointer, as in the benches.
#[derive(Event)]
#[event(topic = "icount.ev")]
struct Ev(Arc<u64>);

type Rt = tokio::runtime::Runtime;

struct Scenario {
    name: &'static str,
    what: &'static str,
    /// Measured for comparison only.
    peer: bool,
    run: fn(&Rt),
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "1to1_stream",
        what: "publish a batch of 256, then receive it from one stream (ring)",
        peer: false,
        run: |rt| fan_out(rt, 1, 256),
    },
    Scenario {
        name: "1to1_mpsc",
        what: "tokio mpsc, same shape, an Arc per send",
        peer: true,
        run: one_to_one_mpsc,
    },
    Scenario {
        name: "1to16_stream",
        what: "publish a batch of 64, then 16 streams each receive it (per event published)",
        peer: false,
        run: |rt| fan_out(rt, 16, 64),
    },
    Scenario {
        name: "1to16_broadcast",
        what: "tokio broadcast, same shape",
        peer: true,
        run: one_to_sixteen_broadcast,
    },
    Scenario {
        name: "handler_c1",
        what:
            "publish a batch of 256 to an async handler at concurrency 1, until it has handled them",
        peer: false,
        run: handler,
    },
    Scenario {
        name: "publish_block",
        what: "publish with room, one Block subscription",
        peer: false,
        run: |rt| publish_only(rt, Overflow::Block, ROOMY, Clock::Precise),
    },
    Scenario {
        name: "publish_fail",
        what: "publish with room, one Fail subscription",
        peer: false,
        run: |rt| publish_only(rt, Overflow::Fail, ROOMY, Clock::Precise),
    },
    Scenario {
        name: "publish_drop_oldest",
        what: "publish into a full DropOldest queue (each publish evicts one)",
        peer: false,
        run: |rt| publish_only(rt, Overflow::DropOldest, 64, Clock::Precise),
    },
    Scenario {
        name: "publish_coarse_clock",
        what: "publish with room, one Block subscription, a topic stamped by Clock::Coarse",
        peer: false,
        run: |rt| publish_only(rt, Overflow::Block, ROOMY, Clock::Coarse),
    },
    Scenario {
        name: "publish_drop_newest",
        what: "publish into a full DropNewest queue (each publish is dropped)",
        peer: false,
        run: |rt| publish_only(rt, Overflow::DropNewest, 64, Clock::Precise),
    },
];

/// The function callgrind counts in: everything `body` executes, on any
/// task the current-thread runtime polls meanwhile.
#[inline(never)]
fn icount_measured(rt: &Rt, body: impl std::future::Future<Output = ()>) {
    rt.block_on(body);
}

/// Runs the round `$round` (an expression making a future) once to warm up,
/// then as many times as make [`EVENTS`] events of `$batch` each, counted.
macro_rules! warm_then_count {
    ($rt:expr, $batch:expr, $round:expr) => {{
        $rt.block_on($round);
        icount_measured($rt, async {
            for _ in 0..EVENTS / $batch {
                $round.await;
            }
        });
    }};
}

fn bus() -> Bus {
    Bus::builder().topic::<Ev>().build().expect("one topic")
}

async fn publish_batch(publisher: &Publisher<Ev>, payload: &Arc<u64>, n: u64) {
    for _ in 0..n {
        publisher
            .publish(Ev(Arc::clone(payload)))
            .await
            .expect("room for the batch");
    }
}

async fn receive_batch(sub: &mut Subscription<Ev>, n: u64) {
    for _ in 0..n {
        let e = sub.recv().await.expect("published");
        std::hint::black_box(&e.0);
    }
}

fn one_to_one_mpsc(rt: &Rt) {
    const BATCH: u64 = 256;
    type Tx = tokio::sync::mpsc::Sender<Arc<Ev>>;
    type Rx = tokio::sync::mpsc::Receiver<Arc<Ev>>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Ev>>(1024);
    let payload = Arc::new(1);
    async fn round(tx: &Tx, payload: &Arc<u64>, rx: &mut Rx) {
        for _ in 0..BATCH {
            let sent = tx.send(Arc::new(Ev(Arc::clone(payload)))).await;
            assert!(sent.is_ok(), "open");
        }
        for _ in 0..BATCH {
            std::hint::black_box(rx.recv().await.expect("sent"));
        }
    }
    warm_then_count!(rt, BATCH, round(&tx, &payload, &mut rx));
}

/// One publisher, `readers` streams: each round publishes a batch, then
/// every stream receives it.
fn fan_out(rt: &Rt, readers: usize, batch: u64) {
    let bus = bus();
    let mut subs: Vec<_> = (0..readers)
        .map(|_| bus.subscribe::<Ev>().stream().expect("subscribe"))
        .collect();
    let publisher = bus.publisher::<Ev>().expect("registered");
    let payload = Arc::new(1);
    async fn round(
        publisher: &Publisher<Ev>,
        payload: &Arc<u64>,
        subs: &mut [Subscription<Ev>],
        batch: u64,
    ) {
        publish_batch(publisher, payload, batch).await;
        for sub in subs.iter_mut() {
            receive_batch(sub, batch).await;
        }
    }
    warm_then_count!(rt, batch, round(&publisher, &payload, &mut subs, batch));
}

fn one_to_sixteen_broadcast(rt: &Rt) {
    const BATCH: u64 = 64;
    type Tx = tokio::sync::broadcast::Sender<Arc<Ev>>;
    type Rx = tokio::sync::broadcast::Receiver<Arc<Ev>>;
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<Ev>>(1024);
    let mut rxs: Vec<_> = (0..16).map(|_| tx.subscribe()).collect();
    let payload = Arc::new(1);
    async fn round(tx: &Tx, payload: &Arc<u64>, rxs: &mut [Rx]) {
        for _ in 0..BATCH {
            assert!(tx.send(Arc::new(Ev(Arc::clone(payload)))).is_ok(), "open");
        }
        for rx in rxs.iter_mut() {
            for _ in 0..BATCH {
                std::hint::black_box(rx.recv().await.expect("sent"));
            }
        }
    }
    warm_then_count!(rt, BATCH, round(&tx, &payload, &mut rxs));
}

fn handler(rt: &Rt) {
    const BATCH: u64 = 256;
    let bus = bus();
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let target = Arc::new(AtomicU64::new(BATCH));
    let _handle = rt.block_on(async {
        let (handled, done, target) = (handled.clone(), done.clone(), target.clone());
        bus.subscribe::<Ev>()
            .concurrency(1)
            .handler(move |e: tidings::Envelope<Ev>| {
                let (handled, done, target) = (handled.clone(), done.clone(), target.clone());
                async move {
                    std::hint::black_box(&e.0);
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == target.load(Ordering::Relaxed)
                    {
                        done.notify_one();
                    }
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .expect("subscribe")
    });
    let publisher = bus.publisher::<Ev>().expect("registered");
    let payload = Arc::new(1);
    async fn round(publisher: &Publisher<Ev>, payload: &Arc<u64>, done: &tokio::sync::Notify) {
        publish_batch(publisher, payload, BATCH).await;
        done.notified().await;
    }
    rt.block_on(round(&publisher, &payload, &done));
    icount_measured(rt, async {
        for _ in 0..EVENTS / BATCH {
            target.fetch_add(BATCH, Ordering::Relaxed);
            round(&publisher, &payload, &done).await;
        }
    });
}

/// Publishes only, into one stream subscription under `overflow` with
/// `capacity`, on a topic stamped by `clock`.
fn publish_only(rt: &Rt, overflow: Overflow, capacity: usize, clock: Clock) {
    let bus = Bus::builder()
        .topic_with::<Ev>(TopicConfig::default().clock(clock))
        .build()
        .expect("one topic");
    let _sub = bus
        .subscribe::<Ev>()
        .capacity(capacity)
        .overflow(overflow)
        .stream()
        .expect("subscribe");
    let publisher = bus.publisher::<Ev>().expect("registered");
    let payload = Arc::new(1);
    // Warm-up: fills the lossy queues, so that every measured publish meets
    // a full one.
    rt.block_on(publish_batch(&publisher, &payload, 256));
    icount_measured(rt, publish_batch(&publisher, &payload, EVENTS));
}

/// One scenario's count, per event.
fn measure(exe: &Path, scenario: &Scenario) -> Result<f64, String> {
    let out = std::env::temp_dir().join(format!(
        "tidings-icount-{}-{}.out",
        std::process::id(),
        scenario.name
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*icount_measured*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["run", scenario.name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run valgrind ({e}): is it installed?"))?;
    if !status.success() {
        return Err(format!("{} failed under valgrind: {status}", scenario.name));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no total in callgrind's output for {}", scenario.name))?;
    if total == 0 {
        return Err(format!(
            "{}: nothing counted (was icount_measured inlined?)",
            scenario.name
        ));
    }
    Ok(total as f64 / EVENTS as f64)
}

fn baseline_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("icount.baseline")
}

/// `name instructions-per-event` per line; `#` starts a comment.
fn read_baseline(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

fn write_baseline(path: &Path, counts: &[(&Scenario, f64)]) -> std::io::Result<()> {
    let mut text = String::from(
        "# Instructions per event of each gated scenario, as callgrind counts them\n\
         # (`cargo run --release -p tidings-benches --bin icount -- bless`).\n",
    );
    for (scenario, count) in counts.iter().filter(|(s, _)| !s.peer) {
        text.push_str(&format!("{} {count:.1}\n", scenario.name));
    }
    std::fs::write(path, text)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("show");
    if mode == "run" {
        let Some(scenario) = args
            .get(1)
            .and_then(|n| SCENARIOS.iter().find(|s| s.name == n))
        else {
            eprintln!("usage: icount run <scenario>");
            return ExitCode::FAILURE;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        (scenario.run)(&rt);
        return ExitCode::SUCCESS;
    }
    if !matches!(mode, "check" | "bless" | "show") {
        eprintln!("usage: icount [check | bless | show | run <scenario>]");
        return ExitCode::FAILURE;
    }
    let only: Vec<&String> = args.iter().skip(1).collect();
    let exe = std::env::current_exe().expect("own path");
    let path = baseline_path();
    let baseline = read_baseline(&path);
    let mut counts = Vec::new();
    let mut failed = false;
    println!("| scenario | instructions / event | baseline | change |");
    println!("|---|---:|---:|---:|");
    for scenario in SCENARIOS {
        if !only.is_empty() && !only.iter().any(|n| *n == scenario.name) {
            continue;
        }
        let count = match measure(&exe, scenario) {
            Ok(count) => count,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        counts.push((scenario, count));
        let (base, change) = match baseline.get(scenario.name) {
            _ if scenario.peer => ("peer".to_string(), String::new()),
            Some(&base) => {
                let change = (count / base - 1.0) * 100.0;
                let verdict = if change > TOLERANCE {
                    failed = true;
                    " costlier: FAIL"
                } else if change < -TOLERANCE {
                    failed = true;
                    " cheaper: lower the baseline (bless)"
                } else {
                    ""
                };
                (format!("{base:.1}"), format!("{change:+.2} %{verdict}"))
            }
            None => {
                failed = true;
                ("none".to_string(), "no baseline: bless".to_string())
            }
        };
        println!("| {} | {count:.1} | {base} | {change} |", scenario.name);
    }
    println!();
    for scenario in SCENARIOS {
        println!("- `{}`: {}", scenario.name, scenario.what);
    }
    match mode {
        "bless" => {
            if !only.is_empty() {
                // Keep the other scenarios' lines.
                let mut all: Vec<(&Scenario, f64)> = SCENARIOS
                    .iter()
                    .filter_map(|s| baseline.get(s.name).map(|&c| (s, c)))
                    .collect();
                for (s, c) in &counts {
                    match all.iter_mut().find(|(t, _)| t.name == s.name) {
                        Some(entry) => entry.1 = *c,
                        None => all.push((s, *c)),
                    }
                }
                counts = all;
            }
            if let Err(e) = write_baseline(&path, &counts) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("\nbaseline written to {}", path.display());
            ExitCode::SUCCESS
        }
        "check" if failed => {
            println!("\nicount: a scenario is off its baseline by more than {TOLERANCE} %");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}
