//! Why tidings exists: an HTTP service whose order handler does ~20 ms of
//! CPU work. Done inline, in the request, it freezes the runtime and even
//! `GET /health` waits; published to tidings and handled by a `.sync()`
//! subscriber, the runtime stays free. A third mode splits each order's
//! work over a hundred modules, each a `.sync()` subscription of its own:
//! they share the bus's one CPU pool (one worker per core), so the thread
//! count stays put and `/health` stays as quick.
//!
//! ```sh
//! cargo run --release -p tidings-demos --example responsive_api                 # the three modes, built-in load, side by side
//! cargo run --release -p tidings-demos --example responsive_api -- --seconds 10
//! ```
//!
//! With `wrk` instead of the built-in driver (`apt-get install wrk`):
//!
//! ```sh
//! cargo run --release -p tidings-demos --example responsive_api -- --serve --inline --port 8080 --seconds 60 &
//! wrk -t2 -c100 -d10s -s post.lua http://127.0.0.1:8080/orders   # post.lua: wrk.method = "POST"
//! wrk -t1 -c10 -d10s http://127.0.0.1:8080/health
//! ```
//! and the same without `--inline`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use tidings::{Bus, Event, Publisher, SubscriptionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

/// About 20 ms of real CPU work (repeated hashing), as a fraud score or a
/// PDF render would cost.
fn process(order_id: u64) -> u64 {
    work(order_id, Duration::from_millis(20))
}

/// `d` of real CPU work.
fn work(order_id: u64, d: Duration) -> u64 {
    let start = Instant::now();
    let mut h = order_id;
    while start.elapsed() < d {
        for i in 0..1_000u64 {
            h = h.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    h
}

#[derive(Clone)]
struct App {
    next_id: Arc<AtomicU64>,
    /// `None`: process inline, in the request (the mistake).
    orders: Option<Publisher<OrderPlaced>>,
}

async fn health() -> &'static str {
    "ok"
}

async fn place_order(State(app): State<App>) -> String {
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    match &app.orders {
        None => {
            std::hint::black_box(process(id)); // blocks this runtime worker
        }
        Some(orders) => {
            // Accepted: handled on the bus's own thread. Under Block this
            // waits only if 1024 orders are already queued.
            if orders.publish(OrderPlaced { id }).await.is_err() {
                return "shutting down".to_owned();
            }
        }
    }
    format!("order {id} accepted")
}

/// How the service handles an order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In the request (the mistake).
    Inline,
    /// One `.sync()` subscription at concurrency 2.
    Sync,
    /// A hundred modules, each its own `.sync()` subscription doing 0.2 ms
    /// of the order's 20 ms: the same CPU, on the bus's one CPU pool.
    Modules,
}

/// Modules in [`Mode::Modules`].
const MODULES: u64 = 100;

struct Server {
    addr: SocketAddr,
    bus: Option<(Bus, SubscriptionHandle)>,
    processed: Arc<AtomicU64>,
}

async fn start(mode: Mode, port: u16) -> Result<Server, Box<dyn std::error::Error>> {
    let processed = Arc::new(AtomicU64::new(0));
    let (orders, bus) = if mode == Mode::Inline {
        (None, None)
    } else if mode == Mode::Modules {
        let bus = Bus::builder().topic::<OrderPlaced>().build()?;
        let mut handles = Vec::new();
        for m in 0..MODULES {
            let done = Arc::clone(&processed);
            handles.push(
                bus.subscribe::<OrderPlaced>()
                    .name(format!("module-{m}"))
                    .capacity(64)
                    .sync(move |order| {
                        std::hint::black_box(work(order.id, Duration::from_micros(200)));
                        // The order is done when its last module is.
                        if m == MODULES - 1 {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })?,
            );
        }
        let last = handles.pop().ok_or("a module")?;
        for h in handles {
            h.run_until_shutdown();
        }
        (Some(bus.publisher::<OrderPlaced>()?), Some((bus, last)))
    } else {
        let bus = Bus::builder().topic::<OrderPlaced>().build()?;
        let done = Arc::clone(&processed);
        // Two threads: the same CPU the inline mode spends on orders. At most
        // 64 queued orders (0.6 s of work): beyond that, placing an order
        // waits (Block) instead of piling up unbounded work.
        let worker = bus
            .subscribe::<OrderPlaced>()
            .name("order-processing")
            .capacity(64)
            .concurrency(2)
            .sync(move |order| {
                std::hint::black_box(process(order.id));
                done.fetch_add(1, Ordering::Relaxed);
            })?;
        (Some(bus.publisher::<OrderPlaced>()?), Some((bus, worker)))
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/orders", post(place_order))
        .with_state(App {
            next_id: Arc::new(AtomicU64::new(0)),
            orders,
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Server {
        addr,
        bus,
        processed,
    })
}

/// One keep-alive HTTP/1.1 connection: sends a request, reads the whole
/// response (the server sends `content-length`).
struct Conn(TcpStream);

impl Conn {
    async fn request(&mut self, method: &str, path: &str) -> std::io::Result<()> {
        let req =
            format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n");
        self.0.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let n = self.0.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

#[derive(Default)]
struct Latencies {
    health: Vec<Duration>,
    orders: Vec<Duration>,
}

/// 100 clients for `seconds`: 90 place an order, wait 100 ms, and again
/// (with `orders` false they stay idle); 10 probe `/health` every 20 ms. Runs
/// on its own runtime and threads, as a load generator in another process
/// would.
fn drive(addr: SocketAddr, seconds: u64, orders: bool) -> Latencies {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("driver runtime");
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut clients = Vec::new();
        let clients_n = if orders { 100 } else { 10 };
        for c in 0..clients_n {
            let is_order = orders && c < 90;
            clients.push(tokio::spawn(async move {
                let mut conn = Conn(TcpStream::connect(addr).await.expect("connect"));
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let (method, path, pause) = if is_order {
                        ("POST", "/orders", 100)
                    } else {
                        ("GET", "/health", 20)
                    };
                    if conn.request(method, path).await.is_err() {
                        break;
                    }
                    times.push(start.elapsed());
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                (is_order, times)
            }));
        }
        let mut lat = Latencies::default();
        for c in clients {
            let (is_order, times) = c.await.expect("client");
            if is_order {
                lat.orders.extend(times);
            } else {
                lat.health.extend(times);
            }
        }
        lat
    })
}

fn summary(mut v: Vec<Duration>) -> (usize, Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    if v.is_empty() {
        return (0, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    (v.len(), at(0.5), at(0.99), v[v.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 5u64;
    let mut port = 0u16;
    let mut serve = false;
    let mut inline = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--serve" => serve = true,
            "--inline" => inline = true,
            "--seconds" => seconds = args.next().ok_or("--seconds needs a value")?.parse()?,
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --seconds N, --serve [--inline] [--port N]"
                )
                .into())
            }
        }
    }

    if serve {
        let mode = if inline { Mode::Inline } else { Mode::Sync };
        let server = start(mode, port).await?;
        println!(
            "serving http://{} ({} mode) for {seconds} s",
            server.addr,
            if inline { "inline" } else { "tidings" }
        );
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        return Ok(());
    }

    println!("100 clients for {seconds} s per mode: 90 post orders (~20 ms of CPU each), 10 probe /health\n");
    let mut rows = Vec::new();
    // The baseline: /health with no orders at all.
    let idle = start(Mode::Inline, 0).await?;
    let addr = idle.addr;
    let lat = tokio::task::spawn_blocking(move || drive(addr, seconds, false)).await?;
    rows.push(("idle (no orders)", "GET /health", summary(lat.health)));
    for kind in [Mode::Inline, Mode::Sync, Mode::Modules] {
        let mode = match kind {
            Mode::Inline => "inline",
            Mode::Sync => "tidings .sync()",
            Mode::Modules => "tidings, 100 .sync() modules",
        };
        let server = start(kind, 0).await?;
        let addr = server.addr;
        let lat = tokio::task::spawn_blocking(move || drive(addr, seconds, true)).await?;
        // The bus's worker threads, while the load was on: its CPU pool's.
        let threads = server.bus.as_ref().map_or(0, |(bus, _)| {
            bus.stats().pools.iter().map(|p| p.workers).sum::<usize>()
        });
        let handled = match &server.bus {
            Some((bus, _)) => {
                let report = bus.shutdown(Duration::from_secs(10)).await;
                let queued = report.cut_off();
                format!(
                    "{} processed by the subscriber ({} cut off at shutdown)",
                    server.processed.load(Ordering::Relaxed),
                    queued
                )
            }
            None => "processed in the requests".to_owned(),
        };
        rows.push((mode, "GET /health", summary(lat.health)));
        rows.push((mode, "POST /orders", summary(lat.orders)));
        println!("{mode}: {handled}; worker threads of the bus: {threads}");
    }
    let idle_p99 = rows[0].2 .2;
    println!("\n| mode | route | requests | p50 | p99 | max | p99 / idle p99 |\n|---|---|---|---|---|---|---|");
    for (mode, route, (n, p50, p99, max)) in rows {
        let ratio = if route == "GET /health" {
            format!("{:.2}×", p99.as_secs_f64() / idle_p99.as_secs_f64())
        } else {
            "-".to_owned()
        };
        println!(
            "| {mode} | {route} | {n} | {} | {} | {} | {ratio} |",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    Ok(())
}
