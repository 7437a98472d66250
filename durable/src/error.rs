//! What can go wrong with a durable topic, each naming the path or the
//! topic and what to do.

use std::io;
use std::path::PathBuf;

/// Why a store, a durable topic or a durable subscription could not do
/// what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another `Store` in this one) has the directory
    /// open. Two writers would corrupt it: stop the other one, or give
    /// this one a directory of its own.
    #[error("the store at {path} is open in another process (or another Store of this one); stop it, or use another directory")]
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// A file operation failed: `op` says which, `path` on what. A full
    /// disk is `ErrorKind::StorageFull` here: free space, or lower the
    /// topic's retention; nothing of the failed append stays in the log.
    #[error("{op} failed on {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A sync or a repair failed earlier: the operating system may have
    /// lost written data (a failed `fdatasync` cannot be retried safely),
    /// so the topic takes nothing more until the store is opened again,
    /// which recovers what is on disk.
    #[error("topic `{topic}` is stopped after an earlier failure ({reason}); open the store again to recover")]
    Stopped {
        /// The topic.
        topic: String,
        /// The failure that stopped it.
        reason: String,
    },
    /// The event could not be serialized (or is over 64 MiB).
    #[error("an event of topic `{topic}` could not be stored: {reason}")]
    Encode {
        /// The topic.
        topic: String,
        /// What the serializer said.
        reason: String,
    },
    /// A setting is out of range: `setting` names it.
    #[error("durable setting `{setting}` is invalid: {problem}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The topic is already durable in this store, or not registered on the
    /// bus as fed by it.
    #[error("topic `{topic}`: {problem}")]
    Topic {
        /// The topic.
        topic: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A durable publish that did not return `Ok`: nothing of it is in the
/// store, and the event is handed back.
#[derive(thiserror::Error)]
#[error("{reason}")]
pub struct DurablePublishError<E> {
    /// Why.
    pub reason: StoreError,
    /// The event, not stored.
    pub event: E,
}

impl<E> std::fmt::Debug for DurablePublishError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurablePublishError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}
