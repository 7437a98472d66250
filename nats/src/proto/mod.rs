//! The NATS client protocol, as far as the bridge's own connection speaks
//! it: parsing what the server sends, leniently, and writing commands.
//!
//! What the server forwards from other clients is hostile until checked.
//! The server frames every message (`MSG`/`HMSG` lines carry byte counts it
//! computed), but a peer chooses the subject, the reply subject and every
//! byte of the headers and payload. So the framing is parsed strictly and
//! the rest kept as bytes: a header that is not UTF-8, has no colon or a
//! lone CR, or a subject that is not UTF-8, is the problem of the one
//! message that carries it (the bridge rejects it), never of the
//! connection. Only a broken frame (which only a broken or hostile server
//! can send) ends the connection. Memory is bounded: a control line longer
//! than [`MAX_LINE`] is a broken frame, and a message longer than the limit
//! is skipped as it streams past, keeping only its first bytes.

use bytes::{Buf, Bytes, BytesMut};

/// The longest control line accepted (`MSG`, `INFO`, …). The server's own
/// limit for lines it reads is 4 KiB; `INFO` from a cluster can be longer.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// One message delivered on a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) subject: Bytes,
    pub(crate) sid: u64,
    pub(crate) reply: Option<Bytes>,
    /// The raw header block (`NATS/1.0…\r\n…\r\n\r\n`), if any.
    pub(crate) headers: Option<Bytes>,
    pub(crate) payload: Bytes,
}

impl Msg {
    /// Bytes it holds, for the connection's byte budget.
    pub(crate) fn size(&self) -> usize {
        self.subject.len()
            + self.reply.as_ref().map_or(0, Bytes::len)
            + self.headers.as_ref().map_or(0, Bytes::len)
            + self.payload.len()
    }
}

/// What the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Info(Bytes),
    Msg(Msg),
    /// A message over the size limit, skipped: its first bytes (headers,
    /// then payload) and its whole length.
    Oversize {
        subject: Bytes,
        sid: u64,
        reply: Option<Bytes>,
        len: usize,
        head: Bytes,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// A frame that cannot be parsed: the stream cannot be followed any more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("broken frame from the server: {0}")]
pub(crate) struct Broken(pub(crate) &'static str);

/// A message being skipped because it is over the limit.
#[derive(Debug)]
struct Skipping {
    subject: Bytes,
    sid: u64,
    reply: Option<Bytes>,
    len: usize,
    /// Bytes of it (and its trailing CRLF) still to skip.
    remaining: usize,
    head: BytesMut,
}

/// Splits what the server sends into frames.
#[derive(Debug)]
pub(crate) struct Parser {
    max_msg: usize,
    keep: usize,
    skipping: Option<Skipping>,
}

impl Parser {
    /// Messages over `max_msg` bytes (headers and payload) are skipped,
    /// keeping their first `keep` bytes.
    pub(crate) fn new(max_msg: usize, keep: usize) -> Self {
        Parser {
            max_msg,
            keep: keep.min(max_msg),
            skipping: None,
        }
    }

    /// The next frame in `buf`, consuming it; `None` if more bytes are
    /// needed.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Broken> {
        if let Some(skip) = &mut self.skipping {
            let n = skip.remaining.min(buf.len());
            // The trailing CRLF is skipped with the rest, never kept.
            let keep_upto = skip.len.saturating_sub(skip.head.len());
            let want = self
                .keep
                .saturating_sub(skip.head.len())
                .min(keep_upto)
                .min(n);
            skip.head.extend_from_slice(&buf[..want]);
            buf.advance(n);
            skip.remaining -= n;
            if skip.remaining > 0 {
                return Ok(None);
            }
            let Some(skip) = self.skipping.take() else {
                return Ok(None);
            };
            return Ok(Some(Frame::Oversize {
                subject: skip.subject,
                sid: skip.sid,
                reply: skip.reply,
                len: skip.len,
                head: skip.head.freeze(),
            }));
        }
        let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
            if buf.len() > MAX_LINE {
                return Err(Broken("control line too long"));
            }
            return Ok(None);
        };
        if end > MAX_LINE {
            return Err(Broken("control line too long"));
        }
        let line = &buf[..end];
        let op = line
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .map_or(line, |i| &line[..i]);
        let frame = if op.eq_ignore_ascii_case(b"MSG") || op.eq_ignore_ascii_case(b"HMSG") {
            return self.message(buf, end, op.len() == 4);
        } else if op.eq_ignore_ascii_case(b"PING") {
            Frame::Ping
        } else if op.eq_ignore_ascii_case(b"PONG") {
            Frame::Pong
        } else if op.eq_ignore_ascii_case(b"+OK") {
            Frame::Ok
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            let text = String::from_utf8_lossy(&line[op.len()..]);
            Frame::Err(text.trim().trim_matches('\'').chars().take(512).collect())
        } else if op.eq_ignore_ascii_case(b"INFO") {
            Frame::Info(Bytes::copy_from_slice(line[op.len()..].trim_ascii()))
        } else {
            return Err(Broken("unknown operation"));
        };
        buf.advance(end + 2);
        Ok(Some(frame))
    }

    /// `MSG <subject> <sid> [reply] <#bytes>` or
    /// `HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>`.
    fn message(
        &mut self,
        buf: &mut BytesMut,
        end: usize,
        headers: bool,
    ) -> Result<Option<Frame>, Broken> {
        let line = &buf[..end];
        let mut args = line
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|a| !a.is_empty())
            .skip(1);
        let mut take = || args.next();
        let (subject, sid) = match (take(), take()) {
            (Some(subject), Some(sid)) => (subject, sid),
            _ => return Err(Broken("message line with too few arguments")),
        };
        let rest: Vec<&[u8]> = std::iter::from_fn(take).collect();
        let sizes = if headers { 2 } else { 1 };
        let (reply, sizes) = match rest.len().checked_sub(sizes) {
            Some(0) => (None, &rest[..]),
            Some(1) => (Some(rest[0]), &rest[1..]),
            _ => return Err(Broken("message line with a wrong number of arguments")),
        };
        let sid = number(sid).ok_or(Broken("message line with a bad sid"))?;
        let (header_len, total) = if headers {
            let h = number(sizes[0]).ok_or(Broken("bad header size"))?;
            let t = number(sizes[1]).ok_or(Broken("bad total size"))?;
            if h > t {
                return Err(Broken("header size over the total size"));
            }
            (h, t)
        } else {
            (0, number(sizes[0]).ok_or(Broken("bad payload size"))?)
        };
        let to_usize = |n: u64| usize::try_from(n).map_err(|_| Broken("size out of range"));
        let (header_len, total) = (to_usize(header_len)?, to_usize(total)?);
        let subject = Bytes::copy_from_slice(subject);
        let reply = reply.map(Bytes::copy_from_slice);
        if total > self.max_msg {
            let remaining = total.checked_add(2).ok_or(Broken("size out of range"))?;
            buf.advance(end + 2);
            self.skipping = Some(Skipping {
                subject,
                sid,
                reply,
                len: total,
                remaining,
                head: BytesMut::with_capacity(self.keep),
            });
            return self.next(buf);
        }
        // The whole message and its CRLF must be here.
        let needed = end + 2 + total + 2;
        if buf.len() < needed {
            buf.reserve(needed - buf.len());
            return Ok(None);
        }
        if &buf[needed - 2..needed] != b"\r\n" {
            return Err(Broken("message not followed by CRLF"));
        }
        buf.advance(end + 2);
        let mut body = buf.split_to(total).freeze();
        buf.advance(2);
        let headers = headers.then(|| body.split_to(header_len));
        Ok(Some(Frame::Msg(Msg {
            subject,
            sid,
            reply,
            headers,
            payload: body,
        })))
    }
}

pub(super) fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

mod headers;
pub(crate) mod write;

pub(crate) use headers::Headers;

#[cfg(test)]
mod tests;
