//! A job queue that keeps its word: an HTTP endpoint enqueues report
//! requests on a durable topic and answers `202 Accepted` at once; a
//! blocking worker renders them on the bus's own threads. Halfway through,
//! this program kills its own worker process with SIGKILL, starts it
//! again, and at the end counts: jobs accepted, jobs done, done twice (with
//! the ids, each marked as a redelivery), missing.
//!
//! ```text
//! cargo run --release -p tidings-durable --example durable_jobs
//! ```
//!
//! The program plays both parts: run plainly, it is the client (and kills
//! and restarts the server); with `DURABLE_JOBS_DIR` set, it is the
//! server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::{Bus, Event};
use tidings_durable::{DurableTopics, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoint enqueues: the seed's report request.
#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
#[event(topic = "reports.requested")]
struct ReportRequested {
    id: u64,
}

const JOBS: u64 = 400;
const KILL_AFTER: u64 = 150;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match std::env::var("DURABLE_JOBS_DIR") {
        Ok(dir) => rt.block_on(server(PathBuf::from(dir))),
        Err(_) => rt.block_on(client()),
    }
}

/// The service: `POST /reports/<id>` stores the request durably (synced)
/// and answers 202; the renderer does the heavy part.
async fn server(dir: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    // The run killed a moment ago released the lock as it died.
    let store = loop {
        match Store::open(dir.join("store")) {
            Err(StoreError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            other => break other?,
        }
    };
    let bus = Bus::builder().durable_topic::<ReportRequested>().build()?;
    let reports = store.topic::<ReportRequested>(&bus)?;
    let done_log = Arc::new(parking_lot::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("done.log"))?,
    ));
    let _renderer = reports
        .subscribe("renderer")
        .concurrency(2)
        .sync(move |job| {
            render(job.id);
            // One write per job, as a real worker would record its result.
            let line = format!("{} {}\n", job.id, u8::from(job.redelivered()));
            done_log.lock().write_all(line.as_bytes())
        })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    loop {
        let (conn, _) = listener.accept().await?;
        let reports = reports.clone();
        tokio::spawn(async move {
            let _ = answer(conn, reports).await;
        });
    }
}

/// The heavy part: about 3 ms of CPU.
fn render(id: u64) {
    let began = Instant::now();
    let mut x = id;
    while began.elapsed() < Duration::from_millis(3) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
}

async fn answer(
    mut conn: TcpStream,
    reports: tidings_durable::DurableTopic<ReportRequested>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await?;
    let request = String::from_utf8_lossy(&buf[..n]);
    let id = request
        .strip_prefix("POST /reports/")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse::<u64>().ok());
    let reply = match id {
        // The id is the idempotency key: a client that retries after a
        // lost answer does not enqueue the job twice.
        Some(id) => match reports.publish_keyed(ReportRequested { id }, format!("report-{id}")).await {
            Ok(r) => format!("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nX-Seq: {}\r\nX-Duplicate: {}\r\n\r\n", r.seq, r.duplicate),
            Err(e) => format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{e}", e.to_string().len()),
        },
        None => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_owned(),
    };
    conn.write_all(reply.as_bytes()).await
}

fn start_server(dir: &Path) -> Result<(Child, u16), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .env("DURABLE_JOBS_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    Ok((child, line.trim().parse()?))
}

/// One request; `Some(duplicate)` once the service answered 202.
async fn post(port: u16, id: u64) -> Option<bool> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    conn.write_all(format!("POST /reports/{id} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.ok()?;
    reply
        .starts_with("HTTP/1.1 202")
        .then(|| reply.contains("X-Duplicate: true"))
}

async fn client() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("durable-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut server, mut port) = start_server(&dir)?;
    let mut accepted = BTreeSet::new();
    let mut retried_duplicates = 0;
    let mut next = 1;
    let mut killed = false;
    while accepted.len() < JOBS as usize {
        // Eight requests at a time, as a busy frontend sends them.
        let ids: Vec<u64> = (0..8).map(|i| next + i).filter(|id| *id <= JOBS).collect();
        let answers = futures::future::join_all(ids.iter().map(|id| post(port, *id))).await;
        for (id, answer) in ids.iter().zip(answers) {
            // No answer: sent again below.
            if let Some(duplicate) = answer {
                retried_duplicates += u64::from(duplicate);
                accepted.insert(*id);
            }
        }
        // Whatever got no answer is sent again, with the same id.
        next = (1..=JOBS)
            .find(|id| !accepted.contains(id))
            .unwrap_or(JOBS + 1);
        if !killed && accepted.len() as u64 >= KILL_AFTER {
            // Jobs are queued and rendering: the worker dies mid-flight.
            server.kill()?; // SIGKILL
            server.wait()?;
            killed = true;
            println!(
                "killed the worker with SIGKILL after {} jobs were accepted",
                accepted.len()
            );
            (server, port) = start_server(&dir)?;
            println!("started it again: it resumes from the store");
        }
    }
    // Wait until every accepted job is done.
    let began = Instant::now();
    let (done, twice) = loop {
        let mut seen: BTreeMap<u64, Vec<bool>> = BTreeMap::new();
        for line in std::fs::read_to_string(dir.join("done.log"))?.lines() {
            let mut f = line.split(' ');
            if let (Some(Ok(id)), Some(again)) = (f.next().map(str::parse::<u64>), f.next()) {
                seen.entry(id).or_default().push(again == "1");
            }
        }
        if accepted.iter().all(|id| seen.contains_key(id))
            || began.elapsed() > Duration::from_secs(60)
        {
            let twice: Vec<(u64, Vec<bool>)> = seen
                .iter()
                .filter(|(_, v)| v.len() > 1)
                .map(|(id, v)| (*id, v.clone()))
                .collect();
            break (seen, twice);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill()?;
    server.wait()?;
    let missing: Vec<&u64> = accepted
        .iter()
        .filter(|id| !done.contains_key(id))
        .collect();
    let marked = twice
        .iter()
        .all(|(_, runs)| runs[1..].iter().all(|again| *again));
    let redelivered = done
        .values()
        .filter(|runs| runs.iter().any(|again| *again))
        .count();
    println!("jobs accepted (202):   {}", accepted.len());
    println!("  of them retries of a lost answer, recognised by key: {retried_duplicates}");
    println!("jobs done:             {}", done.len());
    println!("  of them fed again after the restart (marked redelivered): {redelivered}");
    println!(
        "done twice:            {} {:?} (in flight at the kill; every second run marked redelivered: {marked})",
        twice.len(),
        twice.iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );
    println!("missing:               {}", missing.len());
    std::fs::remove_dir_all(&dir)?;
    if !missing.is_empty() || !marked {
        return Err("a job was lost, or run twice unmarked".into());
    }
    Ok(())
}
