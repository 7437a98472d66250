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
        let mut lines = Lines(block);
        let version = lines.next().ok_or(HeaderError::Version)??;
        let rest = version
            .strip_prefix(b"NATS/1.0")
            .ok_or(HeaderError::Version)?
            .trim_ascii();
        let (status, description) = match memchr::memchr(b' ', rest) {
            Some(i) => (&rest[..i], rest[i + 1..].trim_ascii()),
            None => (rest, &b""[..]),
        };
        let status = if status.is_empty() {
            None
        } else {
            let code = number(status).ok_or(HeaderError::BadStatus)?;
            Some(u16::try_from(code).map_err(|_| HeaderError::BadStatus)?)
        };
        let mut fields = Vec::with_capacity(12);
        for line in lines {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let colon = memchr::memchr(b':', line).ok_or(HeaderError::NoColon)?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
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
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], HeaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0;
        if rest.is_empty() {
            return None;
        }
        Some(match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                self.0 = &[];
                Ok(rest)
            }
            Some(end) if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') => {
                self.0 = &rest[end + 2..];
                Ok(&rest[..end])
            }
            Some(_) => {
                self.0 = &[];
                Err(HeaderError::BareLineBreak)
            }
        })
    }
}
