//! The parts of the JetStream API the bridge uses, spoken over its own
//! connection: making sure the stream and the durable consumers exist,
//! publishing with an acknowledgement, pulling, acknowledging, the
//! max-deliveries advisory, and fetching a stored message by sequence.
//!
//! Every answer is JSON from the server; it is still parsed as untrusted
//! input (a missing or odd field is an error that names the step, never a
//! panic).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::conn::{Conn, ConnectError};
use super::proto::Msg;

/// How long a JetStream API request may take.
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(10);

/// An error of the JetStream API, or of reaching it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsError {
    #[error("{0}")]
    Conn(#[from] ConnectError),
    #[error("JetStream error {code} ({err_code}): {description}")]
    Api {
        code: u16,
        err_code: u32,
        description: String,
    },
    #[error("unexpected answer from JetStream: {0}")]
    Answer(String),
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Envelope<T> {
    error: Option<ApiError>,
    #[serde(flatten)]
    body: Option<T>,
}

fn parse<T: for<'de> Deserialize<'de>>(msg: &Msg) -> Result<T, JsError> {
    if msg.payload.is_empty() {
        // No responders: JetStream is not enabled (or not reachable).
        return Err(JsError::Answer(
            "no answer (is JetStream enabled on the server?)".into(),
        ));
    }
    let env: Envelope<T> =
        serde_json::from_slice(&msg.payload).map_err(|e| JsError::Answer(e.to_string()))?;
    if let Some(e) = env.error {
        return Err(JsError::Api {
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        });
    }
    env.body
        .ok_or_else(|| JsError::Answer("an empty answer".into()))
}

async fn api<T: for<'de> Deserialize<'de>>(
    conn: &Conn,
    subject: &str,
    body: &serde_json::Value,
) -> Result<T, JsError> {
    let msg = conn
        .request(subject, body.to_string().as_bytes(), API_TIMEOUT)
        .await?;
    parse(&msg)
}

#[derive(Deserialize)]
struct Anything {}

/// How many times a step that replicas starting together race on is
/// tried: creating the stream, and the group's shared consumer.
const RACE_ATTEMPTS: u32 = 4;

/// How long replicas that found no consumer spread their second look over.
const CREATE_SPREAD: Duration = Duration::from_millis(250);

/// A pause of up to `spread`, different from one process or task to the
/// next (the clock's nanoseconds through a hasher with a random key).
fn jitter(spread: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    let spread = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(h.finish() % spread)
}

/// Waits before trying a raced step again: 100, 200, 400 ms, plus up to
/// 100 ms of jitter, so that replicas that lost together do not try again
/// together.
async fn after_a_lost_race(attempt: u32) {
    let wait = Duration::from_millis(100u64 << attempt.min(4)) + jitter(Duration::from_millis(100));
    tokio::time::sleep(wait).await;
}

/// Makes sure stream `name` exists, holding `subjects`, with the given
/// duplicate window; creates it (file storage) if it does not.
///
/// Replicas deployed together each find no stream and ask to create it:
/// the broker answers all but one with an error (10065, "subjects overlap
/// with an existing stream"), and some brokers leave a request of that
/// crowd unanswered for a while. So a failed creation, or an unanswered
/// request, is followed by another look, a few times: a stream someone else
/// made is as good as ours. An error that says something else (no
/// permission, say) is returned at once.
pub(crate) async fn ensure_stream(
    conn: &Conn,
    name: &str,
    subjects: &[String],
    duplicate_window: Duration,
) -> Result<(), JsError> {
    let window = u64::try_from(duplicate_window.as_nanos()).unwrap_or(u64::MAX);
    let config = json!({
        "name": name,
        "subjects": subjects,
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "num_replicas": 1,
        "duplicate_window": window,
    });
    let (info, create) = (
        format!("$JS.API.STREAM.INFO.{name}"),
        format!("$JS.API.STREAM.CREATE.{name}"),
    );
    let mut attempt = 1;
    loop {
        let failed = match api::<Anything>(conn, &info, &json!({})).await {
            Ok(_) => return Ok(()),
            // 10059: stream not found.
            Err(JsError::Api {
                err_code: 10059, ..
            }) => match api::<Anything>(conn, &create, &config).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            },
            Err(e @ JsError::Conn(_)) => e,
            Err(e) => return Err(e),
        };
        if attempt >= RACE_ATTEMPTS {
            return Err(failed);
        }
        after_a_lost_race(attempt).await;
        attempt += 1;
    }
}

/// What the bridge sets of a consumer, as the broker reports it.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
struct ConsumerSettings {
    ack_wait: u64,
    max_deliver: i64,
    max_ack_pending: i64,
    filter_subject: String,
}

#[derive(Deserialize)]
struct ConsumerInfo {
    #[serde(default)]
    config: ConsumerSettings,
}

/// A durable pull consumer's settings.
pub(crate) struct ConsumerConfig<'a> {
    pub(crate) stream: &'a str,
    pub(crate) name: &'a str,
    pub(crate) filter: &'a str,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: i64,
    pub(crate) max_ack_pending: i64,
}

/// Makes sure the durable pull consumer exists with these settings:
/// creates it if it is not there, updates it if its settings differ, and
/// otherwise sends nothing.
pub(crate) async fn ensure_consumer(conn: &Conn, c: &ConsumerConfig<'_>) -> Result<(), JsError> {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let body = json!({
        "stream_name": c.stream,
        "config": {
            "durable_name": c.name,
            "name": c.name,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": nanos(c.ack_wait),
            "max_deliver": c.max_deliver,
            "max_ack_pending": c.max_ack_pending,
            "filter_subject": c.filter,
            "replay_policy": "instant",
        }
    });
    // A consumer that exists with these settings is left as it is: asking
    // the broker to create a consumer that replicas are already pulling
    // from can leave it answering no pull again (nats-server before 2.9.15;
    // see the README's "Replicas"). One whose settings differ (a new
    // `ack_wait`, say) is updated. One that does not exist yet is looked
    // for once more after a random pause, so that replicas starting
    // together mostly find the first one's instead of all creating it at
    // once.
    let info = format!("$JS.API.CONSUMER.INFO.{}.{}", c.stream, c.name);
    let create = format!("$JS.API.CONSUMER.CREATE.{}.{}", c.stream, c.name);
    let wanted = ConsumerSettings {
        ack_wait: nanos(c.ack_wait),
        max_deliver: c.max_deliver,
        max_ack_pending: c.max_ack_pending,
        filter_subject: c.filter.to_owned(),
    };
    let mut attempt = 1;
    loop {
        let found = match api::<ConsumerInfo>(conn, &info, &json!({})).await {
            // 10014: consumer not found.
            Err(JsError::Api {
                err_code: 10014, ..
            }) => {
                tokio::time::sleep(jitter(CREATE_SPREAD)).await;
                api::<ConsumerInfo>(conn, &info, &json!({})).await
            }
            other => other,
        };
        let outcome = match found {
            Ok(found) if found.config == wanted => Ok(()),
            Ok(_)
            | Err(JsError::Api {
                err_code: 10014, ..
            }) => api::<Anything>(conn, &create, &body).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return Ok(()),
            // Unanswered (a crowded broker): asked again.
            Err(JsError::Conn(_)) if attempt < RACE_ATTEMPTS => {
                after_a_lost_race(attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the durable consumer is gone (deleted, or never made): the
/// broker answers its info request with "consumer not found".
pub(crate) async fn consumer_missing(
    conn: &Conn,
    stream: &str,
    name: &str,
) -> Result<bool, JsError> {
    let info = format!("$JS.API.CONSUMER.INFO.{stream}.{name}");
    match api::<ConsumerInfo>(conn, &info, &json!({})).await {
        Ok(_) => Ok(false),
        // 10014: consumer not found.
        Err(JsError::Api {
            err_code: 10014, ..
        }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The acknowledgement of a publish to a stream.
#[derive(Debug, Deserialize)]
pub(crate) struct PubAck {
    /// The stream sequence the message was stored at (the original's, for
    /// a duplicate).
    #[serde(default)]
    pub(crate) seq: u64,
    #[serde(default)]
    pub(crate) duplicate: bool,
}

/// Parses the answer to a publish.
pub(crate) fn pub_ack(msg: &Msg) -> Result<PubAck, JsError> {
    parse(msg)
}

/// Asks the consumer for up to `batch` messages (at most `max_bytes` in
/// all), delivered to `inbox` within `expires`.
pub(crate) fn pull(
    conn: &Conn,
    stream: &str,
    consumer: &str,
    inbox: &str,
    batch: usize,
    max_bytes: usize,
    expires: Duration,
) -> bool {
    let body = json!({
        "batch": batch,
        "max_bytes": max_bytes,
        "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
    });
    conn.publish(
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}").as_bytes(),
        Some(inbox.as_bytes()),
        None,
        body.to_string().as_bytes(),
    )
}

/// How a delivered message is acknowledged.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done with it.
    Ack,
    /// Deliver it again after this delay.
    Nak(Duration),
    /// Still working on it: restart the consumer's `ack_wait`.
    Progress,
}

/// The stream sequence a JetStream acknowledgement subject names, if it is
/// one of `stream` and `consumer`'s. Two layouts exist:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`
/// and, with a domain and an account hash after `ACK` (and, on newer
/// servers, a random token at the end), the same fields after those.
pub(crate) fn stream_seq(reply: &[u8], stream: &str, consumer: &str) -> Option<u64> {
    let text = std::str::from_utf8(reply).ok()?;
    let tokens: Vec<&str> = text.split('.').collect();
    let fields: &[&str] = match tokens.len() {
        9 => &tokens[2..],
        11 | 12 => &tokens[4..],
        _ => return None,
    };
    if tokens.first() != Some(&"$JS") || tokens.get(1) != Some(&"ACK") {
        return None;
    }
    if fields.first() != Some(&stream) || fields.get(1) != Some(&consumer) {
        return None;
    }
    fields.get(3)?.parse().ok()
}

/// Acknowledges a delivered message on its reply subject, which must be a
/// JetStream ack subject: a reply subject chosen by a peer never makes the
/// bridge publish anywhere else.
pub(crate) fn ack(conn: &Conn, reply: &[u8], how: Verdict) -> bool {
    if !reply.starts_with(b"$JS.ACK.") {
        return false;
    }
    let body: Bytes = match how {
        Verdict::Ack => Bytes::from_static(b"+ACK"),
        Verdict::Progress => Bytes::from_static(b"+WPI"),
        Verdict::Nak(delay) => format!(
            "-NAK {{\"delay\":{}}}",
            u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)
        )
        .into(),
    };
    conn.publish(reply, None, None, &body)
}

/// The max-deliveries advisory: a message the consumer gave up on.
#[derive(Debug, Deserialize)]
pub(crate) struct MaxDeliveries {
    pub(crate) stream_seq: u64,
    #[serde(default)]
    pub(crate) deliveries: u64,
}

pub(crate) fn advisory_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

/// The subject of the consumer's terminated-message advisories (a client
/// answered `+TERM`); the advisory has the same fields as the
/// max-deliveries one.
pub(crate) fn terminated_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{consumer}")
}

/// A stored message, fetched by sequence number.
pub(crate) struct Stored {
    pub(crate) subject: String,
    pub(crate) headers: Option<Bytes>,
    pub(crate) payload: Bytes,
}

#[derive(Deserialize)]
struct GetAnswer {
    message: StoredJson,
}

#[derive(Deserialize)]
struct StoredJson {
    subject: String,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// Fetches message `seq` of `stream`.
pub(crate) async fn get_message(conn: &Conn, stream: &str, seq: u64) -> Result<Stored, JsError> {
    let answer: GetAnswer = api(
        conn,
        &format!("$JS.API.STREAM.MSG.GET.{stream}"),
        &json!({ "seq": seq }),
    )
    .await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |s: Option<String>| -> Result<Option<Bytes>, JsError> {
        s.map(|s| b64.decode(s).map(Bytes::from))
            .transpose()
            .map_err(|e| JsError::Answer(format!("stored message: {e}")))
    };
    Ok(Stored {
        subject: answer.message.subject,
        headers: decode(answer.message.hdrs)?,
        payload: decode(answer.message.data)?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::stream_seq;

    #[test]
    fn the_stream_sequence_is_read_from_either_layout_of_ack_subject_and_only_for_our_consumer() {
        let v1 = b"$JS.ACK.ORDERS.billing.2.42.7.1700000000000000000.3";
        assert_eq!(stream_seq(v1, "ORDERS", "billing"), Some(42));
        let v2 = b"$JS.ACK._.ACCHASH.ORDERS.billing.2.43.7.1700000000000000000.3.rnd";
        assert_eq!(stream_seq(v2, "ORDERS", "billing"), Some(43));
        let v2_short = b"$JS.ACK.hub.ACCHASH.ORDERS.billing.1.44.8.1700000000000000000.0";
        assert_eq!(stream_seq(v2_short, "ORDERS", "billing"), Some(44));
        assert_eq!(
            stream_seq(v1, "ORDERS", "mailer"),
            None,
            "another consumer's"
        );
        assert_eq!(stream_seq(v1, "OTHER", "billing"), None, "another stream's");
        assert_eq!(
            stream_seq(b"$JS.ACK.ORDERS.billing.x.y", "ORDERS", "billing"),
            None
        );
        assert_eq!(
            stream_seq(b"$JS.ACK.ORDERS.billing.2.nan.7.1.3", "ORDERS", "billing"),
            None
        );
        assert_eq!(stream_seq(b"\xff\xfe", "ORDERS", "billing"), None);
    }
}
