//! The durable importer: pulls from a JetStream consumer in batches, holds
//! no more than one batch the local bus has not finished handling, and
//! reads the consumer's max-deliveries advisories.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use tokio::sync::watch;

use super::super::conn::{Conn, Delivery, Leased, Subscription};
use super::super::proto::Headers;
use super::super::{js, stopping, wire, Ctx, RejectReason};
use super::{import, lossy, reject, Imported, InHand, IMPORT_BATCH, IMPORT_WAIT};

/// A durable importer's consumer: where it pulls from, and the settings
/// it is made (and made again) with.
#[derive(Clone)]
pub(super) struct Pull {
    pub(super) stream: String,
    pub(super) consumer: String,
    pub(super) inbox: String,
    pub(super) filter: String,
    pub(super) ack_wait: Duration,
    pub(super) max_deliver: i64,
}

impl Pull {
    /// Makes sure the consumer exists with its settings.
    pub(super) async fn ensure_consumer(&self, conn: &Conn) -> Result<(), js::JsError> {
        js::ensure_consumer(
            conn,
            &js::ConsumerConfig {
                stream: &self.stream,
                name: &self.consumer,
                filter: &self.filter,
                ack_wait: self.ack_wait,
                max_deliver: self.max_deliver,
                max_ack_pending: (IMPORT_BATCH * 4) as i64,
            },
        )
        .await
    }

    /// The consumer answered no pull, or the server said it was deleted:
    /// if it is gone (someone deleted it, a broker lost its state), it is
    /// made again, counted and logged. `true` if it had to be.
    async fn recreate_if_gone(&self, ctx: &Ctx) -> bool {
        if !matches!(
            js::consumer_missing(&ctx.conn, &self.stream, &self.consumer).await,
            Ok(true)
        ) {
            return false;
        }
        match self.ensure_consumer(&ctx.conn).await {
            Ok(()) => {
                ctx.consumer_recreated(&self.stream, &self.consumer);
                true
            }
            Err(_) => false,
        }
    }
}

/// Pulls batches from the durable consumer and imports them one by one,
/// each acknowledged once the local bus has it. Once stopped it asks for no
/// more, but finishes the pull it has out: every message fetched is handed
/// to the bus, counted and acknowledged, so a restart takes up exactly
/// where this left off.
pub(super) async fn durable_loop(
    ctx: &Ctx,
    pull: &Pull,
    sub: &mut Subscription,
    stopped: watch::Receiver<bool>,
    mine: &Arc<InHand>,
) {
    let mut generation = ctx.conn.generation();
    // Ask for no more bytes than may wait; at least one whole message.
    let max_bytes = (ctx.conn_budget() / 2).max(ctx.max_payload);
    // The next stored message is larger than a pull may fetch: the next
    // pull asks for it alone, with no byte limit, so that it is rejected as
    // oversize (it streams past the connection) instead of blocking every
    // pull behind it.
    let mut alone = false;
    while !*stopped.borrow() {
        // No more in hand than one batch: what waits in the local queues
        // waits for its acknowledgement, and the consumer's `ack_wait` runs
        // meanwhile. Other replicas of a group take the rest.
        let held = mine.len();
        let Some(batch) = IMPORT_BATCH.checked_sub(held).filter(|&b| b > 0) else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        generation.borrow_and_update();
        let (batch, max_bytes) = if std::mem::take(&mut alone) {
            (1, 0)
        } else {
            (batch, max_bytes)
        };
        if !js::pull(
            &ctx.conn,
            &pull.stream,
            &pull.consumer,
            &pull.inbox,
            batch,
            max_bytes,
            IMPORT_WAIT,
        ) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Read this pull's answers until it is over: its batch is full, the
        // server says it expired, or it cannot be answered any more (the
        // connection was made again: the pull went with the old one).
        let over = tokio::time::Instant::now() + IMPORT_WAIT + Duration::from_secs(2);
        let mut got = 0;
        // Whether anything at all came for this pull: a broker answers every
        // pull, at the latest with the status it sends when the pull expires.
        let mut answered = false;
        loop {
            let next = {
                let recv = pin!(sub.next());
                let changed = pin!(generation.changed());
                match tokio::time::timeout_at(over, futures::future::select(recv, changed)).await {
                    Err(_) => {
                        // Nothing at all, on a connection that stayed up:
                        // the consumer is gone (made again) or stuck.
                        if !answered
                            && ctx.conn.stats().connected
                            && !pull.recreate_if_gone(ctx).await
                        {
                            ctx.pull_unanswered(&pull.stream, &pull.consumer);
                        }
                        None
                    }
                    Ok(Either::Right(_)) => None,
                    Ok(Either::Left((None, _))) => return,
                    Ok(Either::Left((Some(leased), _))) => Some(leased),
                }
            };
            let Some(leased) = next else {
                break;
            };
            answered = true;
            match pulled(&leased) {
                Pulled::Heartbeat => {}
                Pulled::Over => break,
                Pulled::Refused(why) => {
                    ctx.pull_refused(&pull.stream, &pull.consumer, &why);
                    // "Consumer Deleted", or no responders for a consumer
                    // that is no longer there: made again if gone.
                    pull.recreate_if_gone(ctx).await;
                    alone = why.contains("Message Size Exceeds MaxBytes");
                    if !alone {
                        // Whatever it is, do not ask again at once.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
                Pulled::Message(reply) => {
                    let Some(seq) = js::stream_seq(&reply, &pull.stream, &pull.consumer) else {
                        // Not an acknowledgement subject of this consumer:
                        // someone else's message, checked like any other.
                        import(ctx, &leased, None).await;
                        continue;
                    };
                    got += 1;
                    if mine.redelivered(seq, &reply) {
                        // Delivered again while the bus still handles it:
                        // never acknowledged now (a crash would lose it),
                        // never imported twice; kept alive instead.
                        ctx.count(&ctx.counters.kept_alive, "tidings_bridge_kept_alive_total");
                        js::ack(&ctx.conn, &reply, js::Verdict::Progress);
                        if got >= batch {
                            break;
                        }
                        continue;
                    }
                    let how = match import(ctx, &leased, Some((seq, &reply, mine))).await {
                        Imported::Handed => None,
                        Imported::Done => Some(js::Verdict::Ack),
                        // Named in a `Rejected` and done with: acknowledged,
                        // never terminated, so that every termination on
                        // this consumer is someone else's (see
                        // `advisory_loop`).
                        Imported::Rejected => Some(js::Verdict::Ack),
                        Imported::Retry => Some(js::Verdict::Nak(Duration::from_millis(200))),
                    };
                    if let Some(how) = how {
                        js::ack(&ctx.conn, &reply, how);
                    }
                    if got >= batch {
                        break;
                    }
                }
                Pulled::Stray => {
                    import(ctx, &leased, None).await;
                }
            }
        }
    }
}

/// Sends a progress acknowledgement for every message `mine` holds, every
/// `every` (a third of the consumer's `ack_wait`), so that the broker does
/// not deliver again what local handlers are still working on.
pub(super) async fn progress_loop(
    ctx: &Ctx,
    mine: &InHand,
    every: Duration,
    stopped: watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_millis(10));
    let mut stop = pin!(stopping(stopped));
    loop {
        let tick = pin!(tokio::time::sleep(every));
        if let Either::Right(_) = futures::future::select(tick, stop.as_mut()).await {
            return;
        }
        for reply in mine.replies() {
            js::ack(&ctx.conn, &reply, js::Verdict::Progress);
        }
    }
}

/// What arrived on a pull's inbox.
enum Pulled {
    /// A stored message to import and acknowledge on this subject.
    Message(Bytes),
    /// The server is still there.
    Heartbeat,
    /// The pull is over (expired, or no messages).
    Over,
    /// The server refused the pull (409), with its reason: a stored message
    /// larger than the pull's byte limit, too many pulls waiting, the
    /// consumer deleted, …; or nobody answers for the consumer (503, it is
    /// gone). Counted, and reported in the bridge's health.
    Refused(String),
    /// Something that is not JetStream's (someone else published to the
    /// inbox): imported like any message, so it is checked and rejected.
    Stray,
}

fn pulled(leased: &Leased) -> Pulled {
    let Delivery::Msg(msg) = &leased.delivery else {
        return match &leased.delivery {
            Delivery::Oversize { reply: Some(r), .. } if r.starts_with(b"$JS.ACK.") => {
                Pulled::Message(r.clone())
            }
            _ => Pulled::Stray,
        };
    };
    if let Some(reply) = &msg.reply {
        if reply.starts_with(b"$JS.ACK.") {
            return Pulled::Message(reply.clone());
        }
        return Pulled::Stray;
    }
    let Some(headers) = msg.headers.as_ref().and_then(|h| Headers::parse(h).ok()) else {
        return Pulled::Stray;
    };
    match headers.status {
        Some(100) => Pulled::Heartbeat,
        Some(404 | 408) => Pulled::Over,
        Some(409 | 503) => Pulled::Refused(lossy(&headers.description)),
        _ => Pulled::Stray,
    }
}

/// Which advisories of the consumer an [`advisory_loop`] reads.
#[derive(Copy, Clone, Debug)]
pub(super) enum Advisory {
    /// The consumer gave up on a message after `max_deliver` deliveries.
    MaxDeliveries,
    /// A client terminated a message (`+TERM`): never the bridge, which
    /// acknowledges what it rejects.
    Terminated,
}

/// Reads the consumer's advisories of one kind: each names a message the
/// bridge will never import (the consumer gave up on it, or someone else
/// terminated it), which becomes a [`Rejected`] with its bytes. The
/// members of a replica group read them as a queue group: each advisory is
/// named by one of them.
pub(super) async fn advisory_loop(
    ctx: &Ctx,
    stream: &str,
    sub: &mut Subscription,
    stopped: watch::Receiver<bool>,
    kind: Advisory,
) {
    let mut stop = pin!(stopping(stopped));
    loop {
        let leased = match futures::future::select(pin!(sub.next()), stop.as_mut()).await {
            Either::Left((Some(leased), _)) => leased,
            Either::Left((None, _)) | Either::Right(_) => return,
        };
        let Delivery::Msg(msg) = &leased.delivery else {
            continue;
        };
        let Ok(advisory) = serde_json::from_slice::<js::MaxDeliveries>(&msg.payload) else {
            continue;
        };
        let reason = match kind {
            Advisory::MaxDeliveries => RejectReason::Undeliverable {
                deliveries: advisory.deliveries,
            },
            Advisory::Terminated => {
                ctx.count(
                    &ctx.counters.terminated_elsewhere,
                    "tidings_bridge_terminated_elsewhere_total",
                );
                RejectReason::TerminatedElsewhere
            }
        };
        match js::get_message(&ctx.conn, stream, advisory.stream_seq).await {
            Ok(stored) => {
                let id = stored
                    .headers
                    .as_ref()
                    .and_then(|h| Headers::parse(h).ok())
                    .and_then(|h| h.get(wire::EVENT_ID).map(lossy));
                reject(ctx, stored.subject.as_bytes(), reason, &stored.payload, id).await;
            }
            Err(e) => {
                let subject = format!("{stream} seq {} (not readable: {e})", advisory.stream_seq);
                reject(ctx, subject.as_bytes(), reason, &[], None).await;
            }
        }
    }
}
