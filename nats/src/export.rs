//! Exports: local events of an exported topic, sent to NATS.
//!
//! One task per exported topic reads a local subscription named
//! `bridge:<name>` and sends each event, in order: in core mode as a plain
//! publish, in durable mode as a JetStream publish it waits for the stream
//! to acknowledge (retrying, with the same message id, until it does).

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::future::Either;
use futures::FutureExt;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{js, stopping, supervised, warn, wire, BridgeError, Ctx};
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
                export_loop(&ctx, &mut sub, stopped).await;
            }
        })
        .await;
    }))
}

async fn export_loop(ctx: &Ctx, sub: &mut PatternSubscription, stopped: watch::Receiver<bool>) {
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

/// Exports one event; a panic on the way (the format's code, or ours)
/// costs that event, counted and logged, never the exporter.
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

async fn export(ctx: &Ctx, event: AnyEvent) {
    if event.origin() == Some(ctx.origin()) {
        return; // imported by this bridge: never sent back
    }
    let _held = InHand::new(ctx);
    let failed = |why: String| {
        ctx.count(
            &ctx.counters.export_failures,
            "tidings_bridge_export_failures_total",
        );
        warn(&ctx.name, event.topic(), &why);
    };
    let payload = match ctx.format.encode(&event) {
        Ok(payload) => payload,
        Err(message) => return failed(format!("event does not encode: {message}")),
    };
    let subject = ctx.subject(event.topic());
    let id = ctx.ids.mint();
    let format = ctx.format.content_type();
    match &ctx.durable {
        None => {
            let headers = wire::headers(ctx.origin(), &id, &event, format, None);
            // Waits for room to write it: a slow connection slows the
            // exporter, and through its subscription local publishers,
            // instead of losing events here.
            if !ctx
                .conn
                .publish_wait(subject.as_bytes(), None, Some(&headers), &payload)
                .await
            {
                return failed("the connection is closed; event not sent".into());
            }
        }
        Some(_) => {
            let msg_id = event.idempotency_key().unwrap_or(&id);
            let headers = wire::headers(ctx.origin(), &id, &event, format, Some(msg_id));
            if !durable_send(ctx, &event, &subject, &headers, &payload, msg_id).await {
                return;
            }
        }
    }
    ctx.count(&ctx.counters.exported, "tidings_bridge_exported_total");
}

/// Publishes to the stream until it acknowledges. `false` if the broker
/// dropped it as a duplicate of an earlier message id (counted apart).
async fn durable_send(
    ctx: &Ctx,
    event: &AnyEvent,
    subject: &str,
    headers: &[u8],
    payload: &[u8],
    msg_id: &str,
) -> bool {
    let mut delay = Duration::from_millis(10);
    let mut retried = false;
    loop {
        let sent = ctx
            .conn
            .request_with(subject.as_bytes(), Some(headers), payload, js::API_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
            .and_then(|msg| js::pub_ack(&msg).map_err(|e| e.to_string()));
        match sent {
            // A retry found its own earlier try stored (its ack was lost):
            // the event did get through.
            Ok(ack) if ack.duplicate && retried => return true,
            Ok(ack) if ack.duplicate => {
                ctx.count(
                    &ctx.counters.export_duplicates,
                    "tidings_bridge_export_duplicates_total",
                );
                warn(
                    &ctx.name,
                    event.topic(),
                    &format!(
                        "JetStream already holds message id `{msg_id}` (within the stream's duplicate window): the broker dropped this export"
                    ),
                );
                return false;
            }
            Ok(_) => return true,
            Err(message) => {
                ctx.count(
                    &ctx.counters.export_retries,
                    "tidings_bridge_export_retries_total",
                );
                if ctx.counters.export_retries.load(Ordering::Relaxed) % 50 == 1 {
                    warn(
                        &ctx.name,
                        event.topic(),
                        &format!("JetStream publish failed, retrying: {message}"),
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                retried = true;
            }
        }
    }
}
