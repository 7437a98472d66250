//! How one handler run ended: [`Outcome`], the one type the runner, the
//! subscription's counters, spans and metrics all read.

use std::any::Any;
use std::time::Duration;

/// How a handler run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// It returned an error, with its message.
    Failed(String),
    /// It panicked, with the panic's message.
    Panicked(String),
    /// An async handler did not finish within the subscription's timeout
    /// and was cancelled.
    TimedOut(Duration),
}

impl Outcome {
    /// Its name in spans.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Panicked(_) => "panicked",
            Outcome::TimedOut(_) => "timed_out",
        }
    }

    /// The error a failed run leaves (its dead letter's, its subscription's
    /// last error), or `None` for a run that went well.
    pub(crate) fn error(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(msg) => Some(msg.clone()),
            Outcome::Panicked(msg) => Some(format!("panic: {msg}")),
            Outcome::TimedOut(limit) => Some(format!("timed out after {limit:?}")),
        }
    }
}

/// A panic's message, from its payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
