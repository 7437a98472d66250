//! A store: one directory, locked for one process, holding the logs of
//! its durable topics.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidings::{Bus, Event};

use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::log::{Log, LogOptions, Recovery};
use crate::options::TopicOptions;
use crate::state::KeyWindow;
use crate::topic::DurableTopic;

/// How a store is opened.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    ledger: Option<Arc<Ledger>>,
}

impl StoreOptions {
    /// Records every sync in `ledger`, for the power-loss simulation
    /// ([`Ledger::cut_power`]). For tests.
    pub fn ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }
}

/// A directory of durable topics, open in this process only.
///
/// ```no_run
/// use tidings::{Bus, Event};
/// use tidings_durable::{DurableTopics, Store};
///
/// #[derive(Debug, Event, serde::Serialize, serde::Deserialize)]
/// #[event(topic = "reports.requested")]
/// struct ReportRequested { id: u64 }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Store::open("data/queue")?;
/// let bus = Bus::builder().durable_topic::<ReportRequested>().build()?;
/// let reports = store.topic::<ReportRequested>(&bus)?;
/// let _worker = reports.subscribe("renderer").sync(|job| {
///     println!("rendering report {}", job.id);
/// })?;
/// let receipt = reports.publish(ReportRequested { id: 7 }).await?; // on disk now
/// # let _ = receipt; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    dir: PathBuf,
    /// Holds the directory's lock for as long as the store lives.
    _lock: File,
    options: StoreOptions,
    topics: Mutex<HashMap<&'static str, Arc<Log>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, taking its lock.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process (or another `Store`
    /// here) has it open, [`StoreError::Io`] when the directory cannot be
    /// made or locked.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// [`open`](Store::open) with options.
    ///
    /// # Errors
    /// As [`open`](Store::open).
    pub fn open_with(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io("creating the store directory", &dir, e))?;
        let path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("opening the lock file", &path, e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(StoreError::Locked { path: dir }),
            Err(e) => return Err(StoreError::io("locking the store", &path, e.into())),
        }
        Ok(Store {
            inner: Arc::new(StoreInner {
                dir,
                _lock: lock,
                options,
                topics: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Opens topic `E` with the default [`TopicOptions`] (synced), on `bus`,
    /// where it was registered with
    /// [`durable_topic`](crate::DurableTopics::durable_topic).
    ///
    /// # Errors
    /// As [`topic_with`](Store::topic_with).
    pub fn topic<E>(&self, bus: &Bus) -> Result<DurableTopic<E>, StoreError>
    where
        E: Event + Serialize + DeserializeOwned,
    {
        self.topic_with(bus, TopicOptions::default())
    }

    /// Opens topic `E` in this store: recovers its log (see
    /// [`DurableTopic::recovery`]) and returns the handle to publish and
    /// subscribe through.
    ///
    /// # Errors
    /// [`StoreError::Setting`] for an option out of range,
    /// [`StoreError::Topic`] when the topic is open already or `bus` does
    /// not have it as a durable topic, [`StoreError::Io`] when its log
    /// cannot be read or repaired.
    pub fn topic_with<E>(
        &self,
        bus: &Bus,
        options: TopicOptions,
    ) -> Result<DurableTopic<E>, StoreError>
    where
        E: Event + Serialize + DeserializeOwned,
    {
        options.check()?;
        match bus.topic_info(E::TOPIC) {
            Some(info) if info.fed_by == Some(crate::options::OWNER) => {}
            _ => {
                return Err(StoreError::Topic {
                    topic: E::TOPIC,
                    problem: "not registered on the bus as a durable topic: register it with BusBuilder::durable_topic".into(),
                })
            }
        }
        let mut topics = self.inner.topics.lock();
        if topics.contains_key(E::TOPIC) {
            return Err(StoreError::Topic {
                topic: E::TOPIC,
                problem: "already open in this store".into(),
            });
        }
        let opts = LogOptions {
            segment_bytes: options.segment_bytes,
            max_bytes: options.max_bytes,
            max_age: options.max_age,
            window: KeyWindow {
                keep: options.keys_for,
                max: options.max_keys,
            },
            ledger: self.inner.options.ledger.clone(),
        };
        let (log, recovery): (Arc<Log>, Recovery) =
            Log::open(E::TOPIC, self.inner.dir.join(E::TOPIC), opts)?;
        topics.insert(E::TOPIC, Arc::clone(&log));
        Ok(DurableTopic::new(bus.clone(), log, options, recovery))
    }

    /// Syncs every topic's log and stops their syncer threads. Publishes
    /// after it fail at once ([`StoreError::Stopped`]), and so do the
    /// settlements of events still being handled (they are delivered again
    /// next time): shut the bus down first
    /// ([`Bus::shutdown`](tidings::Bus::shutdown)), then close the store.
    /// Dropping the store without it syncs nothing more (what was written
    /// is safe from a process crash, not from a power loss).
    ///
    /// # Errors
    /// The first sync that failed.
    pub fn close(&self) -> Result<(), StoreError> {
        let logs: Vec<Arc<Log>> = self.inner.topics.lock().values().cloned().collect();
        let mut first = Ok(());
        for log in logs {
            let closed = log.close();
            if first.is_ok() {
                first = closed;
            }
        }
        first
    }
}

impl Store {
    /// Stops every topic at once and syncs nothing, as a power cut would:
    /// every append after it fails, and no sync is under way once it
    /// returns. For tests of what survives (with a [`Ledger`] and
    /// [`Ledger::cut_power`]); a program stops with [`close`](Store::close).
    pub fn halt(&self) {
        let logs: Vec<Arc<Log>> = self.inner.topics.lock().values().cloned().collect();
        logs.iter().for_each(|log| log.halt());
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}
