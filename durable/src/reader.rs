//! Reading a topic's events in order from a sequence number on, segment
//! after segment, never past what the writer finished.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::StoreError;
use crate::log::{Limit, Log};
use crate::record::{self, Decoded, Record, FRAME};

/// One stored event.
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) at_ns: u64,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) payload: Vec<u8>,
}

/// What a read found.
pub(crate) enum Read {
    Event(Stored),
    /// Nothing more yet: wait for an append.
    CaughtUp,
    /// A record that does not read in a segment that is no longer written:
    /// the rest of that segment (at log position `segment`) is skipped.
    Corrupt {
        segment: u64,
        why: &'static str,
    },
}

pub(crate) struct Reader {
    log: Arc<Log>,
    /// The first sequence number of the segment being read.
    segment: u64,
    file: Option<File>,
    /// Where in it the next record starts.
    offset: u64,
    buf: Vec<u8>,
    /// Read bytes `buf[pos..]` start at `offset`.
    pos: usize,
    /// The next sequence number wanted: events below it are skipped.
    want: u64,
}

const CHUNK: usize = 64 << 10;

impl Reader {
    pub(crate) fn new(log: Arc<Log>, from: u64) -> Self {
        let segment = log.segment_for(from);
        Reader {
            log,
            segment,
            file: None,
            offset: 0,
            buf: Vec::new(),
            pos: 0,
            want: from,
        }
    }

    fn open(&mut self) -> Result<(), StoreError> {
        if self.file.is_none() {
            let Some(path) = self.log.path_of(self.segment) else {
                return Ok(()); // let go of meanwhile: `next` moves on
            };
            let file = File::open(&path)
                .map_err(|e| StoreError::io("opening a segment to read", &path, e))?;
            self.file = Some(file);
        }
        Ok(())
    }

    fn next_segment(&mut self, next: u64) {
        self.segment = next;
        self.file = None;
        self.offset = 0;
        self.buf.clear();
        self.pos = 0;
    }

    /// Reads more of the segment, up to `limit` bytes of it: false if
    /// there is nothing more to read below it.
    fn fill(&mut self, limit: u64) -> Result<bool, StoreError> {
        let have = (self.buf.len() - self.pos) as u64;
        let from = self.offset + have;
        if from >= limit {
            return Ok(false);
        }
        let want = usize::try_from((limit - from).min(CHUNK as u64)).unwrap_or(CHUNK);
        self.buf.drain(..self.pos);
        self.pos = 0;
        let start = self.buf.len();
        self.buf.resize(start + want, 0);
        let path = self.log.path_of(self.segment).unwrap_or_default();
        self.open()?;
        let Some(file) = self.file.as_ref() else {
            return Ok(false);
        };
        let n = file
            .read_at(&mut self.buf[start..], from)
            .map_err(|e| StoreError::io("reading a segment", &path, e))?;
        self.buf.truncate(start + n);
        Ok(n > 0)
    }

    /// The next event at or after the wanted sequence number.
    pub(crate) fn next(&mut self) -> Result<Read, StoreError> {
        loop {
            let limit = self.log.limit(self.segment);
            let (end, next) = match limit {
                Limit::Active(len) => (len, None),
                Limit::Closed { next } => (u64::MAX, Some(next)),
                Limit::Gone => {
                    // Let go of by retention while we were behind: start
                    // again at the oldest segment that is left.
                    let segment = self.log.segment_for(self.want);
                    if segment == self.segment {
                        return Ok(Read::CaughtUp);
                    }
                    self.next_segment(segment);
                    continue;
                }
            };
            match record::decode(&self.buf[self.pos..]) {
                Decoded::Record(r, size) => {
                    self.pos += size;
                    self.offset += size as u64;
                    if let Record::Event {
                        seq,
                        at_ns,
                        key,
                        payload,
                    } = r
                    {
                        if seq >= self.want {
                            self.want = seq.saturating_add(1);
                            return Ok(Read::Event(Stored {
                                seq,
                                at_ns,
                                key,
                                payload,
                            }));
                        }
                    }
                }
                // Zeros in a closed segment: the rest of a preallocated
                // one, never written.
                Decoded::End if next.is_some() => {
                    if let Some(next) = next {
                        self.next_segment(next);
                    }
                }
                Decoded::Short | Decoded::End => {
                    if self.fill(end)? {
                        continue;
                    }
                    match next {
                        None => return Ok(Read::CaughtUp),
                        Some(next) => {
                            if self.buf.len() > self.pos && self.buf[self.pos..].len() >= FRAME {
                                // Bytes left that never make a record.
                                let segment = self.segment;
                                self.next_segment(next);
                                return Ok(Read::Corrupt {
                                    segment,
                                    why: "a record cut short",
                                });
                            }
                            self.next_segment(next);
                        }
                    }
                }
                Decoded::Bad(why) => {
                    let segment = self.segment;
                    match next {
                        Some(next) => {
                            self.next_segment(next);
                            return Ok(Read::Corrupt { segment, why });
                        }
                        // In the active segment, below what the writer
                        // finished: corruption under a running store.
                        None => {
                            return Err(StoreError::Stopped {
                                topic: self.log.topic.clone(),
                                reason: format!(
                                    "the segment at log position {segment} does not read: {why}"
                                ),
                            })
                        }
                    }
                }
            }
        }
    }
}
