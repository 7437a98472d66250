//! A store: one directory, locked for one process, holding the logs of
//! its durable topics.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidings::{Bus, Event};

use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::log::{Log, LogOptions, Recovery};
use crate::state::KeyWindow;
use crate::topic::DurableTopic;

/// When a durable publish returns `Ok`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ack {
    /// The event is written to the log (in the operating system's hands):
    /// it survives the process being killed (`kill -9`, an abort, an OOM
    /// kill), not a power loss or a kernel crash.
    Written,
    /// The event is on the disk: it survives a power loss too. The
    /// `fdatasync` that covers it is shared by every publish waiting at
    /// that moment (group commit), so a synced publish costs a share of
    /// one sync, not one sync each.
    #[default]
    Synced,
}

/// How one durable topic is kept: its acknowledgement level, segment size,
/// retention and idempotency window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOptions {
    pub(crate) ack: Ack,
    pub(crate) segment_bytes: u64,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) keys_for: Duration,
    pub(crate) max_keys: usize,
    pub(crate) capacity: usize,
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            ack: Ack::Synced,
            segment_bytes: 64 << 20,
            max_bytes: None,
            max_age: None,
            keys_for: Duration::from_secs(24 * 3600),
            max_keys: 100_000,
            capacity: 32,
        }
    }
}

impl TopicOptions {
    /// When a publish returns `Ok` (default [`Ack::Synced`]).
    pub fn ack(mut self, ack: Ack) -> Self {
        self.ack = ack;
        self
    }

    /// The size at which a segment is closed and a new one started
    /// (default 64 MiB; at least 4 KiB). Disk use stays within one
    /// segment of what retention keeps.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Lets go of the oldest segments once the log is over `bytes`, even
    /// if a durable subscription has not settled their events (each one
    /// lost is counted in its [`DurableSubStats::expired`](crate::DurableSubStats::expired)
    /// and warned). Without it (the default), events are kept until every
    /// durable subscription has settled them.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Lets go of segments whose last event is older than `age`, settled
    /// or not (counted as with [`max_bytes`](TopicOptions::max_bytes)).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// How long, and how many, idempotency keys are remembered across
    /// restarts (default 24 hours, 100,000 keys): a publish with a key
    /// accepted within the window is a duplicate and stores nothing.
    pub fn dedup(mut self, keep: Duration, max_keys: usize) -> Self {
        self.keys_for = keep;
        self.max_keys = max_keys;
        self
    }

    /// The in-memory queue of each durable subscription (default 32): what
    /// its feeder reads ahead of the handlers. What a crash can make a
    /// subscription see again is at most this plus its concurrency.
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events;
        self
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.segment_bytes < 4096 {
            return Err(StoreError::Setting {
                setting: "segment_bytes",
                problem: format!("{} is below 4096", self.segment_bytes),
            });
        }
        if self.capacity == 0 {
            return Err(StoreError::Setting {
                setting: "capacity",
                problem: "0 events".into(),
            });
        }
        Ok(())
    }
}

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
            Some(info) if info.fed_by == Some(crate::OWNER) => {}
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
    /// after it fail; dropping the store without it syncs nothing (what
    /// was written is safe from a process crash, not from a power loss).
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
