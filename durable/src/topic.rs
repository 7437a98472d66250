//! A durable topic: publishes that are on disk before they return `Ok`,
//! and subscriptions that resume where they were.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidings::{Bus, Event, SubscribeBuilder};

use crate::error::{DurablePublishError, StoreError};
use crate::feeder;
use crate::log::{Log, Recovery, SyncStats};
use crate::options::{Ack, TopicOptions};
use crate::record::Record;
use crate::shared::{SubNumbers, TopicInner};

/// What a durable publish returns: the event's sequence number in the
/// store, or the one it duplicates.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableReceipt {
    /// The event's sequence number on its topic (the original's, for a
    /// duplicate).
    pub seq: u64,
    /// Whether the idempotency key was accepted before, within the
    /// window: then nothing was stored and the event is not delivered.
    pub duplicate: bool,
}

/// A durable topic's numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DurableStats {
    /// The topic.
    pub topic: &'static str,
    /// The next sequence number (events stored so far, plus one).
    pub next_seq: u64,
    /// Bytes of its log on disk.
    pub bytes: u64,
    /// Segments of its log.
    pub segments: usize,
    /// Publishes stored, and duplicates refused, since the store opened.
    pub stored: u64,
    /// Publishes whose key was a duplicate inside the window.
    pub duplicates: u64,
    /// Its group commit.
    pub sync: SyncStats,
    /// What recovery found when the topic opened.
    pub recovery: Recovery,
    /// Each durable subscription.
    pub subscriptions: Vec<DurableSubStats>,
}

/// One durable subscription's place in its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DurableSubStats {
    /// Its name.
    pub name: String,
    /// Every event below this sequence number is settled.
    pub settled_below: u64,
    /// Events stored that it has not settled.
    pub lag: u64,
    /// How long ago the oldest event it has not settled was published, in
    /// milliseconds (0 when it has none, or when its feeder has not read
    /// that far since the store opened).
    pub lag_ms: u64,
    /// Events fed to it again after a restart (marked
    /// [`redelivered`](tidings::Envelope::redelivered)).
    pub redelivered: u64,
    /// Events retention let go of before it settled them
    /// ([`TopicOptions::max_bytes`], [`TopicOptions::max_age`]).
    pub expired: u64,
    /// Stored events that would not deserialize into the topic's type:
    /// settled as dead letters (and warned), so they do not hold it up.
    pub undecodable: u64,
}

/// A dead letter of a durable subscription, as the store keeps it: the
/// event (while the topic retains it) and why its handler gave up.
#[derive(Debug)]
#[non_exhaustive]
pub struct StoredDeadLetter<E> {
    /// The event's sequence number.
    pub seq: u64,
    /// Why the handler gave up (the bus's
    /// [`DeadLetter::error`](tidings::DeadLetter::error), its first 4 KiB).
    pub error: String,
    /// The event; `None` if it no longer deserializes into `E`.
    pub event: Option<E>,
    /// When it was published.
    pub published_at: SystemTime,
}

/// A durable topic of event type `E`: publish through it, subscribe
/// through it. Cheap to clone.
pub struct DurableTopic<E> {
    inner: Arc<TopicInner>,
    _type: std::marker::PhantomData<fn(E) -> E>,
}

impl<E> Clone for DurableTopic<E> {
    fn clone(&self) -> Self {
        DurableTopic {
            inner: Arc::clone(&self.inner),
            _type: std::marker::PhantomData,
        }
    }
}

fn unix_ns(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A publish once appended: done, or waiting for its sync (with the
/// event, handed back if the sync fails).
enum Appended<E> {
    Done(DurableReceipt),
    Sync {
        receipt: DurableReceipt,
        pos: u64,
        event: E,
    },
}

/// An idempotency key must be 1 to 1024 bytes.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > 1024 {
        return Err(StoreError::Setting {
            setting: "idempotency key",
            problem: format!("{} bytes; 1 to 1024 allowed", key.len()),
        });
    }
    Ok(())
}

impl<E> DurableTopic<E>
where
    E: Event + Serialize + DeserializeOwned,
{
    pub(crate) fn new(bus: Bus, log: Arc<Log>, options: TopicOptions, recovery: Recovery) -> Self {
        DurableTopic {
            inner: Arc::new(TopicInner {
                bus,
                log,
                options,
                recovery,
                stored: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                subs: Mutex::new(Vec::new()),
            }),
            _type: std::marker::PhantomData,
        }
    }

    /// Stores `event`; `Ok` once it is written or synced, as the topic's
    /// [`Ack`] says. Its durable subscriptions get it from the store.
    ///
    /// Dropping the future while a synced publish waits for its sync
    /// leaves the event stored (written, and synced by the next sync).
    ///
    /// # Errors
    /// The event is handed back with why: [`StoreError::Encode`] (it does
    /// not serialize), [`StoreError::Io`] (the append failed, a full disk
    /// say: nothing of it stays in the log), [`StoreError::Stopped`] (an
    /// earlier failure stopped the topic; or its sync failed: then it was
    /// written, and may or may not be on the disk).
    pub async fn publish(&self, event: E) -> Result<DurableReceipt, DurablePublishError<E>> {
        self.store(event, None).await
    }

    /// [`publish`](DurableTopic::publish) with an idempotency key: within
    /// the topic's window ([`TopicOptions::dedup`]), across restarts, a
    /// second publish with the same key stores nothing and returns the
    /// first one's sequence number with `duplicate: true`.
    ///
    /// # Errors
    /// As [`publish`](DurableTopic::publish); an empty key or one over 1024
    /// bytes is [`StoreError::Setting`].
    pub async fn publish_keyed(
        &self,
        event: E,
        key: impl Into<Arc<str>>,
    ) -> Result<DurableReceipt, DurablePublishError<E>> {
        let key = key.into();
        if let Err(reason) = check_key(&key) {
            return Err(DurablePublishError { reason, event });
        }
        self.store(event, Some(key)).await
    }

    async fn store(
        &self,
        event: E,
        key: Option<Arc<str>>,
    ) -> Result<DurableReceipt, DurablePublishError<E>> {
        match self.append_event(event, key)? {
            Appended::Done(receipt) => Ok(receipt),
            Appended::Sync {
                receipt,
                pos,
                event,
            } => {
                let log = &self.inner.log;
                match poll_fn(|cx| log.poll_synced(pos, cx.waker())).await {
                    Ok(()) => Ok(receipt),
                    Err(reason) => Err(DurablePublishError { reason, event }),
                }
            }
        }
    }

    /// [`publish`](DurableTopic::publish) for code that cannot `.await`: a
    /// sync handler (`.sync(..)`) that enqueues follow-up work, a thread of
    /// the application's own. At the synced level it parks the thread
    /// until the sync; never call it from async code (it would hold a
    /// runtime worker for that long).
    ///
    /// # Errors
    /// As [`publish`](DurableTopic::publish).
    pub fn publish_blocking(&self, event: E) -> Result<DurableReceipt, DurablePublishError<E>> {
        // The future's only wait is for the sync.
        futures::executor::block_on(self.publish(event))
    }

    /// [`publish_keyed`](DurableTopic::publish_keyed) for code that cannot
    /// `.await`, as [`publish_blocking`](DurableTopic::publish_blocking).
    ///
    /// # Errors
    /// As [`publish_keyed`](DurableTopic::publish_keyed).
    pub fn publish_keyed_blocking(
        &self,
        event: E,
        key: impl Into<Arc<str>>,
    ) -> Result<DurableReceipt, DurablePublishError<E>> {
        futures::executor::block_on(self.publish_keyed(event, key))
    }

    /// Serializes and appends `event`: done at the written level (or for a
    /// duplicate), or waiting for the sync that covers `pos`.
    fn append_event(
        &self,
        event: E,
        key: Option<Arc<str>>,
    ) -> Result<Appended<E>, DurablePublishError<E>> {
        // User code (the event's `Serialize`) runs before any lock.
        let payload = match serde_json::to_vec(&event) {
            Ok(payload) => payload,
            Err(e) => {
                let reason = StoreError::Encode {
                    topic: E::TOPIC.to_owned(),
                    reason: e.to_string(),
                };
                return Err(DurablePublishError { reason, event });
            }
        };
        let at_ns = unix_ns(SystemTime::now());
        let log = &self.inner.log;
        let synced = self.inner.options.ack == Ack::Synced;
        let appended = log.append_then(
            |state| {
                if let Some(key) = &key {
                    if let Some(seq) = state.duplicate(key, at_ns / 1_000_000) {
                        return Ok((Vec::new(), (seq, true)));
                    }
                }
                let seq = state.next_seq;
                let record = Record::Event {
                    seq,
                    at_ns,
                    key,
                    payload,
                };
                Ok((vec![record], (seq, false)))
            },
            // Counted before the feeders can read it.
            |_| {
                self.inner.stored.fetch_add(1, Ordering::Relaxed);
                if synced {
                    log.count_synced_publish();
                }
            },
        );
        let ((seq, duplicate), pos) = match appended {
            Ok(appended) => appended,
            Err(reason) => return Err(DurablePublishError { reason, event }),
        };
        let receipt = DurableReceipt { seq, duplicate };
        crate::metrics::stored(E::TOPIC, duplicate);
        if duplicate {
            self.inner.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Appended::Done(receipt));
        }
        if synced {
            return Ok(Appended::Sync {
                receipt,
                pos,
                event,
            });
        }
        Ok(Appended::Done(receipt))
    }

    /// Subscribes `name` durably: finish the returned builder as any other
    /// (`.stream()`, `.handler(..)`, `.sync(..)`, with concurrency,
    /// retries, timeouts, a breaker). The subscription's place is kept in
    /// the store: after a restart, a subscription of the same name resumes
    /// where it was, and gets again exactly the events it had not settled
    /// (handled, dead-lettered, or, for a stream, read and let go of),
    /// those it may have had before marked
    /// [`redelivered`](tidings::Envelope::redelivered). A new name starts
    /// at the oldest event the topic still has.
    ///
    /// Its queue defaults to the topic's [`TopicOptions::capacity`]; its
    /// overflow policy is `Block` (the feeder waits; publishers never do).
    pub fn subscribe(&self, name: &str) -> SubscribeBuilder<E> {
        let (slot, pending) = tidings::feed::slot::<E>();
        feeder::start::<E>(Arc::clone(&self.inner), name.to_owned(), pending);
        self.inner
            .bus
            .subscribe::<E>()
            .name(name)
            .capacity(self.inner.options.capacity)
            .fed(slot)
    }

    /// Forgets the durable subscription `name`: its place goes, and with
    /// it its hold on retention (a subscription that is gone for good
    /// would otherwise keep every event it has not settled). `Ok(false)`
    /// if there was none. Forget a subscription only once it no longer
    /// runs anywhere: one that subscribes again later starts anew at the
    /// oldest event the topic has.
    ///
    /// # Errors
    /// [`StoreError`] when the record of it cannot be appended.
    pub fn forget(&self, name: &str) -> Result<bool, StoreError> {
        let (forgot, _) = self.inner.log.append(|state| match state.sub_named(name) {
            Some(sub) => Ok((vec![Record::Forget { sub: sub.id }], true)),
            None => Ok((Vec::new(), false)),
        })?;
        Ok(forgot)
    }

    /// The dead letters of durable subscription `name` that the topic still
    /// retains, oldest first: each event with why its handler gave up. A
    /// dead-lettered event is settled, so it goes with its segment once
    /// every subscription has settled that; copy what must outlive that
    /// (or bound retention with [`TopicOptions::max_age`] instead). Reads
    /// the whole log: for inspection, not for a hot path.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a segment cannot be read.
    pub fn dead_letters(&self, name: &str) -> Result<Vec<StoredDeadLetter<E>>, StoreError> {
        let Some(id) = self
            .inner
            .log
            .with_state(|s| s.sub_named(name).map(|s| s.id))
        else {
            return Ok(Vec::new());
        };
        let mut errors = std::collections::BTreeMap::new();
        self.inner.log.scan_records(|r| {
            if let Record::DeadLetter { sub, seq, error } = r {
                if *sub == id {
                    errors.insert(*seq, error.clone());
                }
            }
        })?;
        let mut letters = Vec::with_capacity(errors.len());
        self.inner.log.scan_records(|r| {
            if let Record::Event {
                seq,
                at_ns,
                payload,
                ..
            } = r
            {
                if let Some(error) = errors.remove(seq) {
                    letters.push(StoredDeadLetter {
                        seq: *seq,
                        error,
                        event: serde_json::from_slice(payload).ok(),
                        published_at: SystemTime::UNIX_EPOCH
                            + std::time::Duration::from_nanos(*at_ns),
                    });
                }
            }
        })?;
        Ok(letters)
    }

    /// What recovery found when the topic opened: segments, bytes read,
    /// a torn tail cut off, and how long it took.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// The topic's numbers.
    pub fn stats(&self) -> DurableStats {
        let (bytes, segments, expired) = self.inner.log.usage();
        let subs: Vec<Arc<SubNumbers>> = self.inner.subs.lock().clone();
        let now_ns = unix_ns(SystemTime::now());
        let (next_seq, subscriptions) = self.inner.log.with_state(|state| {
            let rows = state
                .subs
                .iter()
                .map(|s| {
                    let numbers = subs.iter().find(|n| n.id == s.id);
                    let settled_above = s.done_above.len() as u64;
                    let lag = state
                        .next_seq
                        .saturating_sub(s.done_below)
                        .saturating_sub(settled_above);
                    let oldest = numbers.and_then(|n| n.oldest_unsettled(s));
                    DurableSubStats {
                        name: s.name.clone(),
                        settled_below: s.done_below,
                        lag,
                        lag_ms: oldest.map_or(0, |at| now_ns.saturating_sub(at) / 1_000_000),
                        redelivered: numbers.map_or(0, |n| n.redelivered.load(Ordering::Relaxed)),
                        expired: expired
                            .iter()
                            .find(|(id, _)| *id == s.id)
                            .map_or(0, |(_, n)| *n),
                        undecodable: numbers.map_or(0, |n| n.undecodable.load(Ordering::Relaxed)),
                    }
                })
                .collect();
            (state.next_seq, rows)
        });
        DurableStats {
            topic: E::TOPIC,
            next_seq,
            bytes,
            segments,
            stored: self.inner.stored.load(Ordering::Relaxed),
            duplicates: self.inner.duplicates.load(Ordering::Relaxed),
            sync: self.inner.log.sync_stats(),
            recovery: self.inner.recovery.clone(),
            subscriptions,
        }
    }
}

impl<E: Event> std::fmt::Debug for DurableTopic<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableTopic")
            .field("topic", &E::TOPIC)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}
