//! Where a subscription starts reading its topic: [`StartAt`].

use std::fmt;

/// Where a subscription starts reading its topic.
///
/// Starting anywhere but [`StartAt::Latest`] needs a topic that retains
/// events ([`TopicConfig::retain`](crate::TopicConfig::retain)).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum StartAt {
    /// Live events only: those published after it subscribed (the default).
    #[default]
    Latest,
    /// Every event still retained, then live ones.
    Earliest,
    /// From this sequence number on: the way to resume after a reconnect
    /// (`Seq(last_seen + 1)`). What is no longer retained of it is reported
    /// in [`Started::unrecoverable`](crate::Started::unrecoverable).
    Seq(u64),
    /// The last `n` events published (as far as they are retained), then
    /// live ones. `Last(1)` on a `retain(1)` topic is "the current value".
    Last(u64),
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::Latest => f.write_str("latest"),
            StartAt::Earliest => f.write_str("earliest"),
            StartAt::Seq(seq) => write!(f, "seq {seq}"),
            StartAt::Last(n) => write!(f, "the last {n}"),
        }
    }
}
