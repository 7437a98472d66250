//! The parser against every frame the server sends, and against anything
//! (proptests): it never panics and never holds more than its bounds.

use super::headers::HeaderError;
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
            let mut f =
                format!("HMSG s.\u{e9} 2 r.x {} {}\r\n", h.len(), h.len() + p.len()).into_bytes();
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
