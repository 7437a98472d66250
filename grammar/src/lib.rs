//! Implementation detail of [tidings](https://docs.rs/tidings): the topic
//! grammar, in one place for the runtime (`tidings::Topic`) and for the
//! `#[derive(Event)]` macro, which checks topics at compile time. Use it
//! through `tidings::Topic`; this crate's API is not stable on its own.
//!
//! A topic is dot-separated segments of `[a-z0-9_-]`, 1 to 255 bytes in all,
//! with no empty segment.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

use std::fmt;

/// The longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// The rule a topic breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The topic is empty.
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Two dots in a row, or a dot at either end.
    EmptySegment {
        /// Which segment is empty, counting from 1.
        segment: usize,
    },
    /// A character outside `a-z`, `0-9`, `_`, `-` and `.`.
    BadChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Checks `topic` against the grammar; the first rule it breaks, if any.
pub fn check(topic: &str) -> Result<(), Violation> {
    if topic.is_empty() {
        return Err(Violation::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Violation::TooLong { len: topic.len() });
    }
    if let Some(i) = topic.split('.').position(str::is_empty) {
        return Err(Violation::EmptySegment { segment: i + 1 });
    }
    if let Some((at, ch)) = topic
        .char_indices()
        .find(|&(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
    {
        return Err(Violation::BadChar { ch, at });
    }
    Ok(())
}

impl Violation {
    /// What is wrong with `topic`, in the words every error of tidings
    /// uses.
    pub fn describe<'a>(&'a self, topic: &'a str) -> Described<'a> {
        Described {
            violation: self,
            topic,
        }
    }
}

/// A [`Violation`] and the topic it is about, ready to print.
#[derive(Debug)]
pub struct Described<'a> {
    violation: &'a Violation,
    topic: &'a str,
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topic = self.topic;
        match self.violation {
            Violation::Empty => f.write_str("topic is empty"),
            Violation::TooLong { len } => {
                write!(f, "topic is {len} bytes long, the limit is {MAX_TOPIC_LEN}")
            }
            Violation::EmptySegment { segment } => write!(
                f,
                "topic `{topic}` has an empty segment (segment {segment}): segments are separated by single dots"
            ),
            Violation::BadChar { ch, at } => write!(
                f,
                "topic `{topic}` has the character {ch:?} at byte {at}; topics allow only `a-z`, `0-9`, `_`, `-` and `.`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        let long_ok = "x".repeat(MAX_TOPIC_LEN);
        for ok in ["a", "orders.created", "a-b_c.9", "0", long_ok.as_str()] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
        let long_bad = "x".repeat(MAX_TOPIC_LEN + 1);
        let cases = [
            ("", Violation::Empty),
            (".a", Violation::EmptySegment { segment: 1 }),
            ("a.", Violation::EmptySegment { segment: 2 }),
            ("a..b", Violation::EmptySegment { segment: 2 }),
            ("Orders", Violation::BadChar { ch: 'O', at: 0 }),
            ("a b", Violation::BadChar { ch: ' ', at: 1 }),
            ("a/b", Violation::BadChar { ch: '/', at: 1 }),
            ("é", Violation::BadChar { ch: 'é', at: 0 }),
            (long_bad.as_str(), Violation::TooLong { len: 256 }),
        ];
        for (bad, want) in cases {
            assert_eq!(check(bad), Err(want), "{bad:?}");
        }
    }

    #[test]
    fn descriptions_name_the_topic() {
        let v = check("orders..created").unwrap_err();
        assert_eq!(
            v.describe("orders..created").to_string(),
            "topic `orders..created` has an empty segment (segment 2): segments are separated by single dots"
        );
    }
}
