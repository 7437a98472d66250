//! The durable exporter: JetStream publishes pipelined through a window of
//! unacknowledged messages, in the topic's order even across a broker
//! outage.
//!
//! Up to [`Durable::window`](crate::Durable::window) publishes are out at
//! once, each with its `Nats-Msg-Id` and a reply subject of its own. The
//! stream stores what one connection sends in the order it arrives, so the
//! order can only break where something is lost and something after it is
//! not. The window makes sure that never happens unnoticed and never
//! happens through the bridge's own doing:
//!
//! - Every publish is bound to the connection it was made for
//!   ([`Conn::publish_on`]): one made before a reconnect is never written
//!   after it, so nothing sent before a break can overtake what is resent.
//! - On any trouble (a reconnect, an error answer, an acknowledgement that
//!   does not come) everything not yet acknowledged is sent again, in
//!   order, from the oldest; the stream's duplicate window drops what it
//!   already holds and says so (`duplicate`), which counts as stored.
//! - The first resend goes out alone and the rest wait until it is stored:
//!   while the broker comes back, a message refused (JetStream not ready)
//!   cannot be followed by one accepted.
//! - Each acknowledgement names the stream sequence the message got; the
//!   window checks, in the topic's order, that they increase. One that does
//!   not is counted ([`BridgeStats::export_reordered`](crate::BridgeStats))
//!   and logged: nothing reorders silently.
//!
//! What the guarantee needs from the broker: the stream's duplicate window
//! must be longer than an outage, or a resent message already stored is
//! stored again (the importer's idempotency keys still drop it).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::conn::{Delivery, Leased};
use super::super::{js, stopping, warn, Ctx};
use super::{outgoing, InHand};
use tidings::{AnyEvent, PatternSubscription};

/// How long an acknowledgement may take before the window sends again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between tries while the broker is away.
const MAX_DELAY: Duration = Duration::from_secs(1);
const FIRST_DELAY: Duration = Duration::from_millis(10);

/// One event between its subscription and the stream.
struct Entry<'a> {
    topic: &'static str,
    subject: String,
    headers: bytes::BytesMut,
    payload: Vec<u8>,
    msg_id: String,
    /// The reply token of its latest send, while that send may still be
    /// answered.
    token: Option<u64>,
    sent_at: Instant,
    sends: u32,
    /// The stream's answer, once stored.
    stored: Option<js::PubAck>,
    _held: InHand<'a>,
}

struct Window<'a> {
    ctx: &'a Ctx,
    entries: VecDeque<Entry<'a>>,
    limit: usize,
    /// Entries before this index were sent on connection `generation`.
    next: usize,
    generation: u64,
    reply_prefix: String,
    next_token: u64,
    /// After trouble: one publish out at a time until one is stored.
    probing: bool,
    /// No send before this (after trouble, backing off).
    retry_at: Option<Instant>,
    delay: Duration,
    /// The highest stream sequence acknowledged so far.
    last_seq: u64,
}

/// Exports `sub`'s events through a window of `limit` publishes until the
/// bridge stops; then sends what is queued and waits for it to be stored.
pub(super) async fn durable_loop(
    ctx: &Ctx,
    sub: &mut PatternSubscription,
    stopped: watch::Receiver<bool>,
    limit: usize,
) {
    static EXPORTERS: AtomicU64 = AtomicU64::new(0);
    let reply_prefix = ctx
        .conn
        .inbox(&format!("ack{}", EXPORTERS.fetch_add(1, Ordering::Relaxed)));
    let mut acks = ctx.conn.subscribe(&format!("{reply_prefix}.*"), None);
    let mut generations = ctx.conn.generation();
    let generation = *generations.borrow_and_update();
    let mut w = Window {
        ctx,
        entries: VecDeque::with_capacity(limit.min(4096)),
        limit,
        next: 0,
        generation,
        reply_prefix,
        next_token: 0,
        probing: false,
        retry_at: None,
        delay: FIRST_DELAY,
        last_seq: 0,
    };
    let mut stop = pin!(stopping(stopped));
    let (mut open, mut closing) = (true, false);
    loop {
        w.pump();
        if !open && w.entries.is_empty() {
            return;
        }
        let wake = w.wake_at();
        let room = open && w.entries.len() < w.limit;
        tokio::select! {
            biased;
            changed = generations.changed() => {
                if changed.is_err() {
                    return; // the connection is closed for good
                }
                let now = *generations.borrow_and_update();
                w.reconnected(now);
            }
            ack = acks.next() => match ack {
                Some(leased) => w.answered(&leased),
                None => return,
            },
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                w.timer();
            }
            () = &mut stop, if !closing => {
                // Stopping: take no more, send what is queued.
                closing = true;
                sub.close();
            }
            event = sub.next(), if room => match event {
                Some(event) => w.push(event),
                None => open = false,
            },
        }
    }
}

impl<'a> Window<'a> {
    /// Takes an event into the window (sent by the next `pump`).
    fn push(&mut self, event: AnyEvent) {
        let Some(out) = outgoing(self.ctx, &event, true) else {
            return;
        };
        self.entries.push_back(Entry {
            topic: event.topic(),
            subject: out.subject,
            headers: out.headers,
            payload: out.payload,
            msg_id: out.msg_id.unwrap_or_default(),
            token: None,
            sent_at: Instant::now(),
            sends: 0,
            stored: None,
            _held: InHand::new(self.ctx),
        });
    }

    /// Sends what may go out now, in order.
    fn pump(&mut self) {
        if self.retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        self.retry_at = None;
        while self.next < self.entries.len() {
            // While probing, the oldest goes out alone.
            if self.probing && self.next > 0 {
                return;
            }
            let ctx = self.ctx;
            let e = &mut self.entries[self.next];
            if e.stored.is_none() {
                let token = self.next_token;
                let reply = format!("{}.{token}", self.reply_prefix);
                let sent = ctx.conn.publish_on(
                    self.generation,
                    e.subject.as_bytes(),
                    Some(reply.as_bytes()),
                    Some(&e.headers),
                    &e.payload,
                );
                if !sent {
                    // No room to write it now: nothing after it goes first.
                    self.retry_at = Some(Instant::now() + FIRST_DELAY);
                    return;
                }
                if e.sends > 0 {
                    ctx.count(
                        &ctx.counters.export_retries,
                        "tidings_bridge_export_retries_total",
                    );
                }
                e.sends = e.sends.saturating_add(1);
                e.token = Some(token);
                e.sent_at = Instant::now();
                self.next_token = self.next_token.wrapping_add(1);
            }
            self.next += 1;
        }
    }

    /// When the window must look again without being woken: a retry after
    /// backing off, or the oldest acknowledgement overdue.
    fn wake_at(&self) -> Option<Instant> {
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        let oldest = self.entries.front().filter(|e| e.token.is_some())?;
        Some(oldest.sent_at + ACK_TIMEOUT)
    }

    fn timer(&mut self) {
        if self.retry_at.is_some() {
            return; // `pump` sends
        }
        if let Some(e) = self.entries.front() {
            if e.token.is_some() && e.sent_at + ACK_TIMEOUT <= Instant::now() {
                let why = format!("no acknowledgement within {ACK_TIMEOUT:?}");
                self.trouble(&why, true);
            }
        }
    }

    /// A new connection: whatever was out on the old one is sent again.
    fn reconnected(&mut self, generation: u64) {
        self.generation = generation;
        if self.next > 0 {
            self.trouble("the connection was made again", false);
        }
    }

    /// An answer on the reply subject of one send.
    fn answered(&mut self, leased: &Leased) {
        let Delivery::Msg(msg) = &leased.delivery else {
            return;
        };
        let token = msg
            .subject
            .rsplit(|&b| b == b'.')
            .next()
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<u64>().ok());
        let Some(token) = token else {
            return;
        };
        // Only the answer to an entry's latest send counts: an older one
        // was given up on, and its resend is answered instead.
        let Some(i) = self.entries.iter().position(|e| e.token == Some(token)) else {
            return;
        };
        match js::pub_ack(msg) {
            Ok(ack) => {
                let e = &mut self.entries[i];
                e.token = None;
                e.stored = Some(ack);
                if self.probing {
                    self.probing = false;
                    self.delay = FIRST_DELAY;
                }
                self.settle();
            }
            Err(e) => {
                let why = format!("JetStream publish failed: {e}");
                self.trouble(&why, true);
            }
        }
    }

    /// Something went wrong: from the oldest unacknowledged on, everything
    /// is sent again, the first alone (after a pause if `back_off`).
    fn trouble(&mut self, why: &str, back_off: bool) {
        let ctx = self.ctx;
        if let Some(e) = self.entries.front() {
            if ctx.counters.export_retries.load(Ordering::Relaxed) % 50 == 0 {
                warn(
                    &ctx.name,
                    e.topic,
                    &format!("{why}; sending the unacknowledged again, in order"),
                );
            }
        }
        for e in &mut self.entries {
            e.token = None;
        }
        self.next = 0;
        self.probing = true;
        if back_off {
            self.retry_at = Some(Instant::now() + self.delay);
            self.delay = (self.delay * 2).min(MAX_DELAY);
        }
    }

    /// Counts and lets go of what is stored at the front.
    fn settle(&mut self) {
        let ctx = self.ctx;
        while let Some(e) = self.entries.front() {
            let Some(ack) = &e.stored else {
                return;
            };
            if ack.duplicate && e.sends == 1 {
                // The first send found the id taken: another message with
                // this key is stored, this one is not.
                ctx.count(
                    &ctx.counters.export_duplicates,
                    "tidings_bridge_export_duplicates_total",
                );
                warn(
                    &ctx.name,
                    e.topic,
                    &format!(
                        "JetStream already holds message id `{}` (within the stream's duplicate window): the broker dropped this export",
                        e.msg_id
                    ),
                );
            } else {
                if ack.seq < self.last_seq {
                    ctx.count(
                        &ctx.counters.export_reordered,
                        "tidings_bridge_export_reordered_total",
                    );
                    warn(
                        &ctx.name,
                        e.topic,
                        &format!(
                            "message id `{}` was stored at stream sequence {}, after {} of an event published later",
                            e.msg_id, ack.seq, self.last_seq
                        ),
                    );
                }
                self.last_seq = self.last_seq.max(ack.seq);
                ctx.count(&ctx.counters.exported, "tidings_bridge_exported_total");
            }
            self.entries.pop_front();
            self.next = self.next.saturating_sub(1);
        }
    }
}
