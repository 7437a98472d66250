//! What a topic's log means, as recovery rebuilds it and appends keep it:
//! the next sequence number, each durable subscription's settled set, and
//! the idempotency keys inside the window. Pure bookkeeping, no files.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::record::{KeyMark, Record, SubMark};

/// One durable subscription's place in the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubState {
    pub(crate) id: u32,
    pub(crate) name: String,
    /// Every sequence number below it is settled (or was never its to
    /// have: it started there).
    pub(crate) done_below: u64,
    /// Settled ones at or above `done_below` (handlers finish out of order
    /// at a concurrency above 1; bounded by what is in flight).
    pub(crate) done_above: BTreeSet<u64>,
    /// The highest sequence number it was ever offered (0: none).
    pub(crate) offered: u64,
}

impl SubState {
    pub(crate) fn settle(&mut self, seq: u64) {
        if seq < self.done_below {
            return;
        }
        self.done_above.insert(seq);
        while self.done_above.remove(&self.done_below) {
            self.done_below = self.done_below.saturating_add(1);
        }
    }

    pub(crate) fn is_settled(&self, seq: u64) -> bool {
        seq < self.done_below || self.done_above.contains(&seq)
    }
}

/// How long keys are remembered, and how many at most.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyWindow {
    pub(crate) keep: Duration,
    pub(crate) max: usize,
}

/// The topic's meaning.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub(crate) next_seq: u64,
    pub(crate) subs: Vec<SubState>,
    keys: HashMap<Arc<str>, (u64, u64)>,
    key_order: VecDeque<(Arc<str>, u64)>,
    window: KeyWindow,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl State {
    pub(crate) fn new(window: KeyWindow) -> Self {
        State {
            next_seq: 1,
            subs: Vec::new(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            window,
        }
    }

    /// The sequence number a key was accepted with, if it is still inside
    /// the window at `now_ms`.
    pub(crate) fn duplicate(&mut self, key: &str, now_ms: u64) -> Option<u64> {
        self.expire(now_ms);
        self.keys.get(key).map(|(seq, _)| *seq)
    }

    fn expire(&mut self, now_ms: u64) {
        let keep = millis(self.window.keep);
        while let Some((key, at)) = self.key_order.front() {
            let stale = now_ms.saturating_sub(*at) > keep || self.key_order.len() > self.window.max;
            if !stale {
                break;
            }
            if self.keys.get(key).is_some_and(|(_, kept)| kept == at) {
                self.keys.remove(key);
            }
            self.key_order.pop_front();
        }
    }

    fn remember(&mut self, key: Arc<str>, seq: u64, at_ms: u64) {
        if self.window.max == 0 {
            return;
        }
        self.keys.insert(Arc::clone(&key), (seq, at_ms));
        self.key_order.push_back((key, at_ms));
        while self.key_order.len() > self.window.max {
            if let Some((old, at)) = self.key_order.pop_front() {
                if self.keys.get(&old).is_some_and(|(_, kept)| *kept == at) {
                    self.keys.remove(&old);
                }
            }
        }
    }

    pub(crate) fn sub(&self, id: u32) -> Option<&SubState> {
        self.subs.iter().find(|s| s.id == id)
    }

    pub(crate) fn sub_mut(&mut self, id: u32) -> Option<&mut SubState> {
        self.subs.iter_mut().find(|s| s.id == id)
    }

    pub(crate) fn sub_named(&self, name: &str) -> Option<&SubState> {
        self.subs.iter().find(|s| s.name == name)
    }

    /// Applies one record of the log, as recovery reads it and as an append
    /// wrote it. A record that contradicts the state (a settle for a
    /// subscription it does not know, an event out of order) changes
    /// nothing: the log is read as far as it makes sense.
    pub(crate) fn apply(&mut self, record: &Record) {
        match record {
            Record::Event {
                seq, at_ns, key, ..
            } => {
                if *seq >= self.next_seq {
                    self.next_seq = seq.saturating_add(1);
                }
                if let Some(key) = key {
                    self.remember(Arc::clone(key), *seq, at_ns / 1_000_000);
                }
            }
            Record::Settle { sub, seq, .. } | Record::DeadLetter { sub, seq, .. } => {
                if let Some(s) = self.sub_mut(*sub) {
                    s.settle(*seq);
                }
            }
            Record::Offered { sub, upto } => {
                if let Some(s) = self.sub_mut(*sub) {
                    s.offered = s.offered.max(*upto);
                }
            }
            Record::Sub { id, name, from } => {
                if self.sub(*id).is_none() {
                    self.subs.push(SubState {
                        id: *id,
                        name: name.clone(),
                        done_below: *from,
                        done_above: BTreeSet::new(),
                        offered: 0,
                    });
                }
            }
            Record::Forget { sub } => self.subs.retain(|s| s.id != *sub),
            Record::Checkpoint {
                next_seq,
                subs,
                keys,
            } => {
                self.next_seq = *next_seq;
                self.subs = subs
                    .iter()
                    .map(|m| SubState {
                        id: m.id,
                        name: m.name.clone(),
                        done_below: m.done_below,
                        done_above: m.done_above.iter().copied().collect(),
                        offered: m.offered,
                    })
                    .collect();
                self.keys.clear();
                self.key_order.clear();
                for k in keys {
                    self.remember(Arc::clone(&k.key), k.seq, k.at_ms);
                }
            }
        }
    }

    /// The checkpoint that opens a new segment: everything recovery needs
    /// without reading the segments before it.
    pub(crate) fn checkpoint(&mut self, now_ms: u64) -> Record {
        self.expire(now_ms);
        Record::Checkpoint {
            next_seq: self.next_seq,
            subs: self
                .subs
                .iter()
                .map(|s| SubMark {
                    id: s.id,
                    name: s.name.clone(),
                    done_below: s.done_below,
                    done_above: s.done_above.iter().copied().collect(),
                    offered: s.offered,
                })
                .collect(),
            keys: self
                .key_order
                .iter()
                .filter(|(key, at)| self.keys.get(key).is_some_and(|(_, kept)| kept == at))
                .map(|(key, at)| KeyMark {
                    key: Arc::clone(key),
                    seq: self.keys.get(key).map_or(0, |(seq, _)| *seq),
                    at_ms: *at,
                })
                .collect(),
        }
    }

    /// The lowest sequence number some durable subscription still needs.
    /// A topic nobody has subscribed to yet keeps everything (its first
    /// subscription starts at the oldest event): jobs queued before their
    /// worker subscribes are not lost.
    pub(crate) fn needed_from(&self) -> u64 {
        self.subs.iter().map(|s| s.done_below).min().unwrap_or(0)
    }

    /// A fresh subscription id.
    pub(crate) fn next_sub_id(&self) -> u32 {
        self.subs
            .iter()
            .map(|s| s.id)
            .max()
            .map_or(1, |id| id.saturating_add(1))
    }
}
