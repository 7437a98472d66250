//! Exports: local events of an exported topic, sent to NATS.
//!
//! One task per exported topic reads a local subscription named
//! `bridge:<name>` and sends each event, in order: in core mode as a plain
//! publish, in durable mode as a JetStream publish through a window of
//! unacknowledged messages (see [`window`]).

mod window;

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::Either;
use futures::FutureExt;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{stopping, supervised, warn, wire, BridgeError, Ctx};
use tidings::{AnyEvent, PatternSubscription};

/// Subscribes to `topic` locally and starts its exporter.
pub(super) fn start(
    ctx: &Arc<Ctx>,
    topic: &'static str,
    stopped: &watch::Receiver<bool>,
) -> Result<JoinHandle<()>, BridgeError> {
    let sub = ctx
        .bus
        .subscribe_pattern(topic)
        .name(format!("bridge:{}", ctx.name))
        .stream()?;
    let sub = Arc::new(tokio::sync::Mutex::new(sub));
    let (ctx, stopped) = (Arc::clone(ctx), stopped.clone());
    Ok(tokio::spawn(async move {
        let c = Arc::clone(&ctx);
        supervised(c, "export", || {
            let (ctx, sub, stopped) = (Arc::clone(&ctx), Arc::clone(&sub), stopped.clone());
            async move {
                let mut sub = sub.lock().await;
                match &ctx.durable {
                    None => core_loop(&ctx, &mut sub, stopped).await,
                    Some(d) => window::durable_loop(&ctx, &mut sub, stopped, d.window).await,
                }
            }
        })
        .await;
    }))
}

async fn core_loop(ctx: &Ctx, sub: &mut PatternSubscription, stopped: watch::Receiver<bool>) {
    let mut stop = pin!(stopping(stopped));
    loop {
        match futures::future::select(sub.next(), stop.as_mut()).await {
            Either::Left((Some(event), _)) => guarded(ctx, event).await,
            Either::Left((None, _)) => return,
            Either::Right(((), _)) => break,
        }
    }
    // Stopping: take no more, send what is queued.
    sub.close();
    while let Some(event) = sub.next().await {
        guarded(ctx, event).await;
    }
}

/// Exports one event; a panic on the way (ours: the format's is caught in
/// `encode`) costs that event, counted and logged, never the exporter.
async fn guarded(ctx: &Ctx, event: AnyEvent) {
    let topic = event.topic();
    if let Err(panic) = AssertUnwindSafe(export(ctx, event)).catch_unwind().await {
        ctx.count(
            &ctx.counters.export_failures,
            "tidings_bridge_export_failures_total",
        );
        ctx.restarted(
            topic,
            &format!(
                "exporting an event failed ({}); it was not sent, the exporter goes on",
                super::text::panic_message(&*panic)
            ),
        );
    }
}

/// Counts an event the exporter holds until it is sent (or given up).
struct InHand<'a>(&'a Ctx);

impl<'a> InHand<'a> {
    fn new(ctx: &'a Ctx) -> Self {
        ctx.in_hand.fetch_add(1, Ordering::Relaxed);
        InHand(ctx)
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.0.in_hand.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts and logs an event that could not be exported.
fn failed(ctx: &Ctx, topic: &str, why: &str) {
    ctx.count(
        &ctx.counters.export_failures,
        "tidings_bridge_export_failures_total",
    );
    warn(&ctx.name, topic, why);
}

/// The event's payload in the bridge's format; `None` (counted, logged)
/// if it does not encode or the format's code panicked.
fn encode(ctx: &Ctx, event: &AnyEvent) -> Option<Vec<u8>> {
    let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| ctx.format.encode(event)));
    match encoded {
        Ok(Ok(payload)) => Some(payload),
        Ok(Err(message)) => {
            failed(
                ctx,
                event.topic(),
                &format!("event does not encode: {message}"),
            );
            None
        }
        Err(panic) => {
            ctx.count(
                &ctx.counters.export_failures,
                "tidings_bridge_export_failures_total",
            );
            ctx.restarted(
                event.topic(),
                &format!(
                    "encoding an event failed ({}); it was not sent, the exporter goes on",
                    super::text::panic_message(&*panic)
                ),
            );
            None
        }
    }
}

/// An event made ready to send.
struct Outgoing {
    subject: String,
    headers: bytes::BytesMut,
    payload: Vec<u8>,
    /// Its JetStream message id (durable mode): its idempotency key or
    /// its id.
    msg_id: Option<String>,
}

/// `event` ready to send; `None` if it must not go (an import of this
/// bridge's own, never sent back) or does not encode (counted, logged).
fn outgoing(ctx: &Ctx, event: &AnyEvent, durable: bool) -> Option<Outgoing> {
    if event.origin() == Some(ctx.origin()) {
        return None;
    }
    let payload = encode(ctx, event)?;
    let id = ctx.ids.id_of(event.id().get());
    let msg_id = durable.then(|| event.idempotency_key().unwrap_or(&id).to_owned());
    let format = ctx.format.content_type();
    let headers = wire::headers(&ctx.ids, &id, event, format, msg_id.as_deref());
    Some(Outgoing {
        subject: ctx.subject(event.topic()),
        headers,
        payload,
        msg_id,
    })
}

/// Core mode: one plain publish.
async fn export(ctx: &Ctx, event: AnyEvent) {
    let _held = InHand::new(ctx);
    let Some(out) = outgoing(ctx, &event, false) else {
        return;
    };
    // Waits for room to write it: a slow connection slows the exporter, and
    // through its subscription local publishers, instead of losing events
    // here.
    if !ctx
        .conn
        .publish_wait(
            out.subject.as_bytes(),
            None,
            Some(&out.headers),
            &out.payload,
        )
        .await
    {
        return failed(
            ctx,
            event.topic(),
            "the connection is closed; event not sent",
        );
    }
    ctx.count(&ctx.counters.exported, "tidings_bridge_exported_total");
}
