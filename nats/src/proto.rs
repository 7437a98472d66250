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

use bytes::{Buf, BufMut, Bytes, BytesMut};

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

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// A parsed header block. Names and values stay bytes: a header the bridge
/// does not use may hold anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Headers {
    /// The status code of the version line (`NATS/1.0 408 Request Timeout`).
    pub(crate) status: Option<u16>,
    pub(crate) description: Bytes,
    fields: Vec<(Bytes, Bytes)>,
}

/// Why a header block was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("the header block does not start with NATS/1.0")]
    Version,
    #[error("a header line has no colon")]
    NoColon,
    #[error("a header line holds a lone CR or LF")]
    BareLineBreak,
    #[error("a header name is empty or holds a character names cannot")]
    BadName,
    #[error("the status code is not a number")]
    BadStatus,
}

impl Headers {
    /// Parses a header block. A block with one bad line is refused as a
    /// whole (its message is rejected by the caller): better than guessing
    /// which fields a hostile sender meant.
    pub(crate) fn parse(block: &Bytes) -> Result<Headers, HeaderError> {
        let mut lines = split_lines(block)?;
        let version = lines.next().ok_or(HeaderError::Version)?;
        let rest = version
            .strip_prefix(b"NATS/1.0")
            .ok_or(HeaderError::Version)?
            .trim_ascii();
        let (status, description) = match rest.iter().position(|b| *b == b' ') {
            Some(i) => (&rest[..i], rest[i + 1..].trim_ascii()),
            None => (rest, &b""[..]),
        };
        let status = if status.is_empty() {
            None
        } else {
            let code = number(status).ok_or(HeaderError::BadStatus)?;
            Some(u16::try_from(code).map_err(|_| HeaderError::BadStatus)?)
        };
        let mut fields = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .ok_or(HeaderError::NoColon)?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err(HeaderError::BadName);
            }
            let value = line[colon + 1..].trim_ascii();
            fields.push((block.slice_ref(name), block.slice_ref(value)));
        }
        Ok(Headers {
            status,
            description: block.slice_ref(description),
            fields,
        })
    }

    /// The first value of `name` (ASCII case-insensitive), as bytes.
    pub(crate) fn get(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// The lines of a header block, split on CRLF; a CR or LF that is not part
/// of a CRLF is refused (it is how a hostile header breaks clients that
/// split on one and check the other).
fn split_lines(block: &[u8]) -> Result<impl Iterator<Item = &[u8]>, HeaderError> {
    let mut lines = Vec::new();
    let mut rest = block;
    while !rest.is_empty() {
        let end = memchr::memmem::find(rest, b"\r\n").unwrap_or(rest.len());
        let line = &rest[..end];
        if line.iter().any(|b| *b == b'\r' || *b == b'\n') {
            return Err(HeaderError::BareLineBreak);
        }
        lines.push(line);
        rest = rest.get(end + 2..).unwrap_or(&[]);
    }
    Ok(lines.into_iter())
}

/// Writes commands to the server.
pub(crate) mod write {
    use super::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(parser: &mut Parser, bytes: &[u8]) -> Result<Vec<Frame>, Broken> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = parser.next(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn messages_with_and_without_headers() {
        let mut p = Parser::new(1 << 20, 16);
        let frames = parse_all(
            &mut p,
            b"PING\r\nMSG a.b 1 5\r\nhello\r\nHMSG a.c 2 _INBOX.x 12 14\r\nNATS/1.0\r\n\r\nhi\r\n+OK\r\n-ERR 'Permissions Violation'\r\n",
        )
        .unwrap();
        assert_eq!(frames[0], Frame::Ping);
        let Frame::Msg(m) = &frames[1] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            (&m.subject[..], m.sid, &m.payload[..]),
            (&b"a.b"[..], 1, &b"hello"[..])
        );
        let Frame::Msg(m) = &frames[2] else {
            panic!("{frames:?}")
        };
        assert_eq!(m.reply.as_deref(), Some(&b"_INBOX.x"[..]));
        assert_eq!(m.headers.as_deref(), Some(&b"NATS/1.0\r\n\r\n"[..]));
        assert_eq!(&m.payload[..], b"hi");
        assert_eq!(frames[3], Frame::Ok);
        assert_eq!(frames[4], Frame::Err("Permissions Violation".into()));
    }

    #[test]
    fn hostile_bytes_stay_in_their_message() {
        // A lone CR in a header value, non-UTF-8 in a header and a subject,
        // a header line without a colon: each frame still parses, and only
        // its header block is refused.
        let mut p = Parser::new(1 << 20, 16);
        let block = b"NATS/1.0\r\nX-Any: a\rb\r\n\r\n";
        let mut raw = b"HMSG s.\xff 1 ".to_vec();
        raw.extend_from_slice(format!("{} {}\r\n", block.len(), block.len() + 2).as_bytes());
        raw.extend_from_slice(block);
        raw.extend_from_slice(b"ok\r\n");
        let frames = parse_all(&mut p, &raw).unwrap();
        let Frame::Msg(m) = &frames[0] else { panic!() };
        assert_eq!(
            Headers::parse(m.headers.as_ref().unwrap()),
            Err(HeaderError::BareLineBreak)
        );
        for (block, err) in [
            (
                &b"NATS/1.0\r\nno colon here\r\n\r\n"[..],
                HeaderError::NoColon,
            ),
            (b"HTTP/1.1\r\n\r\n", HeaderError::Version),
            (b"NATS/1.0 abc\r\n\r\n", HeaderError::BadStatus),
            (b"NATS/1.0\r\nBad Name: v\r\n\r\n", HeaderError::BadName),
        ] {
            assert_eq!(Headers::parse(&Bytes::copy_from_slice(block)), Err(err));
        }
        let ok = Headers::parse(&Bytes::from_static(
            b"NATS/1.0 408 Request Timeout\r\nTidings-Topic: a.b\r\nX: \xff\xfe\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(ok.status, Some(408));
        assert_eq!(ok.get("tidings-topic").map(|v| &v[..]), Some(&b"a.b"[..]));
        assert_eq!(ok.get("x").map(|v| &v[..]), Some(&b"\xff\xfe"[..]));
    }

    #[test]
    fn an_oversize_message_is_skipped_keeping_its_head() {
        let mut p = Parser::new(8, 4);
        let mut buf = BytesMut::from(&b"MSG big 3 20\r\n0123456"[..]);
        assert_eq!(p.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"789abcdefghij\r\nPONG\r\n");
        assert_eq!(
            p.next(&mut buf).unwrap(),
            Some(Frame::Oversize {
                subject: Bytes::from_static(b"big"),
                sid: 3,
                reply: None,
                len: 20,
                head: Bytes::from_static(b"0123"),
            })
        );
        assert_eq!(p.next(&mut buf).unwrap(), Some(Frame::Pong));
    }

    #[test]
    fn broken_framing_is_an_error() {
        for raw in [
            &b"MSG a 1\r\n"[..],
            b"MSG a x 1\r\nx\r\n",
            b"HMSG a 1 5 2\r\n",
            b"MSG a 1 99999999999999999999\r\n",
            b"MSG a 1 2\r\nabXY",
            b"WHAT\r\n",
        ] {
            let mut p = Parser::new(1 << 20, 16);
            assert!(
                parse_all(&mut p, raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut p = Parser::new(1 << 20, 16);
        let long = vec![b'x'; MAX_LINE + 10];
        assert!(parse_all(&mut p, &long).is_err());
    }

    #[test]
    fn commands_are_written_as_the_protocol_says() {
        let mut out = BytesMut::new();
        write::sub(&mut out, "a.>", Some("billing"), 7);
        write::publish(
            &mut out,
            b"x",
            Some(b"r"),
            Some(b"NATS/1.0\r\n\r\n"),
            b"pay",
        );
        write::publish(&mut out, b"y", None, None, b"");
        assert_eq!(
            &out[..],
            b"SUB a.> billing 7\r\nHPUB x r 12 15\r\nNATS/1.0\r\n\r\npay\r\nPUB y 0\r\n\r\n"
        );
    }

    /// A stream of frames as a server could send it (some over the size
    /// limit), with now and then a corrupted byte.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(any::<u8>(), 0..100);
        let frame = prop_oneof![
            Just(b"PING\r\n".to_vec()),
            Just(b"PONG\r\n".to_vec()),
            Just(b"+OK\r\n".to_vec()),
            body.clone().prop_map(|p| {
                let mut f = format!("MSG s.t 1 {}\r\n", p.len()).into_bytes();
                f.extend_from_slice(&p);
                f.extend_from_slice(b"\r\n");
                f
            }),
            (body.clone(), body).prop_map(|(h, p)| {
                let mut f = format!("HMSG s.\u{e9} 2 r.x {} {}\r\n", h.len(), h.len() + p.len())
                    .into_bytes();
                f.extend_from_slice(&h);
                f.extend_from_slice(&p);
                f.extend_from_slice(b"\r\n");
                f
            }),
        ];
        (
            proptest::collection::vec(frame, 0..12),
            proptest::option::weighted(0.2, (any::<usize>(), any::<u8>())),
        )
            .prop_map(|(frames, corrupt)| {
                let mut bytes = frames.concat();
                if let (Some((at, b)), false) = (corrupt, bytes.is_empty()) {
                    let at = at % bytes.len();
                    bytes[at] = b;
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any stream, fed in any chunks: the parser never panics, and
        /// yields the same frames however the bytes were split.
        #[test]
        fn any_stream_in_any_chunks(bytes in stream(), cuts in proptest::collection::vec(0usize..1500, 0..8)) {
            let whole = {
                let mut p = Parser::new(64, 8);
                parse_all(&mut p, &bytes)
            };
            let mut p = Parser::new(64, 8);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let mut cuts = cuts;
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut at = 0;
            let mut broken = None;
            for cut in cuts {
                let cut = cut.min(bytes.len());
                buf.extend_from_slice(&bytes[at..cut.max(at)]);
                at = cut.max(at);
                loop {
                    match p.next(&mut buf) {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => break,
                        Err(e) => { broken = Some(e); break; }
                    }
                }
                if broken.is_some() { break; }
            }
            match whole {
                Ok(all) if broken.is_none() => prop_assert_eq!(all, frames),
                Ok(_) => prop_assert!(false, "split input broke: {:?}", broken),
                Err(_) => prop_assert!(broken.is_some()),
            }
        }

        /// Well-formed messages with hostile content round-trip exactly.
        #[test]
        fn hostile_content_round_trips(subject in proptest::collection::vec(33u8..=255, 1..40), header in proptest::collection::vec(any::<u8>(), 0..60), payload in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut raw = b"HMSG ".to_vec();
            raw.extend_from_slice(&subject);
            raw.extend_from_slice(format!(" 9 {} {}\r\n", header.len(), header.len() + payload.len()).as_bytes());
            raw.extend_from_slice(&header);
            raw.extend_from_slice(&payload);
            raw.extend_from_slice(b"\r\n");
            let mut p = Parser::new(1 << 20, 16);
            let frames = parse_all(&mut p, &raw).unwrap();
            prop_assert_eq!(frames.len(), 1);
            let Frame::Msg(m) = &frames[0] else { panic!() };
            prop_assert_eq!(&m.subject[..], &subject[..]);
            prop_assert_eq!(m.headers.as_deref(), Some(&header[..]));
            prop_assert_eq!(&m.payload[..], &payload[..]);
            // Parsing the headers never panics, whatever they hold.
            let _ = Headers::parse(m.headers.as_ref().unwrap());
        }
    }
}
