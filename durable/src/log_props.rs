//! Property tests of recovery: random logs (events, keys, subscriptions,
//! settlements, offers, over many small segments), then a cut at a random
//! byte of the last segment or a flipped bit anywhere in it. The log must
//! open, and mean exactly what the records before the damage say: nothing
//! after it, nothing before it lost.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::log::{Log, LogOptions};
use super::record::{self, Decoded, Record};
use super::state::{KeyWindow, State};

#[derive(Clone, Debug)]
enum Op {
    Publish { len: usize, keyed: bool },
    Subscribe,
    Settle { sub: u8, back: u8 },
    Offer { sub: u8 },
    Forget { sub: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..120, any::<bool>()).prop_map(|(len, keyed)| Op::Publish { len, keyed }),
        1 => Just(Op::Subscribe),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(sub, back)| Op::Settle { sub, back }),
        1 => any::<u8>().prop_map(|sub| Op::Offer { sub }),
        1 => any::<u8>().prop_map(|sub| Op::Forget { sub }),
    ]
}

#[derive(Clone, Debug)]
enum Damage {
    /// Cut the last segment at this fraction of its length.
    Cut(u16),
    /// Flip this bit of the byte at this fraction of its length.
    Flip(u16, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<u16>().prop_map(Damage::Cut),
        (any::<u16>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
    ]
}

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 600,
        max_bytes: None,
        max_age: None,
        window: KeyWindow {
            keep: Duration::from_secs(3600),
            max: 1000,
        },
        ledger: None,
    }
}

/// The records of a segment file and where each ends.
fn records(bytes: &[u8]) -> Vec<(Record, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Decoded::Record(r, size) = record::decode(&bytes[at..]) {
        at += size;
        out.push((r, at));
    }
    out
}

/// The segments of a topic directory, oldest first.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.split_once('-')?.1.parse().ok()?;
            Some((base, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

fn build(dir: &Path, ops: &[Op]) {
    let (log, _) = Log::open("props", dir.to_owned(), options()).expect("open");
    let mut n: u64 = 0;
    for op in ops {
        let result = log.append(|state| {
            let records = match op {
                Op::Publish { len, keyed } => {
                    n += 1;
                    vec![Record::Event {
                        seq: state.next_seq,
                        at_ns: n,
                        key: keyed.then(|| Arc::from(format!("key-{n}"))),
                        payload: vec![n as u8; *len],
                    }]
                }
                Op::Subscribe => vec![Record::Sub {
                    id: state.next_sub_id(),
                    name: format!("sub-{}", state.next_sub_id()),
                    from: 1,
                }],
                Op::Settle { sub, back } => {
                    let Some(s) = state.subs.get(usize::from(*sub) % state.subs.len().max(1))
                    else {
                        return Ok((Vec::new(), ()));
                    };
                    let seq = state
                        .next_seq
                        .saturating_sub(u64::from(*back % 8) + 1)
                        .max(1);
                    vec![Record::Settle {
                        sub: s.id,
                        seq,
                        how: 1,
                    }]
                }
                Op::Forget { sub } => {
                    let Some(s) = state.subs.get(usize::from(*sub) % state.subs.len().max(1))
                    else {
                        return Ok((Vec::new(), ()));
                    };
                    vec![Record::Forget { sub: s.id }]
                }
                Op::Offer { sub } => {
                    let Some(s) = state.subs.get(usize::from(*sub) % state.subs.len().max(1))
                    else {
                        return Ok((Vec::new(), ()));
                    };
                    vec![Record::Offered {
                        sub: s.id,
                        upto: state.next_seq.saturating_sub(1),
                    }]
                }
            };
            Ok((records, ()))
        });
        result.expect("append");
    }
    log.close().expect("close");
}

/// What the log means: every record of the segment `path` (or its
/// records ending at or before `upto`) applied to a fresh state.
fn meaning(path: &Path, upto: usize) -> Option<State> {
    let bytes = std::fs::read(path).expect("read");
    let recs = records(&bytes);
    if !matches!(recs.first(), Some((Record::Checkpoint { .. }, end)) if *end <= upto) {
        return None; // no readable checkpoint: the segment means nothing
    }
    let mut state = State::new(options().window);
    for (r, end) in recs {
        if end > upto {
            break;
        }
        state.apply(&r);
    }
    Some(state)
}

fn same(a: &State, b: &State) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.next_seq, b.next_seq);
    prop_assert_eq!(&a.subs, &b.subs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::cases(48), ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_exactly_what_precedes_the_damage(
        ops in proptest::collection::vec(op(), 1..120),
        damage in damage(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        build(dir.path(), &ops);
        let segs = segments(dir.path());
        let last = segs.last().expect("a segment").clone();
        let mut bytes = std::fs::read(&last).expect("read");
        // Where the damage starts: records ending at or before it survive.
        let upto = match damage {
            Damage::Cut(at) => {
                let at = bytes.len() * usize::from(at) / usize::from(u16::MAX);
                bytes.truncate(at);
                at
            }
            Damage::Flip(at, bit) => {
                let at = (bytes.len().saturating_sub(1)) * usize::from(at) / usize::from(u16::MAX);
                bytes[at] ^= 1 << bit;
                // The record holding the byte is lost, and all after it.
                records(&std::fs::read(&last).expect("read"))
                    .iter()
                    .map(|(_, end)| *end)
                    .take_while(|end| *end <= at)
                    .last()
                    .unwrap_or(0)
            }
        };
        std::fs::write(&last, &bytes).expect("write");
        // Expected: the last segment up to the damage, or, if its
        // checkpoint is gone, the segment before it whole.
        let expected = match meaning(&last, upto) {
            Some(state) => Some(state),
            None => segs.len().checked_sub(2).and_then(|i| meaning(&segs[i], usize::MAX)),
        };
        let (log, recovery) = Log::open("props", dir.path().to_owned(), options()).expect("opens");
        let got = log.with_state(|s| s.clone());
        match &expected {
            Some(expected) => same(&got, expected)?,
            None => prop_assert_eq!(got.next_seq, 1),
        }
        prop_assert!(recovery.truncated_bytes as usize <= bytes.len() || recovery.empty_segments_removed > 0);
        // It takes new events where it left off, and means them after a
        // clean reopen too.
        let next = got.next_seq;
        log.append(|state| Ok((vec![Record::Event { seq: state.next_seq, at_ns: 0, key: None, payload: vec![1] }], ())))
            .expect("append after recovery");
        log.close().expect("close");
        drop(log);
        let (log, recovery) = Log::open("props", dir.path().to_owned(), options()).expect("opens again");
        prop_assert_eq!(recovery.truncated_bytes, 0);
        prop_assert_eq!(log.with_state(|s| s.next_seq), next + 1);
    }
}
