//! What the bridge tests share: a real `nats-server` of the test's own (a
//! free port on 127.0.0.1, a temporary store, optionally a config file),
//! a raw TCP client that sends frames byte for byte, and waiting helpers.
//!
//! Waiting for something to arrive has a generous deadline as a guard
//! against a hang, never as a measurement.
#![allow(dead_code)] // each test binary uses its part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidings_nats::Connect;

/// A `nats-server -js` of the test's own.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With a configuration file (accounts, permissions); `{store}` in it
    /// stands for the server's store directory.
    pub fn start_with(config: Option<&str>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tidings-nats-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("store dir");
        let config = config.map(|text| {
            let path = dir.join("server.conf");
            let text = text.replace("{store}", &dir.join("js").display().to_string());
            std::fs::write(&path, text).expect("write the server config");
            path
        });
        let mut server = NatsServer {
            child: None,
            port,
            dir,
            config,
        };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let bin = [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found: the bridge tests need a real broker. \
                 `scripts/test` installs it; or `apt-get install -y nats-server`."
            )
        });
        let mut cmd = Command::new(bin);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.config {
            Some(config) => cmd.arg("-c").arg(config),
            None => cmd.arg("-sd").arg(&self.dir),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// How a bridge reaches this server.
    pub fn connect(&self) -> Connect {
        Connect::to(self.url())
    }

    /// A raw `async-nats` client (another process, as far as the bridge
    /// can tell).
    pub async fn client(&self) -> async_nats::Client {
        self.client_as(None).await
    }

    pub async fn client_as(&self, user: Option<(&str, &str)>) -> async_nats::Client {
        let mut options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50 * attempts.min(10) as u64)
            });
        if let Some((user, pass)) = user {
            options = options.user_and_password(user.into(), pass.into());
        }
        options.connect(self.url()).await.expect("connect")
    }

    /// A raw TCP connection that speaks the protocol byte for byte.
    pub fn raw(&self, user: Option<(&str, &str)>) -> Raw {
        Raw::connect(self.port, user)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client that writes frames exactly as given: how a hostile peer gets
/// bytes no well-behaved client would send past its own checks.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(port: u16, user: Option<(&str, &str)>) -> Raw {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut info = [0u8; 4096];
        let _ = stream.read(&mut info).expect("INFO");
        let auth = match user {
            Some((u, p)) => format!(r#","user":"{u}","pass":"{p}""#),
            None => String::new(),
        };
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1{auth}}}\r\n"
        );
        let mut raw = Raw { stream };
        raw.send(connect.as_bytes());
        raw.sync();
        raw
    }

    /// How long a read waits (10 s unless set): a guard against a hang.
    /// A flood past a stalled reader makes the server slow the sender
    /// down, so its answers may take longer on a loaded machine.
    pub fn read_timeout(&mut self, wait: Duration) {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// `HPUB` with the header block and payload exactly as given.
    pub fn hpub(&mut self, subject: &[u8], headers: &[u8], payload: &[u8]) {
        let mut frame = b"HPUB ".to_vec();
        frame.extend_from_slice(subject);
        frame.extend_from_slice(
            format!(" {} {}\r\n", headers.len(), headers.len() + payload.len()).as_bytes(),
        );
        frame.extend_from_slice(headers);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame);
    }

    /// `PUB`, payload as given.
    pub fn publish(&mut self, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
        let mut frame = b"PUB ".to_vec();
        frame.extend_from_slice(subject);
        if let Some(reply) = reply {
            frame.push(b' ');
            frame.extend_from_slice(reply);
        }
        frame.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame);
    }

    /// Waits until the server has processed everything sent so far; what
    /// it answered (`-ERR` lines included) before its PONG.
    pub fn sync(&mut self) -> String {
        self.send(b"PING\r\n");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"PONG\r\n") {
            let n = self.stream.read(&mut buf).expect("an answer to PING");
            assert!(n > 0, "the server closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// A header block from `name: value` lines, exactly as given.
pub fn header_block(lines: &[&[u8]]) -> Vec<u8> {
    let mut h = b"NATS/1.0\r\n".to_vec();
    for line in lines {
        h.extend_from_slice(line);
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// The next item, or a panic naming what never came after a minute.
pub async fn next<T>(what: &str, recv: impl std::future::Future<Output = Option<T>>) -> T {
    tokio::time::timeout(Duration::from_secs(60), recv)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
        .unwrap_or_else(|| panic!("closed while waiting for {what}"))
}

/// Waits until `done()` holds; panics after a minute (a hang, not a number).
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// This process's resident memory, in bytes (Linux).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Waits until the server has processed everything `client` sent so far
/// (`Client::flush` only writes the socket): a message it sends itself
/// comes back only after the server handled every command before it.
pub async fn round_trip(client: &async_nats::Client) {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.publish(inbox, "".into()).await.expect("publish");
    next("the round trip", probe.next()).await;
}
