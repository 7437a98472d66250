//! Text the bridge writes about what it sees: warnings, panic messages,
//! and fields cut to a bound before they are kept or logged.

/// What a panic said.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Cuts `text` to at most `limit` characters.
pub(crate) fn bounded(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Logs a warning about `bridge` (and `topic`, `-` when none).
pub(crate) fn warn(bridge: &str, topic: &str, message: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(bridge, topic, "tidings bridge: {message}");
    #[cfg(not(feature = "tracing"))]
    let _ = (bridge, topic, message);
}
