//! Writes commands to the server.

use bytes::{BufMut, BytesMut};

pub(crate) fn connect(out: &mut BytesMut, json: &str) {
    out.put_slice(b"CONNECT ");
    out.put_slice(json.as_bytes());
    out.put_slice(b"\r\n");
}

pub(crate) fn ping(out: &mut BytesMut) {
    out.put_slice(b"PING\r\n");
}

pub(crate) fn pong(out: &mut BytesMut) {
    out.put_slice(b"PONG\r\n");
}

pub(crate) fn sub(out: &mut BytesMut, subject: &str, queue: Option<&str>, sid: u64) {
    out.put_slice(b"SUB ");
    out.put_slice(subject.as_bytes());
    if let Some(queue) = queue {
        out.put_u8(b' ');
        out.put_slice(queue.as_bytes());
    }
    out.put_slice(format!(" {sid}\r\n").as_bytes());
}

pub(crate) fn unsub(out: &mut BytesMut, sid: u64) {
    out.put_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

/// `PUB`, or `HPUB` with a header block (already encoded).
pub(crate) fn publish(
    out: &mut BytesMut,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    out.put_slice(if headers.is_some() { b"HPUB " } else { b"PUB " });
    out.put_slice(subject);
    if let Some(reply) = reply {
        out.put_u8(b' ');
        out.put_slice(reply);
    }
    match headers {
        Some(h) => {
            out.put_slice(format!(" {} {}\r\n", h.len(), h.len() + payload.len()).as_bytes())
        }
        None => out.put_slice(format!(" {}\r\n", payload.len()).as_bytes()),
    }
    if let Some(h) = headers {
        out.put_slice(h);
    }
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}
