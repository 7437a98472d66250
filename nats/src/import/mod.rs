//! Imports: messages from NATS, checked, turned into events and published
//! on the local bus.
//!
//! Every message is checked in this order, and the first problem decides:
//! its size, its headers (well formed; ids and keys short, printable UTF-8),
//! whether it is this bridge's own export coming back (an echo: counted,
//! skipped) or only claims to be (rejected), its subject (an imported,
//! allow-listed topic), its payload (decodes as the topic's type). Only then
//! is it published, under the bridge's own key scope. A message that fails
//! becomes a [`Rejected`] event; it never reaches a handler, never takes
//! the connection down, and is never lost without a count.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod durable;
mod in_hand;

use durable::{advisory_loop, durable_loop, progress_loop, Advisory, Pull};
pub(crate) use in_hand::InHand;

use super::conn::{Delivery, Leased, Subscription};
use super::proto::Headers;
use super::{
    bounded, js, stopping, supervised, warn, wire, BridgeError, Ctx, RejectReason, Rejected,
    REJECTED_FIELD_LIMIT,
};
use tidings::error::Refusal;
use tidings::{EventRef, Pattern, PublishOptions};

/// How many messages an importer pulls at once, and how long a pull waits
/// for them: also how long a stopping importer may take to see the stop.
pub(super) const IMPORT_BATCH: usize = 256;
pub(super) const IMPORT_WAIT: Duration = Duration::from_millis(250);

/// A stored message: its stream sequence, and what its importer holds.
pub(super) type Stored<'a> = (u64, &'a Bytes, &'a Arc<InHand>);

/// What became of one message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Imported {
    /// Published, found to be a duplicate or an echo: done with.
    Done,
    /// Published (durable): acknowledged once the bus is done with it.
    Handed,
    /// Rejected for good and named: acknowledge it (durable).
    Rejected,
    /// The bus refused it for now: have it redelivered (durable).
    Retry,
}

/// Subscribes to what `pattern` imports and starts its importer (and, in
/// durable mode, the reader of the consumer's max-deliveries advisories).
pub(super) async fn start(
    ctx: &Arc<Ctx>,
    pattern: &Pattern,
    stopped: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, BridgeError> {
    let subject = ctx.subject(pattern.as_str());
    let mut tasks = Vec::new();
    match &ctx.durable {
        None => {
            let sub = ctx.conn.subscribe(&subject, ctx.queue_group.as_deref());
            let sub = Arc::new(tokio::sync::Mutex::new(sub));
            let (c, stopped) = (Arc::clone(ctx), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let ctx = Arc::clone(&c);
                supervised(c, "import", || {
                    let (ctx, sub, stopped) = (Arc::clone(&ctx), Arc::clone(&sub), stopped.clone());
                    async move { core_loop(&ctx, &mut *sub.lock().await, stopped).await }
                })
                .await;
            }));
        }
        Some(durable) => {
            // A group's members share one consumer: named after the group.
            let owner = ctx.queue_group.as_deref().unwrap_or(&ctx.name);
            let consumer = consumer_name(owner, &subject);
            let nats = |what| {
                move |e: js::JsError| BridgeError::Nats {
                    what,
                    message: e.to_string(),
                }
            };
            let pull = Pull {
                stream: durable.stream.clone(),
                consumer: consumer.clone(),
                inbox: ctx.conn.inbox(&format!("pull.{consumer}")),
                filter: subject.clone(),
                ack_wait: durable.ack_wait,
                max_deliver: i64::from(durable.max_deliver),
            };
            pull.ensure_consumer(&ctx.conn)
                .await
                .map_err(nats("create the durable consumer"))?;
            let sub = Arc::new(tokio::sync::Mutex::new(
                ctx.conn.subscribe(&pull.inbox, None),
            ));
            let (c, stopped_pull) = (Arc::clone(ctx), stopped.clone());
            // This importer's messages handed to the bus, not yet handled.
            let mine = Arc::new(InHand::default());
            {
                // Keeps what it holds alive while local handlers work.
                let (c, mine, stopped) = (Arc::clone(ctx), Arc::clone(&mine), stopped.clone());
                let every = durable.ack_wait / 3;
                tasks.push(tokio::spawn(async move {
                    let ctx = Arc::clone(&c);
                    supervised(c, "progress", || {
                        let (ctx, mine, stopped) =
                            (Arc::clone(&ctx), Arc::clone(&mine), stopped.clone());
                        async move { progress_loop(&ctx, &mine, every, stopped).await }
                    })
                    .await;
                }));
            }
            tasks.push(tokio::spawn(async move {
                let ctx = Arc::clone(&c);
                supervised(c, "import", || {
                    let (ctx, sub, stopped) =
                        (Arc::clone(&ctx), Arc::clone(&sub), stopped_pull.clone());
                    let (pull, mine) = (pull.clone(), Arc::clone(&mine));
                    async move {
                        durable_loop(&ctx, &pull, &mut *sub.lock().await, stopped, &mine).await
                    }
                })
                .await;
            }));
            // The members of a group share the advisories of their shared
            // consumer: each is read by one of them, so that a message the
            // consumer gave up on is named once, not once per replica.
            for (subject, kind) in [
                (
                    js::advisory_subject(&durable.stream, &consumer),
                    Advisory::MaxDeliveries,
                ),
                (
                    js::terminated_subject(&durable.stream, &consumer),
                    Advisory::Terminated,
                ),
            ] {
                let advisories = ctx.conn.subscribe(&subject, ctx.queue_group.as_deref());
                let advisories = Arc::new(tokio::sync::Mutex::new(advisories));
                let (c, stopped) = (Arc::clone(ctx), stopped.clone());
                let stream = durable.stream.clone();
                tasks.push(tokio::spawn(async move {
                    let ctx = Arc::clone(&c);
                    supervised(c, "advisories", || {
                        let (ctx, sub, stopped) =
                            (Arc::clone(&ctx), Arc::clone(&advisories), stopped.clone());
                        let stream = stream.clone();
                        async move {
                            advisory_loop(&ctx, &stream, &mut *sub.lock().await, stopped, kind)
                                .await
                        }
                    })
                    .await;
                }));
            }
        }
    }
    Ok(tasks)
}

/// The durable consumer's name: the bridge's and the subject's, in the
/// characters consumer names allow.
fn consumer_name(bridge: &str, subject: &str) -> String {
    format!("{bridge}-{subject}")
        .chars()
        .map(|c| match c {
            '.' => '_',
            '*' => 'S',
            '>' => 'T',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect()
}

async fn core_loop(ctx: &Ctx, sub: &mut Subscription, stopped: watch::Receiver<bool>) {
    let mut stop = pin!(stopping(stopped));
    loop {
        match futures::future::select(pin!(sub.next()), stop.as_mut()).await {
            Either::Left((Some(leased), _)) => {
                import(ctx, &leased, None).await;
            }
            Either::Left((None, _)) => return,
            Either::Right(((), _)) => break,
        }
    }
    // Stopping: take no more, finish what was already received.
    sub.unsubscribe();
    while let Some(leased) = sub.try_next() {
        import(ctx, &leased, None).await;
    }
}

/// A header value as text, bounded.
pub(super) fn lossy(value: &Bytes) -> String {
    bounded(&String::from_utf8_lossy(value), REJECTED_FIELD_LIMIT)
}

/// A header that must be short, printable UTF-8: `Ok(None)` if absent.
fn id_header(headers: &Headers, name: &str) -> Result<Option<String>, String> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value).map_err(|_| format!("{name} is not UTF-8"))?;
    if text.is_empty() || text.len() > wire::MAX_ID_LEN {
        return Err(format!(
            "{name} is {} bytes long (1 to {} allowed)",
            text.len(),
            wire::MAX_ID_LEN
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{name} holds a control character"));
    }
    Ok(Some(text.to_owned()))
}

/// Checks one message and publishes it on the bus; see the module docs.
/// A stored message (durable mode) comes with the subject to acknowledge
/// it on: once the bus accepted it, the acknowledgement goes when every
/// local subscription is done with it (so a replica killed with events in
/// hand has them delivered again), or at once on a topic that retains
/// events (its log would hold them past their handling).
pub(super) async fn import(ctx: &Ctx, leased: &Leased, stored: Option<Stored<'_>>) -> Imported {
    let durable = stored.is_some();
    let (subject, headers, payload) = match &leased.delivery {
        Delivery::Oversize {
            subject, len, head, ..
        } => {
            let limit = ctx.max_payload;
            return reject_sized(
                ctx,
                subject,
                RejectReason::Oversize { limit },
                head,
                *len,
                None,
            )
            .await;
        }
        Delivery::Msg(msg) => (&msg.subject, msg.headers.as_ref(), &msg.payload),
    };
    let headers = match headers.map(Headers::parse).transpose() {
        Ok(headers) => headers.unwrap_or_default(),
        Err(e) => {
            return reject(
                ctx,
                subject,
                RejectReason::BadHeaders(e.to_string()),
                payload,
                None,
            )
            .await
        }
    };
    let checked = [
        wire::EVENT_ID,
        wire::IDEMPOTENCY_KEY,
        wire::CAUSED_BY,
        wire::CORRELATION,
    ]
    .map(|name| id_header(&headers, name));
    let [event_id, key, caused_by, correlation] = match checked {
        [Ok(id), Ok(key), Ok(cause), Ok(root)] => [id, key, cause, root],
        [Err(e), ..] | [_, Err(e), ..] | [_, _, Err(e), _] | [.., Err(e)] => {
            let id = headers.get(wire::EVENT_ID).map(lossy);
            return reject(ctx, subject, RejectReason::BadHeaders(e), payload, id).await;
        }
    };
    // Its own export coming back, or a message claiming to be one.
    if event_id.as_deref().is_some_and(|id| ctx.ids.is_ours(id)) {
        ctx.count(&ctx.counters.echoes, "tidings_bridge_echoes_total");
        return Imported::Done;
    }
    if headers.get(wire::ORIGIN).map(|o| &o[..]) == Some(ctx.origin().as_bytes()) {
        return reject(ctx, subject, RejectReason::SpoofedOrigin, payload, event_id).await;
    }
    // An id, a cause or a correlation that claims this bridge's origin is
    // one it minted, checked against its tag, or a forgery: such a message
    // would name (or suppress, by its id) an event it has nothing to do
    // with.
    let forged = [&event_id, &caused_by, &correlation]
        .into_iter()
        .flatten()
        .any(|id| ctx.ids.claims_ours(id) && !ctx.ids.is_ours(id));
    if forged {
        return reject(ctx, subject, RejectReason::SpoofedOrigin, payload, event_id).await;
    }
    let topic = std::str::from_utf8(subject)
        .ok()
        .and_then(|s| ctx.topic_of(s))
        .filter(|t| !t.starts_with("tidings.") && ctx.imports.iter().any(|p| p.matches(t)))
        .filter(|t| ctx.bus.topic_info(t).is_some());
    let Some(topic) = topic else {
        return reject(ctx, subject, RejectReason::NotAllowed, payload, event_id).await;
    };
    // The format and the type's deserializer are code of the user's: a
    // panic in them is this message's problem only.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.format.decode(&ctx.bus, topic, payload)
    }));
    let event = match decoded {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => {
            let reason = RejectReason::Malformed(bounded(&e.to_string(), REJECTED_FIELD_LIMIT));
            return reject(ctx, subject, reason, payload, event_id).await;
        }
        Err(_) => {
            let reason = RejectReason::Malformed("the decoder panicked".into());
            return reject(ctx, subject, reason, payload, event_id).await;
        }
    };
    let mut options = PublishOptions::new().origin(Arc::clone(&ctx.shared_origin));
    // Followed across processes: events its handlers publish name it by
    // its id on the wire, and it keeps the cause it came with.
    let wire_id: Option<Arc<str>> = event_id.as_deref().map(Arc::from);
    if let Some(id) = &wire_id {
        options = options.remote_id(Arc::clone(id));
    }
    #[cfg(feature = "opentelemetry")]
    if let Some(parent) = headers
        .get(wire::TRACEPARENT)
        .and_then(|v| wire::parse_traceparent(v))
    {
        options = options.trace_parent(parent);
    }
    if let Some(cause) = caused_by {
        let root = correlation.unwrap_or_else(|| cause.clone());
        options = options.cause(
            EventRef::Remote(cause.into()),
            EventRef::Remote(root.into()),
        );
    }
    let ack_when_done = stored.filter(|_| ctx.bus.topic_info(topic).is_some_and(|t| t.retain == 0));
    if let Some((seq, reply, mine)) = ack_when_done {
        let conn = ctx.conn.clone();
        let (unacked, mine) = (Arc::clone(&ctx.unacked), Arc::clone(mine));
        unacked.fetch_add(1, Ordering::AcqRel);
        mine.hand(seq, reply.clone());
        options = options.on_done(move || {
            // On the latest delivery's subject: the broker may have
            // delivered it again meanwhile.
            if let Some(reply) = mine.done(seq) {
                js::ack(&conn, &reply, js::Verdict::Ack);
            }
            unacked.fetch_sub(1, Ordering::AcqRel);
        });
    }
    let key: Option<Arc<str>> = key.as_deref().map(Arc::from).or(wire_id);
    if let Some(key) = key {
        options = options.idempotency_key(key);
        if !ctx.share_keys {
            options = options.key_scope(Arc::clone(&ctx.key_scope));
        }
    }
    let imported = match ctx.bus.publish_dyn(event, options).await {
        Ok(receipt) if receipt.is_duplicate() => {
            ctx.count(&ctx.counters.duplicates, "tidings_bridge_duplicates_total");
            Imported::Done
        }
        Ok(_) => {
            ctx.count(&ctx.counters.imported, "tidings_bridge_imported_total");
            if ack_when_done.is_some() {
                Imported::Handed
            } else {
                Imported::Done
            }
        }
        Err(e) if matches!(e.reason(), Refusal::InvalidKey { .. }) => {
            let reason = RejectReason::BadHeaders(e.to_string());
            reject(ctx, subject, reason, payload, event_id).await
        }
        Err(_) if durable => Imported::Retry,
        Err(e) => {
            let reason = RejectReason::Refused(bounded(&e.to_string(), REJECTED_FIELD_LIMIT));
            reject(ctx, subject, reason, payload, event_id).await
        }
    };
    if let (Some((seq, _, mine)), false) = (ack_when_done, imported == Imported::Handed) {
        // Not accepted: `on_done` never runs, the caller answers now.
        ctx.unacked.fetch_sub(1, Ordering::AcqRel);
        mine.done(seq);
    }
    imported
}

pub(super) async fn reject(
    ctx: &Ctx,
    subject: &[u8],
    reason: RejectReason,
    payload: &[u8],
    event_id: Option<String>,
) -> Imported {
    reject_sized(ctx, subject, reason, payload, payload.len(), event_id).await
}

/// Publishes a [`Rejected`] (never waiting: the topic drops its oldest
/// when a reader falls behind), counts it and logs it (at most one line a
/// second per bridge, with how many were not logged).
async fn reject_sized(
    ctx: &Ctx,
    subject: &[u8],
    reason: RejectReason,
    raw: &[u8],
    raw_len: usize,
    event_id: Option<String>,
) -> Imported {
    ctx.counters
        .rejected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tidings_bridge_rejected_total",
        "bridge" => ctx.name.clone(),
        "reason" => reason.label()
    )
    .increment(1);
    let subject = bounded(&String::from_utf8_lossy(subject), REJECTED_FIELD_LIMIT);
    if let Some(quiet) = ctx.log_rejection() {
        let more = if quiet > 0 {
            format!(" ({quiet} more not logged)")
        } else {
            String::new()
        };
        warn(
            &ctx.name,
            &subject,
            &format!("message rejected: {reason}{more}"),
        );
    }
    let rejected = Rejected {
        bridge: ctx.name.clone(),
        subject,
        reason,
        raw: raw[..raw.len().min(ctx.raw_limit)].to_vec(),
        raw_len,
        event_id: event_id.map(|id| bounded(&id, REJECTED_FIELD_LIMIT)),
    };
    if ctx.bus.try_publish(rejected).is_err() {
        ctx.counters
            .rejected_unpublished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Imported::Rejected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_keep_to_the_allowed_characters() {
        assert_eq!(consumer_name("billing", "orders.>"), "billing-orders_T");
        assert_eq!(consumer_name("b", "a.*.c"), "b-a_S_c");
        assert_eq!(consumer_name("b", "a b"), "b-a_b");
    }
}
