//! Durable publishes side by side with a real Redis, in one run: `XADD` of
//! 256-byte entries at `appendfsync always` and `appendfsync everysec`
//! against tidings' durable publish at *synced* and *written*, with 1, 8
//! and 64 concurrent publishers. Each round measures every setup for the
//! same time, one after another; the report gives events/s and the p50/p99
//! of one publish, and each tidings figure as a ratio to Redis's in the
//! same round, median of the rounds.
//!
//! Run it with `scripts/durable-bench` (installs `redis-server` from the
//! system's packages when missing); this binary starts its own Redis on
//! 127.0.0.1 with a temporary directory and stops it.
//!
//! Usage: durable_bench [--rounds N] [--secs S] [--publishers 1,8,64]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tidings::{Bus, Event};
use tidings_benches::median;
use tidings_durable::{Ack, DurableTopics, Store, TopicOptions};

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "bench.jobs")]
struct Job {
    body: String,
}

/// A 256-byte event (its JSON form).
fn job() -> Job {
    Job {
        body: "x".repeat(256 - r#"{"body":""}"#.len()),
    }
}

struct Redis {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let port = free_port();
        std::fs::create_dir_all(dir).expect("redis dir");
        let mut child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--dir",
                dir.to_str().expect("utf-8 path"),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/durable-bench, which installs it)");
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Redis {
                    child,
                    port,
                    _dir: dir.to_owned(),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start");
    }

    fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut c = Conn::new(self.port);
        c.send(args);
        c.reply()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

/// One RESP connection.
struct Conn {
    out: TcpStream,
    inp: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Conn {
            inp: BufReader::new(s.try_clone().expect("clone")),
            out: s,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, args: &[&[u8]]) {
        self.buf.clear();
        write!(self.buf, "*{}\r\n", args.len()).expect("vec");
        for a in args {
            write!(self.buf, "${}\r\n", a.len()).expect("vec");
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.out.write_all(&self.buf).expect("send");
    }

    /// One reply: a simple string, an error, an integer or a bulk string.
    fn reply(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.inp.read_until(b'\n', &mut line).expect("reply");
        match line.first() {
            Some(b'$') => {
                let n: i64 = std::str::from_utf8(&line[1..line.len() - 2])
                    .expect("len")
                    .parse()
                    .expect("len");
                if n < 0 {
                    return Vec::new();
                }
                let mut body = vec![0; n as usize + 2];
                self.inp.read_exact(&mut body).expect("bulk");
                body.truncate(n as usize);
                body
            }
            Some(b'-') => panic!("redis: {}", String::from_utf8_lossy(&line)),
            _ => line,
        }
    }
}

/// What one setup did in one round.
struct Run {
    rate: f64,
    lat: Histogram<u64>,
}

impl Run {
    /// The publishers' counts and latencies over `secs`, together.
    fn of(parts: impl Iterator<Item = (u64, Histogram<u64>)>, secs: Duration) -> Run {
        let mut total = 0;
        let mut lat = Histogram::<u64>::new(3).expect("hist");
        for (n, l) in parts {
            total += n;
            lat.add(l).expect("merge");
        }
        Run {
            rate: total as f64 / secs.as_secs_f64(),
            lat,
        }
    }
}

fn redis_run(redis: &Redis, publishers: usize, secs: Duration) -> Run {
    let payload = serde_json::to_vec(&job()).expect("json");
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..publishers)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let payload = payload.clone();
            let port = redis.port;
            std::thread::spawn(move || {
                let mut c = Conn::new(port);
                let mut lat = Histogram::<u64>::new(3).expect("hist");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    c.send(&[b"XADD", b"jobs", b"*", b"d", &payload]);
                    c.reply();
                    let _ = lat.record(t.elapsed().as_micros() as u64);
                    n += 1;
                }
                (n, lat)
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    Run::of(
        threads.into_iter().map(|t| t.join().expect("publisher")),
        secs,
    )
}

fn tidings_run(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    ack: Ack,
    publishers: usize,
    secs: Duration,
) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    rt.block_on(async {
        let store = Store::open(dir).expect("store");
        let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
        let jobs = store
            .topic_with::<Job>(&bus, TopicOptions::default().ack(ack))
            .expect("topic");
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..publishers)
            .map(|_| {
                let jobs = jobs.clone();
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut lat = Histogram::<u64>::new(3).expect("hist");
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        jobs.publish(job()).await.expect("stored");
                        let _ = lat.record(t.elapsed().as_micros() as u64);
                        n += 1;
                        if n % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    (n, lat)
                })
            })
            .collect();
        tokio::time::sleep(secs).await;
        stop.store(true, Ordering::Relaxed);
        let mut parts = Vec::with_capacity(tasks.len());
        for t in tasks {
            parts.push(t.await.expect("publisher"));
        }
        store.close().expect("close");
        Run::of(parts.into_iter(), secs)
    })
}

/// `fdatasync` alone: 256-byte writes into a preallocated file, each
/// synced, for `secs`; the latency of each sync.
fn fdatasync_alone(dir: &Path, secs: Duration) -> Histogram<u64> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("fdatasync");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("file");
    let zeros = vec![0u8; 1 << 20];
    for i in 0..64u64 {
        file.write_all_at(&zeros, i << 20).expect("preallocate");
    }
    file.sync_all().expect("sync");
    let mut lat = Histogram::<u64>::new(3).expect("hist");
    let began = Instant::now();
    let mut at = 0u64;
    while began.elapsed() < secs {
        file.write_all_at(&[7u8; 256], at % (64 << 20))
            .expect("write");
        at += 256;
        let t = Instant::now();
        file.sync_data().expect("fdatasync");
        let _ = lat.record(t.elapsed().as_micros() as u64);
    }
    let _ = std::fs::remove_file(&path);
    lat
}

/// Synced publishes from `publishers` tasks pacing themselves to `rate`
/// events/s in all: the latency of one publish at that load.
fn paced_run(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    publishers: usize,
    rate: f64,
    secs: Duration,
) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    rt.block_on(async {
        let store = Store::open(dir).expect("store");
        let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
        let jobs = store.topic::<Job>(&bus).expect("topic");
        // Let the first segment give way to a preallocated one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        jobs.publish(job()).await.expect("stored");
        let gap = Duration::from_secs_f64(publishers as f64 / rate);
        let began = Instant::now();
        let tasks: Vec<_> = (0..publishers)
            .map(|i| {
                let jobs = jobs.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(
                        tokio::time::Instant::now() + gap.mul_f64(i as f64 / publishers as f64),
                        gap,
                    );
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut lat = Histogram::<u64>::new(3).expect("hist");
                    let mut n = 0u64;
                    while began.elapsed() < secs {
                        tick.tick().await;
                        let t = Instant::now();
                        jobs.publish(job()).await.expect("stored");
                        let _ = lat.record(t.elapsed().as_micros() as u64);
                        n += 1;
                    }
                    (n, lat)
                })
            })
            .collect();
        let mut parts = Vec::with_capacity(tasks.len());
        for t in tasks {
            parts.push(t.await.expect("publisher"));
        }
        store.close().expect("close");
        Run::of(parts.into_iter(), secs)
    })
}

/// Fills a written topic with `mib` MiB of 256-byte events, closes it, and
/// times opening it again (recovery).
fn recovery(rt: &tokio::runtime::Runtime, dir: &Path, mib: u64) -> (Duration, usize, u64) {
    let _ = std::fs::remove_dir_all(dir);
    rt.block_on(async {
        {
            let store = Store::open(dir).expect("store");
            let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
            let jobs = store
                .topic_with::<Job>(&bus, TopicOptions::default().ack(Ack::Written))
                .expect("topic");
            while jobs.stats().bytes < mib << 20 {
                for _ in 0..10_000 {
                    jobs.publish(job()).await.expect("stored");
                }
            }
            store.close().expect("close");
        }
        let store = Store::open(dir).expect("store");
        let bus = Bus::builder().durable_topic::<Job>().build().expect("bus");
        let t = Instant::now();
        let jobs = store.topic::<Job>(&bus).expect("topic");
        let took = t.elapsed();
        let stats = jobs.stats();
        (took, stats.segments, stats.bytes)
    })
}

fn main() {
    let mut rounds = 5;
    let mut secs = 2.0;
    let mut pubs = vec![1usize, 8, 64];
    let mut recovery_mib = 256;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(rounds),
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).unwrap_or(secs),
            "--recovery-mib" => {
                recovery_mib = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(recovery_mib)
            }
            "--publishers" => {
                pubs = args
                    .next()
                    .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
                    .unwrap_or(pubs)
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let secs = Duration::from_secs_f64(secs);
    let base = std::env::temp_dir().join(format!("tidings-durable-bench-{}", std::process::id()));
    let redis = Redis::start(&base.join("redis"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let setups = [
        "redis always",
        "redis everysec",
        "tidings synced",
        "tidings written",
    ];
    // results[setup][publishers index] = runs per round
    let mut results: Vec<Vec<Vec<Run>>> = (0..setups.len())
        .map(|_| (0..pubs.len()).map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        for (pi, &p) in pubs.iter().enumerate() {
            for (si, setup) in setups.iter().enumerate() {
                let run = match *setup {
                    "redis always" => {
                        redis.command(&[b"CONFIG", b"SET", b"appendfsync", b"always"]);
                        redis.command(&[b"DEL", b"jobs"]);
                        redis_run(&redis, p, secs)
                    }
                    "redis everysec" => {
                        redis.command(&[b"CONFIG", b"SET", b"appendfsync", b"everysec"]);
                        redis.command(&[b"DEL", b"jobs"]);
                        redis_run(&redis, p, secs)
                    }
                    "tidings synced" => {
                        tidings_run(&rt, &base.join("tidings"), Ack::Synced, p, secs)
                    }
                    _ => tidings_run(&rt, &base.join("tidings"), Ack::Written, p, secs),
                };
                eprintln!("round {round}: {setup:<15} {p:>2} publishers: {:>9.0} events/s, p50 {} µs, p99 {} µs",
                    run.rate, run.lat.value_at_quantile(0.5), run.lat.value_at_quantile(0.99));
                results[si][pi].push(run);
            }
        }
    }
    drop(redis);
    // The synced publish at half of its peak, against the disk's own sync.
    let last = pubs.len() - 1;
    let peak = median(results[2][last].iter().map(|r| r.rate).collect());
    let half = paced_run(
        &rt,
        &base.join("tidings"),
        pubs[last],
        peak / 2.0,
        secs.max(Duration::from_secs(3)),
    );
    let alone = fdatasync_alone(&base.join("sync"), secs.max(Duration::from_secs(3)));
    let (took, segments, bytes) = recovery(&rt, &base.join("tidings"), recovery_mib);
    let _ = std::fs::remove_dir_all(&base);
    println!("Durable publishes, 256-byte events, {rounds} rounds of {:.1} s each; medians of the rounds.", secs.as_secs_f64());
    println!("Ratios are taken inside each round (the machine's speed shifts), then the median.\n");
    println!("| setup | publishers | events/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|");
    for (si, setup) in setups.iter().enumerate() {
        for (pi, p) in pubs.iter().enumerate() {
            let runs = &results[si][pi];
            println!(
                "| {setup} | {p} | {:.0} | {:.0} | {:.0} |",
                median(runs.iter().map(|r| r.rate).collect()),
                median(
                    runs.iter()
                        .map(|r| r.lat.value_at_quantile(0.5) as f64)
                        .collect()
                ),
                median(
                    runs.iter()
                        .map(|r| r.lat.value_at_quantile(0.99) as f64)
                        .collect()
                )
            );
        }
    }
    println!(
        "\nA synced publish at half of the peak of {} publishers ({:.0} of {:.0} events/s): p50 {} µs, p99 {} µs; fdatasync alone: p50 {} µs, p99 {} µs (goal: p99 within 1 ms of it: {}).",
        pubs[last],
        half.rate,
        peak,
        half.lat.value_at_quantile(0.5),
        half.lat.value_at_quantile(0.99),
        alone.value_at_quantile(0.5),
        alone.value_at_quantile(0.99),
        if half.lat.value_at_quantile(0.99) <= alone.value_at_quantile(0.99) + 1000 { "met" } else { "missed" },
    );
    let per_gib = took.as_secs_f64() / (bytes as f64 / f64::from(1u32 << 30));
    println!(
        "Recovery: {:.0} MiB in {segments} segments opened in {:.1} ms ({per_gib:.3} s per GiB retained; it reads the last segment only).",
        bytes as f64 / f64::from(1u32 << 20),
        took.as_secs_f64() * 1000.0,
    );
    println!("\n| ratio (same round, median) | publishers | events/s ratio |");
    println!("|---|---:|---:|");
    let ratio = |a: usize, b: usize, pi: usize| {
        median(
            results[a][pi]
                .iter()
                .zip(&results[b][pi])
                .map(|(x, y)| x.rate / y.rate)
                .collect(),
        )
    };
    for (pi, p) in pubs.iter().enumerate() {
        println!(
            "| tidings synced / redis always | {p} | {:.2}× |",
            ratio(2, 0, pi)
        );
        println!(
            "| tidings synced / redis everysec | {p} | {:.2}× |",
            ratio(2, 1, pi)
        );
        println!(
            "| tidings written / redis everysec | {p} | {:.2}× |",
            ratio(3, 1, pi)
        );
    }
}
