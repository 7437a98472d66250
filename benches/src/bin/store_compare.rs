//! Which embedded engine should durable topics stand on? The candidates of
//! issue 22, measured side by side on this machine's disk, each behind the
//! same group-commit front: publishers hand 256-byte records to one
//! committer thread, which takes everything waiting, commits it as one
//! batch, syncs (for *synced*), and then answers every publisher of the
//! batch. The engines differ only in what a batch commit costs:
//!
//! - `log`: a segment file of our own, each record framed with its length
//!   and a CRC32C, one `write` per batch, `fdatasync` per batch (*synced*)
//!   or none (*written*, in the operating system's hands); appended to a
//!   file that grows, or written in place into a segment made at its full
//!   size beforehand (*preallocated*: a sync then flushes data only);
//! - `redb`: one write transaction per batch (copy-on-write B-tree; its
//!   commit syncs);
//! - `fjall`: one write batch per batch, then `persist(SyncData)`;
//! - `sqlite`: SQLite in WAL mode (`rusqlite`, bundled), one transaction
//!   per batch, `synchronous=FULL`.
//!
//! Also the machine's own `fdatasync` latency (a 256-byte append then a
//! sync, alone), the floor of any *synced* commit.
//!
//! ```text
//! cargo run --release -p tidings-benches --features store-compare --bin store_compare [-- --seconds 3]
//! ```
//!
//! Prints events per second and the p50 / p99 of one append (from handing
//! it over to its answer), for 1, 8 and 64 publishers. Timing, never a test:
//! the disk and the machine's load move the numbers; compare within a run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const RECORD: usize = 256;

/// One batch commit of an engine.
trait Engine: Send {
    fn name(&self) -> String;
    /// Stores `batch` durably as the engine's level says.
    fn commit(&mut self, batch: &[Vec<u8>]);
}

/// A log of our own: `[len u32][crc32c u32][bytes]` per record. Appended
/// to a file that grows, or written in place into a segment made at its
/// full size beforehand (`preallocated`): then a sync has no change of
/// size to flush, only the data.
struct Log {
    file: File,
    sync: bool,
    /// Where the next batch goes, in a preallocated segment.
    at: Option<u64>,
    buf: Vec<u8>,
}

/// The size of a preallocated segment (records past it wrap to its start:
/// the bench measures commits, not retention).
const SEGMENT: u64 = 256 << 20;

impl Log {
    fn open(dir: &Path, sync: bool, preallocated: bool) -> Self {
        let path = dir.join("segment-0");
        let file = if preallocated {
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open the segment");
            // Written through once, so that its blocks exist and a later
            // sync flushes data only (set_len alone leaves a sparse file).
            let zeros = vec![0u8; 1 << 20];
            for i in 0..SEGMENT / (1 << 20) {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&zeros, i << 20).expect("preallocate");
            }
            file.sync_all().expect("sync the segment");
            file
        } else {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open the segment")
        };
        Log {
            file,
            sync,
            at: preallocated.then_some(0),
            buf: Vec::new(),
        }
    }
}

impl Engine for Log {
    fn name(&self) -> String {
        format!(
            "log{} ({})",
            if self.at.is_some() {
                ", preallocated"
            } else {
                ""
            },
            if self.sync { "synced" } else { "written" }
        )
    }

    fn commit(&mut self, batch: &[Vec<u8>]) {
        self.buf.clear();
        for record in batch {
            let len = u32::try_from(record.len()).expect("a small record");
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf
                .extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
            self.buf.extend_from_slice(record);
        }
        match &mut self.at {
            Some(at) => {
                use std::os::unix::fs::FileExt;
                let len = self.buf.len() as u64;
                if *at + len > SEGMENT {
                    *at = 0;
                }
                self.file.write_all_at(&self.buf, *at).expect("write");
                *at += len;
            }
            None => self.file.write_all(&self.buf).expect("append"),
        }
        if self.sync {
            self.file.sync_data().expect("fdatasync");
        }
    }
}

struct Redb {
    db: redb::Database,
    next: u64,
}

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");

impl Engine for Redb {
    fn name(&self) -> String {
        "redb (synced)".into()
    }

    fn commit(&mut self, batch: &[Vec<u8>]) {
        let txn = self.db.begin_write().expect("a write transaction");
        {
            let mut table = txn.open_table(REDB_TABLE).expect("the table");
            for record in batch {
                table.insert(self.next, record.as_slice()).expect("insert");
                self.next += 1;
            }
        }
        txn.commit().expect("commit");
    }
}

struct Fjall {
    db: fjall::Database,
    events: fjall::Keyspace,
    next: u64,
}

impl Engine for Fjall {
    fn name(&self) -> String {
        "fjall (synced)".into()
    }

    fn commit(&mut self, batch: &[Vec<u8>]) {
        let mut b = self.db.batch();
        for record in batch {
            b.insert(&self.events, self.next.to_be_bytes(), record.as_slice());
            self.next += 1;
        }
        b.commit().expect("commit");
        self.db
            .persist(fjall::PersistMode::SyncData)
            .expect("persist");
    }
}

struct Sqlite {
    conn: rusqlite::Connection,
}

impl Engine for Sqlite {
    fn name(&self) -> String {
        "sqlite WAL (synced)".into()
    }

    fn commit(&mut self, batch: &[Vec<u8>]) {
        let txn = self.conn.transaction().expect("a transaction");
        {
            let mut insert = txn
                .prepare_cached("INSERT INTO events (body) VALUES (?1)")
                .expect("prepare");
            for record in batch {
                insert.execute([record.as_slice()]).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
}

fn open(engine: &str, dir: &Path) -> Box<dyn Engine> {
    match engine {
        "log-synced" => Box::new(Log::open(dir, true, false)),
        "log-written" => Box::new(Log::open(dir, false, false)),
        "log-prealloc" => Box::new(Log::open(dir, true, true)),
        "redb" => {
            let db = redb::Database::create(dir.join("events.redb")).expect("redb");
            Box::new(Redb { db, next: 0 })
        }
        "fjall" => {
            let db = fjall::Database::builder(dir.join("fjall"))
                .open()
                .expect("fjall");
            let events = db
                .keyspace("events", fjall::KeyspaceCreateOptions::default)
                .expect("keyspace");
            Box::new(Fjall {
                db,
                events,
                next: 0,
            })
        }
        "sqlite" => {
            let conn = rusqlite::Connection::open(dir.join("events.sqlite")).expect("sqlite");
            conn.pragma_update(None, "journal_mode", "WAL")
                .expect("WAL");
            conn.pragma_update(None, "synchronous", "FULL")
                .expect("synchronous");
            conn.execute(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body BLOB)",
                [],
            )
            .expect("table");
            Box::new(Sqlite { conn })
        }
        other => panic!("no engine {other}"),
    }
}

/// A record handed to the committer, and where to say it is stored.
type Ask = (Vec<u8>, mpsc::SyncSender<()>);

/// Runs `publishers` threads against `engine` for `seconds`: events per
/// second and the latency histogram of one append, in microseconds.
fn run(engine: Box<dyn Engine>, publishers: usize, seconds: Duration) -> (f64, Histogram<u64>) {
    let (tx, rx) = mpsc::channel::<Ask>();
    let committer = std::thread::spawn(move || {
        let mut engine = engine;
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.clear();
            waiting.clear();
            let (record, done) = first;
            batch.push(record);
            waiting.push(done);
            while let Ok((record, done)) = rx.try_recv() {
                batch.push(record);
                waiting.push(done);
            }
            engine.commit(&batch);
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
    });
    let until = Instant::now() + seconds;
    let threads: Vec<_> = (0..publishers)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).expect("a histogram");
                let (done_tx, done_rx) = mpsc::sync_channel(1);
                let mut n = 0u64;
                while Instant::now() < until {
                    let mut record = vec![0u8; RECORD];
                    record[..8].copy_from_slice(&n.to_le_bytes());
                    record[8] = p as u8;
                    let start = Instant::now();
                    tx.send((record, done_tx.clone())).expect("the committer");
                    done_rx.recv().expect("stored");
                    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hist.record(us.max(1)).expect("in range");
                    n += 1;
                }
                hist
            })
        })
        .collect();
    drop(tx);
    let started = Instant::now();
    let mut all = Histogram::<u64>::new(3).expect("a histogram");
    for t in threads {
        all.add(t.join().expect("a publisher"))
            .expect("same bounds");
    }
    let took = started.elapsed().max(seconds);
    committer.join().expect("the committer");
    (all.len() as f64 / took.as_secs_f64(), all)
}

/// The machine's `fdatasync` after a 256-byte append, alone.
fn fdatasync_alone(dir: &Path, seconds: Duration) -> Histogram<u64> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-probe"))
        .expect("a probe file");
    let mut hist = Histogram::<u64>::new(3).expect("a histogram");
    let until = Instant::now() + seconds;
    let record = [7u8; RECORD];
    while Instant::now() < until {
        let start = Instant::now();
        file.write_all(&record).expect("append");
        file.sync_data().expect("fdatasync");
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.record(us.max(1)).expect("in range");
    }
    hist
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tidings-store-compare-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    dir
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    let probe = fresh_dir("probe");
    let sync = fdatasync_alone(&probe, seconds);
    let _ = std::fs::remove_dir_all(&probe);
    println!(
        "fdatasync of a 256-byte append, alone: p50 {} µs, p99 {} µs ({} syncs)",
        sync.value_at_quantile(0.5),
        sync.value_at_quantile(0.99),
        sync.len()
    );
    println!();
    println!("| engine | publishers | events/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|");
    for engine in [
        "log-written",
        "log-synced",
        "log-prealloc",
        "redb",
        "fjall",
        "sqlite",
    ] {
        for publishers in [1, 8, 64] {
            let dir = fresh_dir(engine);
            let e = open(engine, &dir);
            let name = e.name();
            let (rate, hist) = run(e, publishers, seconds);
            println!(
                "| {name} | {publishers} | {rate:.0} | {} | {} |",
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99)
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
