//! The live view in a real browser: a shop's bus with traffic, its view
//! opened in headless Chromium (Debian's `chromium`, which `scripts/test`
//! installs when it is missing), driven over the DevTools protocol. The
//! test waits for the numbers to move, checks the page for every topic,
//! subscription, a dead letter with its payload, a blocked-runtime finding
//! and the causes graph, and
//! saves a screenshot (`target/tmp/view.png`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tidings::view::ViewBuilder;
use tidings_demos::shop::shop;

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// How long the browser gets for anything: a guard against a hang, far
/// beyond what a step takes, never a claim about speed.
const PATIENCE: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("no Chromium: run scripts/test, which installs Debian's `chromium` when missing")
}

/// A headless Chromium with its own profile, killed and removed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    fn open(url: &str) -> (Browser, Socket) {
        let profile = std::env::temp_dir().join(format!("tidings-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        // The flags keep Chromium off the network (this machine's is closed)
        // and let it run as root in a container.
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,1300",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let browser = Browser { child, profile };
        let port = browser.devtools_port();
        let ws = page_socket(port);
        (browser, ws)
    }

    /// Chromium writes the port it chose to `DevToolsActivePort`.
    fn devtools_port(&self) -> u16 {
        let file = self.profile.join("DevToolsActivePort");
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Some(port) = text.lines().next().and_then(|l| l.parse().ok()) {
                    return port;
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The WebSocket of the page Chromium opened, from `/json/list`.
fn page_socket(port: u16) -> Socket {
    let start = Instant::now();
    loop {
        let list = http_get(port, "/json/list");
        let url = serde_json::from_str::<Value>(&list)
            .ok()
            .and_then(|targets| {
                targets.as_array()?.iter().find_map(|t| {
                    (t["type"] == "page")
                        .then(|| t["webSocketDebuggerUrl"].as_str().map(String::from))?
                })
            });
        if let Some(url) = url {
            let (ws, _) = tungstenite::connect(url).expect("connect to the page's DevTools socket");
            return ws;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "chromium opened no page: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A GET to Chromium's DevTools server (HTTP/1.1 only; it keeps the
/// connection open, so the body is read by its length).
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    );
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                return body.to_owned();
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return String::new(),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One DevTools call: sends it and reads until its answer.
fn call(ws: &mut Socket, id: u64, method: &str, params: Value) -> Value {
    let message = json!({ "id": id, "method": method, "params": params }).to_string();
    ws.send(tungstenite::Message::Text(message.into()))
        .expect("send to chromium");
    loop {
        let reply = ws.read().expect("read from chromium");
        let tungstenite::Message::Text(text) = reply else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
        if value["id"] == id {
            assert!(value.get("error").is_none(), "{method} failed: {value}");
            return value["result"].clone();
        }
    }
}

struct Page {
    ws: Socket,
    next: u64,
}

impl Page {
    fn eval(&mut self, expression: &str) -> Value {
        self.next += 1;
        let result = call(
            &mut self.ws,
            self.next,
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let start = Instant::now();
        while self.eval(expression) != Value::Bool(true) {
            if start.elapsed() > PATIENCE {
                let status = self.eval("document.getElementById('status').textContent");
                panic!("the page never showed {what}; its status: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, to: &Path) {
        self.next += 1;
        let shot = call(
            &mut self.ws,
            self.next,
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot"))
            .expect("base64");
        std::fs::write(to, png).expect("save the screenshot");
    }
}

fn drive(url: String, screenshot: PathBuf) {
    let (_browser, ws) = Browser::open(&url);
    let mut page = Page { ws, next: 0 };
    page.wait_for(
        "a first snapshot",
        "Number(document.body.dataset.updates) >= 1",
    );
    let published =
        "Number(document.querySelector('tr[data-topic=\"orders.placed\"]').dataset.published)";
    let first = page
        .eval(published)
        .as_f64()
        .expect("orders.placed has a row");
    let updates = page
        .eval("Number(document.body.dataset.updates)")
        .as_f64()
        .unwrap_or(0.0);
    // The numbers move without a reload: more snapshots arrive, and in them
    // more orders.
    page.wait_for(
        "its numbers move",
        &format!(
            "Number(document.body.dataset.updates) >= {} && {published} > {first}",
            updates + 2.0
        ),
    );
    for topic in [
        "orders.placed",
        "payments.charged",
        "stock.reserved",
        "emails.sent",
    ] {
        let row = format!("document.querySelector('tr.topic[data-topic=\"{topic}\"]') !== null");
        assert_eq!(page.eval(&row), Value::Bool(true), "no row for {topic}");
    }
    for name in [
        "payments",
        "stock",
        "mailer",
        "fraud-check",
        "analytics",
        "tidings.view",
    ] {
        let row =
            format!("document.querySelector('tr.sub[data-subscription=\"{name}\"]') !== null");
        assert_eq!(
            page.eval(&row),
            Value::Bool(true),
            "no row for subscription {name}"
        );
    }
    // Every seventh order is declined three times: a dead letter, with the
    // order it carried.
    page.wait_for(
        "a dead letter with its payload",
        "[...document.querySelectorAll('tr.dead-letter')].some(r => r.textContent.includes('card declined') && r.textContent.includes('example.com'))",
    );
    // The fraud check blocks the runtime now and then: the watch's finding
    // names it on the page.
    page.wait_for(
        "the blocked-runtime finding",
        "[...document.querySelectorAll('#health .finding[data-kind=\"SlowPoll\"]')].some(f => f.textContent.includes('fraud-check') && f.querySelector('.advice'))",
    );
    page.wait_for(
        "the causes graph",
        "['orders.placed', 'payments.charged', 'stock.reserved', 'emails.sent'].every(n => document.querySelector('#causes [data-node=\"' + n + '\"]'))",
    );
    assert_eq!(
        page.eval("document.getElementById('status').textContent.startsWith('live')"),
        Value::Bool(true)
    );
    page.screenshot(&screenshot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_shows_a_busy_bus_in_a_real_browser() {
    let mut shop = shop().unwrap();
    let view = ViewBuilder::new(&shop.bus)
        .token("t0ken/+&")
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let traffic = tokio::spawn(async move {
        shop.run(200, async {
            let _ = stopped.await;
        })
        .await;
        shop
    });
    // The page takes the token from its own address and passes it on.
    let url = format!("http://{}/?token=t0ken%2F%2B%26", view.local_addr());
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("view.png");
    let shot = screenshot.clone();
    let driven = tokio::task::spawn_blocking(move || drive(url, shot)).await;
    let _ = stop.send(());
    let shop = traffic.await.unwrap();
    drop(view);
    if let Err(panic) = driven {
        std::panic::resume_unwind(panic.into_panic());
    }
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    println!("screenshot: {}", screenshot.display());
    let report = shop.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.in_flight(), 0, "{report}");
}
