//! The view's HTTP server: one request per connection (`Connection:
//! close`), `GET` and `HEAD` only, nothing from a peer trusted or kept
//! beyond [`MAX_HEAD`] bytes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;

/// Connections open at once; more are closed as they arrive.
pub(super) const MAX_CONNECTIONS: usize = 64;
/// The largest request head read; a longer one gets `431`.
const MAX_HEAD: usize = 8 * 1024;
/// How long a peer has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may wait for a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/view.js");
const STYLE: &str = include_str!("page/view.css");

pub(super) struct Server {
    pub(super) token: Option<String>,
    pub(super) snapshots: watch::Receiver<Arc<str>>,
    pub(super) asyncapi: Arc<str>,
    pub(super) connections: Arc<Semaphore>,
}

pub(super) async fn accept(listener: TcpListener, server: Arc<Server>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(permit) = server.connections.clone().try_acquire_owned() else {
                    // Full: closing at once costs the peer a retry, never
                    // this process memory.
                    drop(stream);
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_one(stream, &server).await;
                });
            }
            Err(_error) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: the listener itself is fine. A pause keeps
                // an exhausted process from spinning here.
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_error, "tidings view: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a request head could not be read.
enum HeadError {
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends a request head; returns its length.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, HeadError> {
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            return Ok(searched_from + at);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// What the server needs of a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request<'a> {
    pub(super) head_only: bool,
    pub(super) path: &'a str,
    pub(super) query_token: Option<String>,
    pub(super) bearer: Option<&'a str>,
}

/// Why a request was refused before routing.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    BadRequest(&'static str),
    Method,
}

pub(super) fn parse(head: &[u8]) -> Result<Request<'_>, Refused> {
    let head = std::str::from_utf8(head).map_err(|_| Refused::BadRequest("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::BadRequest("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refused::BadRequest("not HTTP/1.x"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Refused::Method),
    };
    if !target.starts_with('/') {
        return Err(Refused::BadRequest("target is not a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query_token = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode);
    let mut bearer = None;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            return Err(Refused::BadRequest("malformed header"));
        };
        if name.eq_ignore_ascii_case("authorization") {
            bearer = value.trim().strip_prefix("Bearer ");
        }
    }
    Ok(Request {
        head_only,
        path,
        query_token,
        bearer,
    })
}

/// `%XX` escapes decoded; anything malformed is kept as it is (and then
/// fails the comparison with the token).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares without stopping at the first difference, so that timing does
/// not tell a peer how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn authorized(server: &Server, request: &Request<'_>) -> bool {
    let Some(token) = &server.token else {
        return true;
    };
    let given = |t: &str| same(t.as_bytes(), token.as_bytes());
    request.bearer.is_some_and(given) || request.query_token.as_deref().is_some_and(given)
}

async fn serve_one(mut stream: TcpStream, server: &Server) {
    let mut buf = Vec::with_capacity(1024);
    let end = match timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Ok(Ok(end)) => end,
        Ok(Err(HeadError::TooLarge)) => {
            let _ = respond(&mut stream, Status::TooLarge, false).await;
            return;
        }
        Ok(Err(HeadError::Closed)) | Err(_) => return,
    };
    let request = match parse(&buf[..end]) {
        Ok(request) => request,
        Err(Refused::Method) => {
            let _ = respond(&mut stream, Status::Method, false).await;
            return;
        }
        Err(Refused::BadRequest(why)) => {
            let _ = respond(&mut stream, Status::Bad(why), false).await;
            return;
        }
    };
    let head_only = request.head_only;
    // The page's three files hold no data and are served to anyone (a
    // browser fetches the script and the style without the page's query);
    // everything that tells about the bus needs the token.
    let page = match request.path {
        "/" | "/index.html" => Some(Status::Ok("text/html; charset=utf-8", PAGE.into())),
        "/view.js" => Some(Status::Ok("text/javascript; charset=utf-8", SCRIPT.into())),
        "/view.css" => Some(Status::Ok("text/css; charset=utf-8", STYLE.into())),
        _ => None,
    };
    if let Some(page) = page {
        let _ = respond(&mut stream, page, head_only).await;
        let _ = stream.shutdown().await;
        return;
    }
    if !authorized(server, &request) {
        let _ = respond(&mut stream, Status::Unauthorized, head_only).await;
        return;
    }
    let status = match request.path {
        "/api/snapshot" => Status::Ok("application/json", {
            let latest = server.snapshots.borrow().clone();
            Body::Shared(latest)
        }),
        "/asyncapi.json" => Status::Ok("application/json", Body::Shared(server.asyncapi.clone())),
        "/api/events" => {
            let _ = events(&mut stream, server.snapshots.clone(), head_only).await;
            return;
        }
        _ => Status::NotFound,
    };
    let _ = respond(&mut stream, status, head_only).await;
    let _ = stream.shutdown().await;
}

enum Body {
    Static(&'static str),
    Shared(Arc<str>),
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::Static(text)
    }
}

impl Body {
    fn as_str(&self) -> &str {
        match self {
            Body::Static(text) => text,
            Body::Shared(text) => text,
        }
    }
}

enum Status {
    Ok(&'static str, Body),
    Bad(&'static str),
    Unauthorized,
    NotFound,
    Method,
    TooLarge,
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    timeout(WRITE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

async fn respond(stream: &mut TcpStream, status: Status, head_only: bool) -> std::io::Result<()> {
    let (line, kind, body, extra) = match &status {
        Status::Ok(kind, body) => ("200 OK", *kind, body.as_str(), ""),
        Status::Bad(why) => ("400 Bad Request", "text/plain", *why, ""),
        Status::Unauthorized => (
            "401 Unauthorized",
            "text/plain",
            "a token is required: ?token=... or Authorization: Bearer ...",
            "WWW-Authenticate: Bearer\r\n",
        ),
        Status::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found: the view serves /, /api/snapshot, /api/events and /asyncapi.json",
            "",
        ),
        Status::Method => (
            "405 Method Not Allowed",
            "text/plain",
            "the view is read-only: GET or HEAD",
            "Allow: GET, HEAD\r\n",
        ),
        Status::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head over 8 KiB",
            "",
        ),
    };
    let head = format!(
        "HTTP/1.1 {line}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    write(stream, head.as_bytes()).await?;
    if !head_only {
        write(stream, body.as_bytes()).await?;
    }
    Ok(())
}

/// Server-sent events: the latest snapshot at once, then each new one,
/// until the peer stops reading or the view stops.
async fn events(
    stream: &mut TcpStream,
    mut snapshots: watch::Receiver<Arc<str>>,
    head_only: bool,
) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\nretry: 2000\n\n";
    write(stream, head.as_bytes()).await?;
    if head_only {
        return Ok(());
    }
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        // A snapshot is one line of JSON (serde_json escapes newlines in
        // strings), so one `data:` line carries it.
        let frame = format!("data: {snapshot}\n\n");
        write(stream, frame.as_bytes()).await?;
        if snapshots.changed().await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Whatever a peer sends as a head, parsing answers; it never panics.
        #[test]
        fn any_head_parses_or_is_refused(head in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&head);
        }

        // Heads shaped like requests, with junk in every part.
        #[test]
        fn request_like_heads_parse_or_are_refused(
            method in "[A-Z]{0,8}",
            target in "[ -~]{0,64}",
            version in "[ -~]{0,12}",
            headers in proptest::collection::vec("[ -~]{0,40}", 0..8),
        ) {
            let head = format!("{method} {target} {version}\r\n{}", headers.join("\r\n"));
            if let Ok(request) = parse(head.as_bytes()) {
                prop_assert!(request.path.starts_with('/'));
                prop_assert!(method == "GET" || method == "HEAD");
            }
        }
    }

    #[test]
    fn requests_parse_and_junk_is_refused() {
        let ok = parse(
            b"GET /api/snapshot?x=1&token=a%2Fb HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k",
        )
        .unwrap();
        assert_eq!(ok.path, "/api/snapshot");
        assert_eq!(ok.query_token.as_deref(), Some("a/b"));
        assert_eq!(ok.bearer, Some("t0k"));
        assert!(!ok.head_only);
        assert_eq!(parse(b"POST / HTTP/1.1"), Err(Refused::Method));
        assert!(matches!(
            parse(b"GET / HTTP/2"),
            Err(Refused::BadRequest(_))
        ));
        assert!(matches!(parse(b"GET /"), Err(Refused::BadRequest(_))));
        assert!(matches!(
            parse(b"GET x HTTP/1.1"),
            Err(Refused::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nno colon"),
            Err(Refused::BadRequest(_))
        ));
        assert!(matches!(parse(&[0xff, 0xfe]), Err(Refused::BadRequest(_))));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
