//! The records of a topic's log, byte for byte, and the one checksum that
//! guards each: `len: u32 | crc32c(body): u32 | body`, little-endian.
//!
//! Decoding trusts nothing: a record whose length runs past the end, whose
//! checksum fails, or whose body does not parse is where the log ends (a
//! torn or corrupt tail), never a panic.

use std::sync::Arc;

/// Bytes of a record's frame before its body.
pub(crate) const FRAME: usize = 8;
/// The largest body a record may have (an event's payload and key): 64 MiB.
pub(crate) const MAX_BODY: usize = 64 << 20;

/// A subscription's settled state as a checkpoint carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubMark {
    pub(crate) id: u32,
    pub(crate) name: String,
    /// Every sequence number below it is settled.
    pub(crate) done_below: u64,
    /// Settled ones at or above `done_below`.
    pub(crate) done_above: Vec<u64>,
    /// The highest sequence number ever offered to it (0: none).
    pub(crate) offered: u64,
}

/// An idempotency key remembered by a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyMark {
    pub(crate) key: Arc<str>,
    pub(crate) seq: u64,
    /// Milliseconds since the Unix epoch when it was accepted.
    pub(crate) at_ms: u64,
}

/// One record of a topic's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// An accepted event: its number, when, its key, its serialized form.
    Event {
        seq: u64,
        at_ns: u64,
        key: Option<Arc<str>>,
        payload: Vec<u8>,
    },
    /// A subscription settled an event (`how`: 1 handled, 2 dead-lettered,
    /// 3 read by a stream).
    Settle { sub: u32, seq: u64, how: u8 },
    /// Events up to `upto` are about to be offered to a subscription:
    /// written before they are, so that after a crash every one it may
    /// have had is marked redelivered.
    Offered { sub: u32, upto: u64 },
    /// A new durable subscription, starting at `from`.
    Sub { id: u32, name: String, from: u64 },
    /// A dead letter of a durable subscription: why it gave up.
    DeadLetter { sub: u32, seq: u64, error: String },
    /// A durable subscription is forgotten: its place goes, and with it
    /// its hold on retention.
    Forget { sub: u32 },
    /// The whole state, at the start of every segment, so that recovery
    /// reads the last segment only.
    Checkpoint {
        next_seq: u64,
        subs: Vec<SubMark>,
        keys: Vec<KeyMark>,
    },
}

const EVENT: u8 = 1;
const SETTLE: u8 = 2;
const OFFERED: u8 = 3;
const SUB: u8 = 4;
const DEAD_LETTER: u8 = 5;
const CHECKPOINT: u8 = 6;
const FORGET: u8 = 7;

/// Appends `record`, framed, to `out`. `None` (and `out` as it was) if its
/// body would be over [`MAX_BODY`].
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) -> Option<()> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    let mut w = Writer(out);
    match record {
        Record::Event {
            seq,
            at_ns,
            key,
            payload,
        } => {
            w.u8(EVENT);
            w.u64(*seq);
            w.u64(*at_ns);
            w.opt_str(key.as_deref());
            w.0.extend_from_slice(payload);
        }
        Record::Settle { sub, seq, how } => {
            w.u8(SETTLE);
            w.u32(*sub);
            w.u64(*seq);
            w.u8(*how);
        }
        Record::Offered { sub, upto } => {
            w.u8(OFFERED);
            w.u32(*sub);
            w.u64(*upto);
        }
        Record::Sub { id, name, from } => {
            w.u8(SUB);
            w.u32(*id);
            w.u64(*from);
            w.str(name);
        }
        Record::DeadLetter { sub, seq, error } => {
            w.u8(DEAD_LETTER);
            w.u32(*sub);
            w.u64(*seq);
            w.str(error);
        }
        Record::Forget { sub } => {
            w.u8(FORGET);
            w.u32(*sub);
        }
        Record::Checkpoint {
            next_seq,
            subs,
            keys,
        } => {
            w.u8(CHECKPOINT);
            w.u64(*next_seq);
            w.len(subs.len());
            for s in subs {
                w.u32(s.id);
                w.str(&s.name);
                w.u64(s.done_below);
                w.u64(s.offered);
                w.len(s.done_above.len());
                s.done_above.iter().for_each(|seq| w.u64(*seq));
            }
            w.len(keys.len());
            for k in keys {
                w.str(&k.key);
                w.u64(k.seq);
                w.u64(k.at_ms);
            }
        }
    }
    let body_len = out.len() - start - FRAME;
    let Ok(len) = u32::try_from(body_len) else {
        out.truncate(start);
        return None;
    };
    if body_len > MAX_BODY {
        out.truncate(start);
        return None;
    }
    let crc = crc32c::crc32c(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole, valid record of `size` bytes (frame included).
    Record(Record, usize),
    /// Not enough bytes for the record its frame announces (or for a
    /// frame): more may come, or the log ends here.
    Short,
    /// Zeros where a frame should be: the log ends here (preallocated or
    /// never written).
    End,
    /// A frame whose length or checksum is wrong, or a body that does not
    /// parse: the log is torn or corrupt here.
    Bad(&'static str),
}

/// Decodes the record at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded {
    let Some(frame) = buf.get(..FRAME) else {
        return Decoded::Short;
    };
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 && crc == 0 {
        return Decoded::End;
    }
    if len == 0 || len > MAX_BODY {
        return Decoded::Bad("a record length out of range");
    }
    let Some(body) = buf.get(FRAME..FRAME + len) else {
        return Decoded::Short;
    };
    if crc32c::crc32c(body) != crc {
        return Decoded::Bad("a checksum mismatch");
    }
    match parse(body) {
        Some(record) => Decoded::Record(record, FRAME + len),
        None => Decoded::Bad("a record that does not parse"),
    }
}

fn parse(body: &[u8]) -> Option<Record> {
    let mut r = Reader(body);
    let record = match r.u8()? {
        EVENT => Record::Event {
            seq: r.u64()?,
            at_ns: r.u64()?,
            key: r.opt_str()?.map(Arc::from),
            payload: r.rest().to_vec(),
        },
        SETTLE => Record::Settle {
            sub: r.u32()?,
            seq: r.u64()?,
            how: r.u8()?,
        },
        OFFERED => Record::Offered {
            sub: r.u32()?,
            upto: r.u64()?,
        },
        SUB => Record::Sub {
            id: r.u32()?,
            from: r.u64()?,
            name: r.str()?.to_owned(),
        },
        DEAD_LETTER => Record::DeadLetter {
            sub: r.u32()?,
            seq: r.u64()?,
            error: r.str()?.to_owned(),
        },
        FORGET => Record::Forget { sub: r.u32()? },
        CHECKPOINT => {
            let next_seq = r.u64()?;
            let n = r.count()?;
            let mut subs = Vec::new();
            for _ in 0..n {
                let id = r.u32()?;
                let name = r.str()?.to_owned();
                let done_below = r.u64()?;
                let offered = r.u64()?;
                let m = r.count()?;
                let mut done_above = Vec::new();
                for _ in 0..m {
                    done_above.push(r.u64()?);
                }
                subs.push(SubMark {
                    id,
                    name,
                    done_below,
                    done_above,
                    offered,
                });
            }
            let n = r.count()?;
            let mut keys = Vec::new();
            for _ in 0..n {
                keys.push(KeyMark {
                    key: Arc::from(r.str()?),
                    seq: r.u64()?,
                    at_ms: r.u64()?,
                });
            }
            Record::Checkpoint {
                next_seq,
                subs,
                keys,
            }
        }
        _ => return None,
    };
    // Only an event's payload runs to the end; anything after another
    // record's fields is corruption.
    r.0.is_empty().then_some(record)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A count: as a u32 (lists of a checkpoint are far below 4 billion;
    /// a longer one is cut at the encoder's caller).
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u32(u32::MAX),
            Some(s) => self.str(s),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count, checked against what is left (each item takes at least a
    /// byte), so that a corrupt count never reserves memory.
    fn count(&mut self) -> Option<usize> {
        let n = self.u32()? as usize;
        (n <= self.0.len()).then_some(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        let n = n as usize;
        Some(Some(std::str::from_utf8(self.take(n)?).ok()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_record() -> impl Strategy<Value = Record> {
        let key = proptest::option::of("[a-z0-9-]{1,12}").prop_map(|k| k.map(Arc::from));
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                key,
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(seq, at_ns, key, payload)| Record::Event {
                    seq,
                    at_ns,
                    key,
                    payload
                }),
            (any::<u32>(), any::<u64>(), 1u8..4).prop_map(|(sub, seq, how)| Record::Settle {
                sub,
                seq,
                how
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(sub, upto)| Record::Offered { sub, upto }),
            any::<u32>().prop_map(|sub| Record::Forget { sub }),
            (any::<u32>(), "[a-z]{1,8}", any::<u64>()).prop_map(|(id, name, from)| Record::Sub {
                id,
                name,
                from
            }),
            (any::<u32>(), any::<u64>(), ".{0,20}")
                .prop_map(|(sub, seq, error)| Record::DeadLetter { sub, seq, error }),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (
                        any::<u32>(),
                        "[a-z]{1,6}",
                        any::<u64>(),
                        proptest::collection::vec(any::<u64>(), 0..4),
                        any::<u64>()
                    ),
                    0..3
                ),
                proptest::collection::vec(("[a-z]{1,6}", any::<u64>(), any::<u64>()), 0..3)
            )
                .prop_map(|(next_seq, subs, keys)| Record::Checkpoint {
                    next_seq,
                    subs: subs
                        .into_iter()
                        .map(|(id, name, done_below, done_above, offered)| SubMark {
                            id,
                            name,
                            done_below,
                            done_above,
                            offered
                        })
                        .collect(),
                    keys: keys
                        .into_iter()
                        .map(|(key, seq, at_ms)| KeyMark {
                            key: Arc::from(key.as_str()),
                            seq,
                            at_ms
                        })
                        .collect(),
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::cases(256), ..ProptestConfig::default() })]

        /// Every record reads back as written, and every strict prefix of
        /// it is short, never a different record.
        #[test]
        fn records_round_trip(record in any_record()) {
            let mut buf = Vec::new();
            encode(&record, &mut buf).expect("small");
            prop_assert_eq!(decode(&buf), Decoded::Record(record.clone(), buf.len()));
            for cut in 0..buf.len() {
                prop_assert_eq!(decode(&buf[..cut]), Decoded::Short);
            }
        }

        /// A flipped bit anywhere in a record is caught: never read as a
        /// record, never a panic.
        #[test]
        fn a_flipped_bit_is_never_a_record(record in any_record(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            encode(&record, &mut buf).expect("small");
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            match decode(&buf) {
                Decoded::Record(..) => prop_assert!(false, "a corrupt record decoded"),
                Decoded::Short | Decoded::End | Decoded::Bad(_) => {}
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn junk_never_panics(junk in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&junk);
        }
    }
}
