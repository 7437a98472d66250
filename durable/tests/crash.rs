//! The crash harness: a child process publishes flat out into durable
//! topics (synced and written, keyed and not) with durable handlers and
//! streams; the parent kills it with SIGKILL at random moments (during
//! recovery, publishes, group commits, handler runs), starts it again, and
//! checks after every run what a durable topic promises:
//!
//! - every publish that returned `Ok` is handled by every durable
//!   subscription, in the end;
//! - nothing is handled twice unless the later one is marked redelivered;
//! - a sequence number never names two events (no reuse after a crash);
//! - a subscription's place never moves backwards;
//! - an idempotency key accepted before a kill is still a duplicate.
//!
//! `TIDINGS_CRASH_CYCLES` sets the number of kills (default 12; the
//! closing note of the durable topics work gives 1,000).
//! `TIDINGS_CRASH_SEED` replays a run.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::{Bus, Envelope, Event};
use tidings_durable::{Ack, DurableTopic, DurableTopics, Store, TopicOptions};

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "crash.synced")]
struct Synced {
    id: u64,
}

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "crash.written")]
struct Written {
    id: u64,
}

trait Id {
    fn id(&self) -> u64;
    fn new(id: u64) -> Self;
}
impl Id for Synced {
    fn id(&self) -> u64 {
        self.id
    }
    fn new(id: u64) -> Self {
        Synced { id }
    }
}
impl Id for Written {
    fn id(&self) -> u64 {
        self.id
    }
    fn new(id: u64) -> Self {
        Written { id }
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn handled<E: Event + Id>(sub: &str, e: &Envelope<E>) {
    say(format_args!(
        "H {} {sub} {} {} {}",
        E::TOPIC,
        Id::id(e.event()),
        e.seq(),
        u8::from(e.redelivered())
    ));
}

/// A durable handler (concurrency 2) and a durable stream on `topic`.
fn subscribe<E>(topic: &DurableTopic<E>) -> tidings::SubscriptionHandle
where
    E: Event + Id + serde::Serialize + serde::de::DeserializeOwned,
{
    let worker = topic
        .subscribe("worker")
        .concurrency(2)
        .sync(|e: Envelope<E>| handled("worker", &e))
        .expect("subscribed");
    let mut reader = topic.subscribe("reader").stream().expect("subscribed");
    tokio::spawn(async move {
        while let Some(e) = reader.recv().await {
            handled("reader", &e);
        }
    });
    worker
}

async fn publish_loop<E>(topic: DurableTopic<E>, run: u64, lane: u64, stop: Arc<AtomicU64>)
where
    E: Event + Id + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut n: u64 = 0;
    while stop.load(Ordering::Relaxed) == 0 {
        n += 1;
        let id = (run << 40) | (lane << 32) | n;
        if n % 8 == 0 {
            let key = format!("k-{id}");
            match topic.publish_keyed(E::new(id), key.clone()).await {
                Ok(r) => say(format_args!("K {} {key} {} {}", E::TOPIC, r.seq, id)),
                Err(e) => panic!("publish failed: {e}"),
            }
        } else {
            match topic.publish(E::new(id)).await {
                Ok(r) => say(format_args!("P {} {} {}", E::TOPIC, r.seq, id)),
                Err(e) => panic!("publish failed: {e}"),
            }
        }
        if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
        // A written topic takes events a hundred times faster than these
        // handlers (each prints a line) can settle them: the publishers
        // wait while the backlog is over 20,000, as a service with a
        // bounded backlog would, so that a thousand runs stay small.
        if n % 256 == 0 {
            while topic.stats().subscriptions.iter().any(|s| s.lag > 20_000) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Publishes again keys a run before had accepted: each must be a duplicate.
async fn republish<E>(topic: &DurableTopic<E>, keys: &str)
where
    E: Event + Id + serde::Serialize + serde::de::DeserializeOwned,
{
    for item in keys.split(',').filter(|k| !k.is_empty()) {
        let Some((t, key)) = item.split_once('=') else {
            continue;
        };
        if t != E::TOPIC {
            continue;
        }
        let r = topic.publish_keyed(E::new(0), key).await.expect("answered");
        say(format_args!(
            "D {} {key} {} {}",
            E::TOPIC,
            r.seq,
            u8::from(r.duplicate)
        ));
    }
}

/// The child: runs until killed (or, in the final run, until every
/// subscription has settled everything).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("TIDINGS_CRASH_DIR") else {
        return; // not a child: nothing to do
    };
    let run: u64 = std::env::var("TIDINGS_CRASH_RUN")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let last = std::env::var("TIDINGS_CRASH_FINAL").is_ok();
    let keys = std::env::var("TIDINGS_CRASH_KEYS").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Store::open(&dir).expect("open");
        let bus = Bus::builder()
            .durable_topic::<Synced>()
            .durable_topic::<Written>()
            .build()
            .expect("bus");
        // Small segments: rolls, checkpoints and retention happen often.
        let small = TopicOptions::default()
            .segment_bytes(256 << 10)
            .dedup(Duration::from_secs(3600), 10_000);
        let synced = store
            .topic_with::<Synced>(&bus, small.clone())
            .expect("synced topic");
        let written = store
            .topic_with::<Written>(&bus, small.ack(Ack::Written))
            .expect("written topic");
        say(format_args!(
            "R {} {} {:?}",
            Synced::TOPIC,
            synced.recovery().truncated_bytes,
            synced.recovery()
        ));
        say(format_args!(
            "R {} {} {:?}",
            Written::TOPIC,
            written.recovery().truncated_bytes,
            written.recovery()
        ));
        let _a = subscribe(&synced);
        let _b = subscribe(&written);
        // Where each subscription starts, once its feeder registered it.
        for _ in 0..5000 {
            if synced.stats().subscriptions.len() == 2 && written.stats().subscriptions.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for (topic, stats) in [
            (Synced::TOPIC, synced.stats()),
            (Written::TOPIC, written.stats()),
        ] {
            for s in stats.subscriptions {
                say(format_args!("C {topic} {} {}", s.name, s.settled_below));
            }
        }
        republish(&synced, &keys).await;
        republish(&written, &keys).await;
        if last {
            for _ in 0..120_000 {
                let done = |s: tidings_durable::DurableStats| {
                    s.subscriptions.len() == 2 && s.subscriptions.iter().all(|s| s.lag == 0)
                };
                if done(synced.stats()) && done(written.stats()) {
                    say(format_args!("DONE"));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!(
                "the final run never caught up: {:?} {:?}",
                synced.stats(),
                written.stats()
            );
        }
        let stop = Arc::new(AtomicU64::new(0));
        let mut lanes = Vec::new();
        lanes.push(tokio::spawn(publish_loop(
            synced.clone(),
            run,
            0,
            Arc::clone(&stop),
        )));
        lanes.push(tokio::spawn(publish_loop(
            synced.clone(),
            run,
            1,
            Arc::clone(&stop),
        )));
        lanes.push(tokio::spawn(publish_loop(
            written.clone(),
            run,
            2,
            Arc::clone(&stop),
        )));
        lanes.push(tokio::spawn(publish_loop(
            written.clone(),
            run,
            3,
            Arc::clone(&stop),
        )));
        for lane in lanes {
            lane.await.expect("publisher");
        }
    });
}

/// Runs the child once; `kill_after` kills it with SIGKILL after that long.
fn run_child(
    dir: &std::path::Path,
    run: u64,
    keys: &str,
    kill_after: Option<Duration>,
) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("TIDINGS_CRASH_DIR", dir)
        .env("TIDINGS_CRASH_RUN", run.to_string())
        .env("TIDINGS_CRASH_KEYS", keys)
        .stdout(Stdio::piped());
    if kill_after.is_none() {
        // The final run's complaints are the test's.
        cmd.env("TIDINGS_CRASH_FINAL", "1").stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().expect("child");
    let out = child.stdout.take().expect("piped");
    // Only whole lines count: a kill can cut the last one short.
    let lines = std::thread::spawn(move || {
        let mut whole = Vec::new();
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(done) = line.strip_suffix('\n') {
                whole.push(done.to_owned());
            }
            line.clear();
        }
        whole
    });
    match kill_after {
        Some(after) => {
            std::thread::sleep(after);
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        None => {
            let status = child.wait().expect("final run");
            assert!(status.success(), "the final run failed");
        }
    }
    lines.join().expect("reader")
}

/// Topics and subscriptions as bits, so that a thousand runs' worth of
/// books stays small: ids are below 2^51 (run << 40).
fn topic_bit(topic: &str) -> u64 {
    u64::from(topic == Written::TOPIC)
}
fn sub_bit(sub: &str) -> u64 {
    u64::from(sub == "reader")
}

#[derive(Default)]
struct Books {
    /// (topic, seq) -> id, from publishes that returned Ok and from handlers.
    ids: HashMap<u64, u64>,
    /// Ids whose publish returned Ok (with their topic's bit).
    acked: Vec<u64>,
    /// (id, topic, sub) -> times handled.
    handled: HashMap<u64, u32>,
    /// (topic, sub) -> last place seen.
    places: BTreeMap<(String, String), u64>,
    /// The last keys accepted, oldest first: (topic, key, seq).
    recent: VecDeque<(String, String, u64)>,
    redelivered: u64,
    truncated: u64,
    handler_runs: u64,
}

impl Books {
    fn seq_is(&mut self, topic: &str, seq: u64, id: u64, line: &str) {
        let had = self.ids.insert(topic_bit(topic) << 62 | seq, id);
        assert!(
            had.map_or(true, |h| h == id),
            "seq {seq} of {topic} names two events: {had:?} and {id} ({line})"
        );
    }

    /// The last keys accepted, as the child takes them.
    fn last_keys(&self) -> String {
        let keys: Vec<String> = self
            .recent
            .iter()
            .rev()
            .take(8)
            .map(|(t, k, _)| format!("{t}={k}"))
            .collect();
        keys.join(",")
    }

    fn read(&mut self, lines: &[String]) {
        // Marked redeliveries of this run, per subscription: at most what
        // it had offered and not settled at the kill (its queue of 32, its
        // concurrency, and the one its feeder was offering).
        let mut again_here: HashMap<(String, String), u32> = HashMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["P", topic, seq, id] => {
                    let (seq, id): (u64, u64) = (seq.parse().unwrap(), id.parse().unwrap());
                    self.seq_is(topic, seq, id, line);
                    self.acked.push(id << 1 | topic_bit(topic));
                }
                ["K", topic, key, seq, id] => {
                    let (seq, id): (u64, u64) = (seq.parse().unwrap(), id.parse().unwrap());
                    self.seq_is(topic, seq, id, line);
                    self.acked.push(id << 1 | topic_bit(topic));
                    if self.recent.len() == 64 {
                        self.recent.pop_front();
                    }
                    self.recent
                        .push_back((topic.to_string(), key.to_string(), seq));
                }
                ["H", topic, sub, id, seq, again] => {
                    let (id, seq): (u64, u64) = (id.parse().unwrap(), seq.parse().unwrap());
                    self.seq_is(topic, seq, id, line);
                    self.handler_runs += 1;
                    let n = self
                        .handled
                        .entry(id << 2 | topic_bit(topic) << 1 | sub_bit(sub))
                        .or_default();
                    *n += 1;
                    if *n > 1 {
                        assert_eq!(
                            *again, "1",
                            "{topic}/{sub} handled {id} again unmarked ({line})"
                        );
                    }
                    if *again == "1" {
                        self.redelivered += 1;
                        let n = again_here
                            .entry((topic.to_string(), sub.to_string()))
                            .or_default();
                        *n += 1;
                        assert!(
                            *n <= 32 + 2 + 1,
                            "{topic}/{sub}: {n} redeliveries in one run"
                        );
                    }
                }
                ["C", topic, sub, place] => {
                    let place: u64 = place.parse().unwrap();
                    let key = (topic.to_string(), sub.to_string());
                    if let Some(before) = self.places.get(&key) {
                        assert!(
                            place >= *before,
                            "{topic}/{sub} moved back from {before} to {place}"
                        );
                    }
                    self.places.insert(key, place);
                }
                ["D", topic, key, seq, dup] => {
                    let original = self
                        .recent
                        .iter()
                        .find(|(t, k, _)| t == topic && k == key)
                        .map(|(_, _, seq)| *seq);
                    assert_eq!(*dup, "1", "key {key} of {topic} accepted twice ({line})");
                    assert_eq!(Some(seq.parse::<u64>().unwrap()), original, "{line}");
                }
                ["R", _, bytes, ..] => self.truncated += bytes.parse::<u64>().unwrap(),
                _ => {}
            }
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_and_repeats_nothing_unmarked() {
    if std::env::var("TIDINGS_CRASH_DIR").is_ok() {
        return; // the child runs `crash_child` only
    }
    let cycles = common::setting("TIDINGS_CRASH_CYCLES", 12);
    let seed = common::seed("TIDINGS_CRASH_SEED");
    // The longest a run lives before its kill (default 400 ms).
    let max_ms = common::setting("TIDINGS_CRASH_MAX_MS", 400).max(1);
    eprintln!("crash harness: {cycles} kills, TIDINGS_CRASH_SEED={seed}, runs of 0 to {max_ms} ms");
    let mut rng = common::Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut books = Books::default();
    let began = std::time::Instant::now();
    for run in 1..=cycles {
        // The last keys accepted, offered again by the next run.
        // Well inside the window of 10,000 keys per topic.
        let keys = books.last_keys();
        let after = Duration::from_millis(rng.next() % max_ms);
        let lines = run_child(dir.path(), run, &keys, Some(after));
        if let Ok(dump) = std::env::var("TIDINGS_CRASH_DUMP") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dump)
                .expect("dump");
            let _ = writeln!(f, "=== run {run} killed after {after:?}");
            lines.iter().for_each(|l| {
                let _ = writeln!(f, "{l}");
            });
        }
        books.read(&lines);
    }
    let keys = books.last_keys();
    let lines = run_child(dir.path(), cycles + 1, &keys, None);
    books.read(&lines);
    assert!(
        lines.iter().any(|l| l == "DONE"),
        "the final run did not finish"
    );
    for acked in &books.acked {
        for sub in 0..2 {
            let n = books.handled.get(&(acked << 1 | sub)).copied().unwrap_or(0);
            assert!(
                n >= 1,
                "subscription {sub} (0: worker, 1: reader) of topic bit {} never handled {}, whose publish returned Ok",
                acked & 1,
                acked >> 1
            );
        }
    }
    eprintln!(
        "crash harness: {cycles} kills in {:.1?}: {} publishes acknowledged, {} handler runs, {} redelivered (marked), {} torn bytes cut",
        began.elapsed(),
        books.acked.len(),
        books.handler_runs,
        books.redelivered,
        books.truncated,
    );
    assert!(
        !books.acked.is_empty(),
        "nothing was published: the kills came too early"
    );
}
