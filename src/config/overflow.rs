//! What a full subscription does: [`Overflow`].

use std::fmt;

/// What a subscription does when its queue is full and another event arrives.
///
/// | policy | the publisher | this subscription | use it for |
/// |---|---|---|---|
/// | `Block` (default) | waits for room (`try_publish` fails instead) | gets every event | work that must not be lost: payments, audit |
/// | `DropOldest` | never waits | loses its oldest queued event | latest-state feeds: prices, positions, UI refresh |
/// | `DropNewest` | never waits | loses the new event | samples, metrics, best-effort notifications |
/// | `Fail` | gets [`Refusal::Full`](crate::error::Refusal::Full); nothing is enqueued anywhere | gets every accepted event | callers that must react to overload themselves |
///
/// Losses are never silent: each [`Envelope`](crate::Envelope) says how many events its
/// subscription missed just before it ([`Envelope::missed`](crate::Envelope::missed)), and the
/// subscription's [stats](crate::SubscriptionStats) count them.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Overflow {
    /// Publishers wait until the subscription has room. Lossless.
    #[default]
    Block,
    /// The oldest queued event is evicted to make room for the new one.
    DropOldest,
    /// The new event is discarded for this subscription.
    DropNewest,
    /// The publish fails with [`Refusal::Full`](crate::error::Refusal::Full)
    /// and nothing is enqueued to any subscription.
    Fail,
}

impl Overflow {
    /// Whether the subscription receives every accepted event (`Block`,
    /// `Fail`): a publish finds room, waits for it or is refused, and never
    /// evicts or skips. Lossy policies (`DropOldest`, `DropNewest`) lose
    /// events to keep publishers moving, and count what they lose.
    ///
    /// ```
    /// use tidings::Overflow;
    /// assert!(Overflow::Block.is_lossless() && Overflow::Fail.is_lossless());
    /// assert!(!Overflow::DropOldest.is_lossless() && !Overflow::DropNewest.is_lossless());
    /// ```
    pub const fn is_lossless(self) -> bool {
        matches!(self, Overflow::Block | Overflow::Fail)
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop-oldest",
            Overflow::DropNewest => "drop-newest",
            Overflow::Fail => "fail",
        })
    }
}
