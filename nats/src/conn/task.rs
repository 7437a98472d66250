//! The task that owns a connection's socket: handshake, reading and
//! dispatching, writing, keepalive and reconnecting.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::super::proto::{self, Frame, Parser};
use super::transport::{read_frame, write_all, Transport};
use super::{Cmd, ConnectError, Delivery, Leased, Shared, Sink, Spec, Trouble, DELIVERY_COST};

pub(super) struct SubEntry {
    subject: String,
    queue: Option<String>,
    sink: Sink,
}

impl SubEntry {
    fn new(subject: String, queue: Option<String>, sink: Sink) -> Self {
        SubEntry {
            subject,
            queue,
            sink,
        }
    }
}

/// The task that owns the socket.
pub(super) struct Task {
    spec: Spec,
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// Publishes made while the connection was down, written once it is
    /// back (bounded by the room they hold).
    while_down: BytesMut,
    /// Room held by publishes not written yet (in `while_down` or the
    /// write buffer), and how many publishes that is.
    held: usize,
    held_pubs: u64,
    /// Set by `Close`: finish writing, then stop, and say what was lost.
    closing: Option<Option<oneshot::Sender<u64>>>,
    shared: Arc<Shared>,
    subs: HashMap<u64, SubEntry>,
    generation: watch::Sender<u64>,
    /// One entry per PING in flight: a waiter, or `None` for a keepalive.
    round_trips: VecDeque<Option<oneshot::Sender<()>>>,
    next_server: usize,
}

/// How a connection ended.
enum End {
    /// Closed by the bridge: stop.
    Closed,
    /// Lost: reconnect.
    Lost(String),
}

impl Task {
    pub(super) fn new(
        spec: Spec,
        rx: mpsc::UnboundedReceiver<Cmd>,
        shared: Arc<Shared>,
        generation: watch::Sender<u64>,
    ) -> Self {
        Task {
            spec,
            rx,
            while_down: BytesMut::new(),
            held: 0,
            held_pubs: 0,
            closing: None,
            shared,
            subs: HashMap::new(),
            generation,
            round_trips: VecDeque::new(),
            next_server: 0,
        }
    }

    /// Makes subscription `sid` on `subject` the one replies to requests
    /// arrive on.
    pub(super) fn take_replies(&mut self, sid: u64, subject: String) {
        self.subs
            .insert(sid, SubEntry::new(subject, None, Sink::Replies));
    }

    pub(super) async fn run(mut self, first: Transport) {
        let mut transport = Some(first);
        let mut delay = Duration::from_millis(50);
        loop {
            let t = match transport.take() {
                Some(t) => t,
                None => match self.open().await {
                    Ok(t) => {
                        delay = Duration::from_millis(50);
                        t
                    }
                    Err(_) => {
                        if self.drain_commands_while_down() || self.back_off(delay).await {
                            let unwritten = self.held_pubs;
                            return self.finish(unwritten);
                        }
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            self.generation.send_modify(|g| *g += 1);
            self.shared.connected.store(true, Ordering::Relaxed);
            // A panic in here would be a bug of ours: the connection is
            // made again and the restart counted, never silently lost.
            let served =
                futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(self.serve(t))).await;
            self.shared.connected.store(false, Ordering::Relaxed);
            let unwritten = self.held_pubs;
            self.lost_unwritten();
            let end = served.unwrap_or_else(|panic| {
                self.shared
                    .counters
                    .restarts
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.saw(Trouble::Restart);
                End::Lost(format!(
                    "the connection task failed: {}",
                    super::super::text::panic_message(&*panic)
                ))
            });
            match end {
                End::Closed => return self.finish(0),
                End::Lost(_) if self.closing.is_some() => return self.finish(unwritten),
                End::Lost(why) => {
                    self.shared.saw(Trouble::Disconnect);
                    self.shared
                        .counters
                        .disconnects
                        .fetch_add(1, Ordering::Relaxed);
                    super::super::warn(
                        &self.spec.name,
                        "-",
                        &format!("connection to NATS lost ({why}); reconnecting"),
                    );
                    // Waiters of the lost connection get no answer.
                    self.round_trips.clear();
                }
            }
        }
    }

    /// Waits `delay` before the next attempt to connect, taking commands
    /// meanwhile: a close is seen at once, not after the back-off (which
    /// made a shutdown overrun its deadline and miss what it lost). `true`
    /// if the bridge closed the connection.
    async fn back_off(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        if self.apply_while_down(cmd) {
                            return true;
                        }
                    }
                    None => return true,
                },
            }
        }
    }

    /// While down: applies subscriptions (made on reconnect), keeps
    /// publishes for when it is back (within their room). `true` if the
    /// bridge closed the connection.
    fn drain_commands_while_down(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            if self.apply_while_down(cmd) {
                return true;
            }
        }
        self.rx.is_closed()
    }

    /// One command while down; `true` if it closes the connection.
    fn apply_while_down(&mut self, cmd: Cmd) -> bool {
        {
            match cmd {
                Cmd::Sub {
                    sid,
                    subject,
                    queue,
                    sink,
                } => {
                    self.subs.insert(sid, SubEntry::new(subject, queue, sink));
                }
                Cmd::Unsub { sid } => {
                    self.subs.remove(&sid);
                }
                Cmd::Pub(bytes, room) => {
                    self.while_down.extend_from_slice(&bytes);
                    self.held += room;
                    self.held_pubs += 1;
                }
                // Meant for a connection that is gone: its sender resends.
                Cmd::PubOn(_, _, room) => self.shared.room.add_permits(room),
                Cmd::RoundTrip(_) => {}
                Cmd::Close(done) => {
                    self.closing = Some(done);
                    return true;
                }
            }
        }
        false
    }

    /// Stops for good: what was not written is counted, and whoever closed
    /// the connection is told how much.
    fn finish(mut self, lost: u64) {
        self.lost_unwritten();
        if let Some(Some(done)) = self.closing.take() {
            let _ = done.send(lost);
        }
    }

    /// Gives back the room of `written` bytes of publishes.
    fn written(&mut self, written: usize) {
        let give = written.min(self.held);
        if give > 0 {
            self.held -= give;
            self.shared.room.add_permits(give);
        }
        if self.held == 0 {
            self.held_pubs = 0;
        }
    }

    /// The connection was lost with publishes unwritten: they may not have
    /// reached the server (counted), and their room is free again.
    fn lost_unwritten(&mut self) {
        if self.held > 0 {
            self.shared
                .counters
                .unwritten
                .fetch_add(self.held_pubs, Ordering::Relaxed);
            self.shared.room.add_permits(self.held);
            self.held = 0;
            self.held_pubs = 0;
        }
    }

    /// Connects to the next server: INFO, TLS if asked, CONNECT, PING/PONG.
    pub(super) async fn open(&mut self) -> Result<Transport, ConnectError> {
        let servers = &self.spec.servers;
        if servers.is_empty() {
            return Err(ConnectError::Protocol("no server to connect to".into()));
        }
        let server = servers[self.next_server % servers.len()].clone();
        self.next_server = self.next_server.wrapping_add(1);
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect((server.host.as_str(), server.port)),
        )
        .await
        .map_err(|_| {
            ConnectError::Protocol(format!(
                "{}:{}: connect timed out",
                server.host, server.port
            ))
        })??;
        tcp.set_nodelay(true)?;
        let mut transport = Transport::Tcp(tcp);
        let mut parser = Parser::new(proto::MAX_LINE, 0);
        let mut buf = BytesMut::with_capacity(4096);
        let info = match read_frame(&mut transport, &mut parser, &mut buf).await? {
            Frame::Info(info) => info,
            other => {
                return Err(ConnectError::Protocol(format!(
                    "expected INFO, got {other:?}"
                )))
            }
        };
        let info: serde_json::Value = serde_json::from_slice(&info)
            .map_err(|e| ConnectError::Protocol(format!("INFO: {e}")))?;
        let tls_required = info
            .get("tls_required")
            .and_then(serde_json::Value::as_bool)
            == Some(true);
        if tls_required || server.tls || self.spec.tls.is_some() {
            let config = self.spec.tls.clone().ok_or_else(|| {
                ConnectError::Protocol(
                    "the server requires TLS: give the bridge a TLS configuration (Connect::tls)"
                        .into(),
                )
            })?;
            let Transport::Tcp(tcp) = transport else {
                return Err(ConnectError::Protocol("TLS twice".into()));
            };
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(server.host.clone())
                .map_err(|e| ConnectError::Protocol(format!("TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            transport = Transport::Tls(Box::new(tls));
        }
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": matches!(transport, Transport::Tls(_)),
            "name": self.spec.name,
            "lang": "rust-tidings",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
            "echo": true,
        });
        if let Some((user, pass)) = &self.spec.user {
            connect["user"] = user.clone().into();
            connect["pass"] = pass.clone().into();
        }
        if let Some(token) = &self.spec.token {
            connect["auth_token"] = token.clone().into();
        }
        let mut out = BytesMut::new();
        proto::write::connect(&mut out, &connect.to_string());
        proto::write::ping(&mut out);
        write_all(&mut transport, &out).await?;
        loop {
            match read_frame(&mut transport, &mut parser, &mut buf).await? {
                Frame::Pong => break,
                Frame::Err(e) => {
                    return Err(ConnectError::Protocol(format!("server refused: {e}")))
                }
                Frame::Ping => {
                    let mut out = BytesMut::new();
                    proto::write::pong(&mut out);
                    write_all(&mut transport, &out).await?;
                }
                _ => {}
            }
        }
        Ok(transport)
    }

    /// Serves one connection until it is lost or closed.
    async fn serve(&mut self, mut transport: Transport) -> End {
        let mut parser = Parser::new(self.spec.max_msg, self.spec.keep);
        let mut read_buf = BytesMut::with_capacity(64 * 1024);
        let mut write_buf = BytesMut::new();
        // Subscribe again to everything, then send what waited.
        for (sid, sub) in &self.subs {
            proto::write::sub(&mut write_buf, &sub.subject, sub.queue.as_deref(), *sid);
        }
        write_buf.extend_from_slice(&self.while_down);
        self.while_down = BytesMut::new();
        let mut ping = tokio::time::interval(self.spec.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        let mut scratch = vec![0u8; 64 * 1024];
        poll_fn(|cx| {
            // Commands.
            let mut budget = 256;
            while budget > 0 {
                budget -= 1;
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(cmd)) => {
                        if let Err(end) = self.apply(cmd, &mut write_buf) {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready(End::Closed),
                    Poll::Pending => break,
                }
            }
            // Reading: a bounded number of reads per poll, so commands and
            // writes get their turn under a flood.
            let mut reads = 16;
            loop {
                if reads == 0 {
                    cx.waker().wake_by_ref();
                    break;
                }
                reads -= 1;
                let mut rb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut transport).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        return Poll::Ready(End::Lost("the server closed the connection".into()))
                    }
                    Poll::Ready(Ok(())) => {
                        read_buf.extend_from_slice(rb.filled());
                        if let Err(end) = self.frames(&mut parser, &mut read_buf, &mut write_buf) {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Lost(e.to_string())),
                    Poll::Pending => break,
                }
            }
            // Keepalive.
            if ping.poll_tick(cx).is_ready() {
                let unanswered = self.round_trips.iter().filter(|w| w.is_none()).count();
                if unanswered >= 2 {
                    return Poll::Ready(End::Lost("two PINGs unanswered".into()));
                }
                proto::write::ping(&mut write_buf);
                self.round_trips.push_back(None);
            }
            // Writing.
            let mut wrote = false;
            while !write_buf.is_empty() {
                match Pin::new(&mut transport).poll_write(cx, &write_buf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(End::Lost("the socket took no bytes".into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        write_buf.advance(n);
                        self.written(n);
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Lost(e.to_string())),
                    Poll::Pending => break,
                }
            }
            if wrote {
                if let Poll::Ready(Err(e)) = Pin::new(&mut transport).poll_flush(cx) {
                    return Poll::Ready(End::Lost(e.to_string()));
                }
            }
            if self.closing.is_some() && write_buf.is_empty() {
                return Poll::Ready(End::Closed);
            }
            Poll::Pending
        })
        .await
    }

    fn apply(&mut self, cmd: Cmd, out: &mut BytesMut) -> Result<(), End> {
        match cmd {
            Cmd::Sub {
                sid,
                subject,
                queue,
                sink,
            } => {
                proto::write::sub(out, &subject, queue.as_deref(), sid);
                self.subs.insert(sid, SubEntry::new(subject, queue, sink));
            }
            Cmd::Unsub { sid } => {
                if self.subs.remove(&sid).is_some() {
                    proto::write::unsub(out, sid);
                }
            }
            Cmd::Pub(bytes, room) => {
                out.extend_from_slice(&bytes);
                self.held += room;
                self.held_pubs += 1;
            }
            Cmd::PubOn(generation, bytes, room) => {
                if generation == *self.generation.borrow() {
                    out.extend_from_slice(&bytes);
                    self.held += room;
                    self.held_pubs += 1;
                } else {
                    self.shared.room.add_permits(room);
                }
            }
            Cmd::RoundTrip(waiter) => {
                proto::write::ping(out);
                self.round_trips.push_back(Some(waiter));
            }
            Cmd::Close(done) => self.closing = Some(done),
        }
        Ok(())
    }

    /// Handles every complete frame in `buf`.
    fn frames(
        &mut self,
        parser: &mut Parser,
        buf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        loop {
            let frame = match parser.next(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(broken) => {
                    self.shared
                        .counters
                        .broken_frames
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(End::Lost(broken.to_string()));
                }
            };
            match frame {
                Frame::Msg(msg) => {
                    let sid = msg.sid;
                    self.deliver(sid, Delivery::Msg(msg));
                }
                Frame::Oversize {
                    subject,
                    sid,
                    reply,
                    len,
                    head,
                } => self.deliver(
                    sid,
                    Delivery::Oversize {
                        subject,
                        reply,
                        len,
                        head,
                    },
                ),
                Frame::Ping => proto::write::pong(out),
                Frame::Pong => {
                    if let Some(Some(waiter)) = self.round_trips.pop_front() {
                        let _ = waiter.send(());
                    }
                }
                Frame::Err(e) => {
                    self.shared
                        .counters
                        .server_errors
                        .fetch_add(1, Ordering::Relaxed);
                    super::super::warn(&self.spec.name, "-", &format!("NATS server error: {e}"));
                    let stale = e.to_ascii_lowercase().contains("stale connection");
                    *self.shared.last_error.lock() = Some(e);
                    self.shared.saw(Trouble::ServerError);
                    if stale {
                        return Err(End::Lost("stale connection".into()));
                    }
                }
                Frame::Info(_) | Frame::Ok => {}
            }
        }
    }

    /// Hands a delivery to its subscription, within the byte budget.
    fn deliver(&mut self, sid: u64, delivery: Delivery) {
        let Some(sub) = self.subs.get(&sid) else {
            return; // unsubscribed meanwhile
        };
        let tx = match &sub.sink {
            Sink::Channel(tx) => tx,
            Sink::Replies => {
                // A reply: to the request waiting for its token, if any
                // (a late or forged one finds nobody and is dropped).
                if let Delivery::Msg(msg) = delivery {
                    let token = msg
                        .subject
                        .rsplit(|b| *b == b'.')
                        .next()
                        .and_then(|t| std::str::from_utf8(t).ok())
                        .and_then(|t| t.parse::<u64>().ok());
                    let waiter = token.and_then(|t| self.shared.replies.lock().remove(&t));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(msg);
                    }
                }
                return;
            }
        };
        let size = DELIVERY_COST
            + match &delivery {
                Delivery::Msg(m) => m.size(),
                Delivery::Oversize { head, subject, .. } => head.len() + subject.len(),
            };
        let budget = &self.shared.budget;
        if budget
            .fetch_add(size, Ordering::Relaxed)
            .saturating_add(size)
            > self.spec.budget
        {
            budget.fetch_sub(size, Ordering::Relaxed);
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.saw(Trouble::Dropped);
            return;
        }
        let leased = Leased {
            delivery,
            size,
            budget: Arc::clone(budget),
        };
        if tx.send(leased).is_err() {
            self.subs.remove(&sid);
        }
    }
}
