//! Names: a checked [`Topic`] and a wildcard [`Pattern`] of topics. The
//! grammar itself is `tidings-grammar`'s, the same the derive checks at
//! compile time.

use std::fmt;
use std::sync::Arc;

use crate::errors::{PatternError, TopicError};

/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = tidings_grammar::MAX_TOPIC_LEN;

/// A checked topic name: dot-separated segments of `[a-z0-9_-]`, 1..=255
/// bytes in all, no empty segment.
///
/// Topics of [`Event`](crate::Event) types are checked at compile time by the derive; use
/// `Topic` for names that arrive at run time.
///
/// ```
/// use tidings::Topic;
///
/// let t = Topic::parse("orders.created")?;
/// assert_eq!(t.as_str(), "orders.created");
/// assert!(Topic::parse("Orders..created").is_err());
/// # Ok::<(), tidings::error::TopicError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Checks `name` and returns it as a `Topic`.
    ///
    /// # Errors
    /// A [`TopicError`] saying which rule `name` breaks.
    pub fn parse(name: &str) -> Result<Topic, TopicError> {
        Topic::validate(name)?;
        Ok(Topic(Arc::from(name)))
    }

    /// Checks `name` against the topic grammar without keeping it.
    ///
    /// # Errors
    /// A [`TopicError`] saying which rule `name` breaks.
    pub fn validate(name: &str) -> Result<(), TopicError> {
        tidings_grammar::check(name).map_err(|v| TopicError::of(name, v))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A topic pattern, NATS style: dot-separated segments where `*` matches
/// exactly one segment and a final `>` matches one or more. Other segments
/// follow the topic grammar ([`Topic`]).
///
/// ```
/// use tidings::Pattern;
///
/// let p = Pattern::parse("orders.*")?;
/// assert!(p.matches("orders.created"));
/// assert!(!p.matches("orders.created.eu") && !p.matches("orders"));
/// assert!(Pattern::parse("orders.>")?.matches("orders.created.eu"));
/// assert!(Pattern::parse("orders.>.eu").is_err()); // `>` only at the end
/// # Ok::<(), tidings::error::PatternError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern(Arc<str>);

impl Pattern {
    /// Checks `pattern` against the grammar.
    ///
    /// # Errors
    /// [`PatternError`] naming the pattern and what is wrong with it.
    pub fn parse(pattern: &str) -> Result<Pattern, PatternError> {
        let segments: Vec<&str> = pattern.split('.').collect();
        if let Some(i) = segments.iter().position(|s| *s == ">") {
            if i + 1 != segments.len() {
                return Err(PatternError::TailNotLast {
                    pattern: pattern.to_owned(),
                });
            }
        }
        // Wildcards stand for a one-letter segment: the same length, so a
        // grammar error's byte offset is the pattern's.
        let as_topic: String = segments
            .iter()
            .map(|s| if matches!(*s, "*" | ">") { "x" } else { s })
            .collect::<Vec<_>>()
            .join(".");
        Topic::validate(&as_topic).map_err(|source| PatternError::Grammar {
            pattern: pattern.to_owned(),
            source,
        })?;
        Ok(Pattern(Arc::from(pattern)))
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut want = self.0.split('.');
        let mut have = topic.split('.');
        loop {
            match (want.next(), have.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(w), Some(h)) if w == h => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_accepts_and_rejects() {
        let long_ok = "x".repeat(MAX_TOPIC_LEN);
        for ok in ["a", "orders.created", "a-b_c.9", "0", long_ok.as_str()] {
            assert!(
                Topic::validate(ok).is_ok(),
                "{ok:?} should be a valid topic"
            );
        }
        let long_bad = "x".repeat(MAX_TOPIC_LEN + 1);
        type IsExpected = fn(&TopicError) -> bool;
        let cases: [(&str, IsExpected); 9] = [
            ("", |e| matches!(e, TopicError::Empty)),
            (".a", |e| {
                matches!(e, TopicError::EmptySegment { segment: 1, .. })
            }),
            ("a.", |e| {
                matches!(e, TopicError::EmptySegment { segment: 2, .. })
            }),
            ("a..b", |e| {
                matches!(e, TopicError::EmptySegment { segment: 2, .. })
            }),
            ("Orders", |e| {
                matches!(e, TopicError::BadChar { ch: 'O', at: 0, .. })
            }),
            ("a b", |e| {
                matches!(e, TopicError::BadChar { ch: ' ', at: 1, .. })
            }),
            ("a/b", |e| matches!(e, TopicError::BadChar { ch: '/', .. })),
            ("é", |e| matches!(e, TopicError::BadChar { ch: 'é', .. })),
            (long_bad.as_str(), |e| {
                matches!(e, TopicError::TooLong { len: 256 })
            }),
        ];
        for (bad, is_expected) in cases {
            let err = Topic::validate(bad).expect_err(bad);
            assert!(is_expected(&err), "{bad:?} gave unexpected error {err:?}");
        }
    }

    #[test]
    fn error_messages_name_the_topic() {
        let err = Topic::parse("orders..created").unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic `orders..created` has an empty segment (segment 2): segments are separated by single dots"
        );
        // The derive says the same at compile time (tests/ui/empty_segment.stderr).
    }

    #[test]
    fn patterns_match_like_nats_subjects() {
        let cases = [
            ("orders.*", "orders.created", true),
            ("orders.*", "orders", false),
            ("orders.*", "orders.created.eu", false),
            ("orders.>", "orders.created.eu", true),
            ("orders.>", "orders", false),
            ("*.created", "orders.created", true),
            ("*.created", "payments.failed", false),
            (">", "anything.at.all", true),
            ("orders.created", "orders.created", true),
            ("orders.created", "orders.created2", false),
        ];
        for (pattern, topic, expected) in cases {
            let p = Pattern::parse(pattern).expect(pattern);
            assert_eq!(p.matches(topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "",
            "orders..x",
            "orders.>.x",
            "Orders.*",
            "orders.cr*",
            "a.>>",
        ] {
            let err = Pattern::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
