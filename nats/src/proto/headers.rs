//! Header blocks (`NATS/1.0` and `Name: value` lines), kept as bytes.

use bytes::Bytes;

use super::number;

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
