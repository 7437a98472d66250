//! Why a bridge could not start.

use tidings::error::{PatternError, SubscribeError};

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The topic of an exported or imported type is not on the bus's
    /// allow-list.
    #[error(
        "topic `{topic}` is not registered on this bus; only allow-listed topics can be bridged"
    )]
    UnknownTopic {
        /// The topic.
        topic: &'static str,
    },
    /// A pattern matches no registered topic (tidings' own `tidings.*`
    /// topics are never matched by a pattern).
    #[error("pattern `{pattern}` matches no bridgeable topic on this bus")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// A malformed pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A bridged topic's type cannot be serialized.
    #[error("topic `{topic}` (type `{type_name}`) cannot cross the bridge: derive Serialize and Deserialize and add #[event(serde)]")]
    NotSerializable {
        /// The topic.
        topic: &'static str,
        /// Its type.
        type_name: &'static str,
    },
    /// A setting that cannot work.
    #[error("bridge setting `{setting}`: {problem}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Subscribing to an exported topic failed (the bus is shut down, say).
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The NATS server refused a set-up step, or could not be reached.
    #[error("NATS refused to {what}: {message}")]
    Nats {
        /// The step.
        what: &'static str,
        /// The server's or client's message.
        message: String,
    },
}
