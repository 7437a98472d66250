//! `RUSTFLAGS="--cfg tidings_loom" cargo test -p tidings --lib --release loom`

use super::*;
use crate::id::EventId;
use crate::sync::Mutex;
use loom::sync::atomic::AtomicUsize as Counter;
use loom::sync::Arc as LoomArc;
use loom::thread;
use std::task::Wake;

fn event(seq: u64) -> Arc<Published<u64>> {
    Arc::new(Published {
        event: seq,
        id: EventId::for_test(seq),
        seq,
        at: std::time::UNIX_EPOCH,
        meta: None,
    })
}

/// The ring's `write`, under the contract these models keep by hand: one
/// writer, a free slot, `readers` readers of `seq`.
fn write(ring: &Ring<u64>, seq: u64, readers: usize) {
    // SAFETY: each model writes from one thread, to a slot whose readers
    // took its previous event (or that was never written), for the
    // readers it then runs.
    unsafe { ring.write(event(seq), readers) }
}

/// The ring's `read`, under the contract these models keep by hand: each
/// reader reads each sequence number once.
fn read(ring: &Ring<u64>, seq: u64) -> Option<Arc<Published<u64>>> {
    // SAFETY: each reader of each model reads each sequence number once.
    unsafe { ring.read(seq) }
}

/// A stream's reader of `writer`'s ring, from sequence number 0, with
/// room for `capacity` events in a ring of that size, taking without the
/// lock: the cursor shared with the model's threads, and its first room.
fn lock_free_reader(
    writer: &mut Writer<u64>,
    capacity: usize,
) -> (LoomArc<Cursor<u64>>, ReaderRoom) {
    let (cursor, room) = writer.add_reader(0, capacity, capacity);
    cursor.unlock();
    (LoomArc::new(cursor), room)
}

struct Wakes(Counter);
impl Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A reader that finds nothing and waits is woken by the write, or sees
/// the event: never neither (no lost wake-up), and it reads what was
/// written.
#[test]
fn loom_a_waiting_reader_is_woken_or_sees_the_event() {
    loom::model(|| {
        let ring = LoomArc::new(Ring::<u64>::new(2));
        let wakes = std::sync::Arc::new(Wakes(Counter::new(0)));
        let writer = {
            let ring = LoomArc::clone(&ring);
            thread::spawn(move || write(&ring, 0, 1))
        };
        let waker = Waker::from(std::sync::Arc::clone(&wakes));
        let got = match read(&ring, 0) {
            Some(e) => Some(e),
            None if !ring.wait(0, &waker) => read(&ring, 0),
            None => None,
        };
        writer.join().expect("writer");
        match got {
            Some(e) => assert_eq!(e.event, 0),
            None => {
                assert!(wakes.0.load(Ordering::SeqCst) >= 1, "lost wake-up");
                assert_eq!(read(&ring, 0).map(|e| e.event), Some(0));
            }
        }
    });
}

/// Two readers of one slot read it at once: both get the event, and
/// the ring lets go of it once both have.
#[test]
fn loom_two_readers_share_a_slot_and_the_last_lets_go() {
    loom::model(|| {
        let ring = LoomArc::new(Ring::<u64>::new(1));
        let written = event(0);
        let weak = Arc::downgrade(&written);
        // SAFETY: one writer, a slot never written, two readers that each
        // read it once.
        unsafe { ring.write(written, 2) };
        let other = {
            let ring = LoomArc::clone(&ring);
            thread::spawn(move || read(&ring, 0).map(|e| e.event))
        };
        let mine = read(&ring, 0).map(|e| e.event);
        let theirs = other.join().expect("reader");
        assert_eq!((mine, theirs), (Some(0), Some(0)));
        assert!(weak.upgrade().is_none(), "the ring still holds the event");
    });
}

/// A reader a whole ring ahead waits on a slot whose event another
/// reader has still to take: that one still takes it, and the waiting
/// one is woken by the next write (the case of a full queue whose
/// capacity is the ring's size).
#[test]
fn loom_a_reader_a_ring_behind_reads_past_a_waiting_bit() {
    loom::model(|| {
        let ring = LoomArc::new(Ring::<u64>::new(1));
        write(&ring, 0, 2);
        let wakes = std::sync::Arc::new(Wakes(Counter::new(0)));
        let ahead = {
            let (ring, wakes) = (LoomArc::clone(&ring), std::sync::Arc::clone(&wakes));
            thread::spawn(move || {
                assert_eq!(read(&ring, 0).map(|e| e.event), Some(0));
                assert!(read(&ring, 1).is_none());
                ring.wait(1, &Waker::from(wakes))
            })
        };
        // Once the reader ahead waits (joined: its bit is there to see)…
        let waited = ahead.join().expect("reader");
        assert!(waited, "event 1 was not written before");
        // …the one behind still takes its event.
        assert_eq!(
            read(&ring, 0).map(|e| e.event),
            Some(0),
            "read past the bit"
        );
        write(&ring, 1, 2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken by the write");
        assert_eq!(read(&ring, 1).map(|e| e.event), Some(1));
    });
}

/// A slot is written again only after its reader moved past it (the
/// cursor under a lock, as a handler's): the reader gets both
/// events, in order, and never the cell half written.
#[test]
fn loom_a_slot_is_reused_after_its_reader_moved_on() {
    loom::model(|| {
        let ring = LoomArc::new(Ring::<u64>::new(1));
        let cursor = LoomArc::new(Mutex::new(0u64));
        let reader = {
            let (ring, cursor) = (LoomArc::clone(&ring), LoomArc::clone(&cursor));
            thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 2 {
                    let mut next = cursor.lock();
                    if let Some(e) = read(&ring, *next) {
                        got.push(e.event);
                        *next += 1;
                    }
                    drop(next);
                    thread::yield_now();
                }
                got
            })
        };
        write(&ring, 0, 1);
        // Room for event 1: the reader's cursor passed event 0.
        while *cursor.lock() < 1 {
            thread::yield_now();
        }
        write(&ring, 1, 1);
        assert_eq!(reader.join().expect("reader"), [0, 1]);
    });
}

/// The room counting that makes `write` safe, through the types that hold
/// it: a writer writes each event only once the reader's cursor reported
/// room for it, and a stream that takes without its subscription's lock
/// gets every event once, in order, from a ring smaller than what is
/// published.
#[test]
fn loom_a_writer_writes_only_where_a_lock_free_reader_has_room() {
    // Two spinning threads over every atomic of a take: unbounded, loom
    // takes ten minutes here; three preemptions (loom's advice for most
    // bugs) take seconds. The bound is lifted with LOOM_MAX_PREEMPTIONS.
    let mut model = loom::model::Builder::new();
    if model.preemption_bound.is_none() {
        model.preemption_bound = Some(3);
    }
    model.check(|| {
        let mut writer = Writer::<u64>::new();
        let (cursor, mut room) = lock_free_reader(&mut writer, 1);
        let reader = {
            let cursor = LoomArc::clone(&cursor);
            thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 2 {
                    match cursor.try_take() {
                        Take::Taken { published, .. } => got.push(published.event),
                        Take::Empty => thread::yield_now(),
                        Take::Locked => panic!("nobody locked the cursor"),
                    }
                }
                got
            })
        };
        for seq in 0..2 {
            while writer.must_look(seq) {
                room.update(cursor.room());
                writer.looked(std::iter::once(&room));
                if writer.must_look(seq) {
                    thread::yield_now();
                }
            }
            assert!(writer.write(event(seq)), "room was reported");
        }
        assert_eq!(reader.join().expect("reader"), [0, 1]);
    });
}

/// A publisher that finds no room registers under the subscription's lock
/// and flags the cursor; a stream taking without the lock either moved
/// first (the publisher's look counts it) or sees the flag and wakes it:
/// never neither. The publisher here waits for nothing but its wake-up,
/// so a lost one never ends (loom fails the model).
#[test]
fn loom_a_publisher_waiting_for_room_is_woken_by_a_lock_free_take() {
    loom::model(|| {
        let mut writer = Writer::<u64>::new();
        let (cursor, mut room) = lock_free_reader(&mut writer, 1);
        let publishers = LoomArc::new(Mutex::new(Vec::<Waker>::new()));
        let wakes = std::sync::Arc::new(Wakes(Counter::new(0)));
        assert!(writer.write(event(0)));
        let reader = {
            let (cursor, publishers) = (LoomArc::clone(&cursor), LoomArc::clone(&publishers));
            thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 2 {
                    match cursor.try_take() {
                        Take::Taken {
                            published, wake, ..
                        } => {
                            got.push(published.event);
                            if wake {
                                // As `SubscriptionState::wake_waiters`.
                                let mut list = publishers.lock();
                                cursor.waiters_woken();
                                list.drain(..).for_each(Waker::wake);
                            }
                        }
                        Take::Empty => thread::yield_now(),
                        Take::Locked => panic!("nobody locked the cursor"),
                    }
                }
                got
            })
        };
        // Event 1, as `ring_room` and the publish path do it.
        loop {
            let seen = wakes.0.load(Ordering::SeqCst);
            {
                let mut list = publishers.lock();
                room.update(cursor.room());
                if !room.fits(1) {
                    list.push(Waker::from(std::sync::Arc::clone(&wakes)));
                    room.update(cursor.note_waiter().room());
                }
            }
            writer.looked(std::iter::once(&room));
            if !writer.must_look(1) {
                break;
            }
            while wakes.0.load(Ordering::SeqCst) == seen {
                thread::yield_now();
            }
        }
        assert!(writer.write(event(1)));
        assert_eq!(reader.join().expect("reader"), [0, 1]);
    });
}

/// A close under the subscription's lock while a stream takes without it:
/// the close waits for a take under way, then takes the rest; each event
/// goes to exactly one of the two, in order, and the cursor's numbers add
/// up (loom's cells also check that no slot is read twice at once).
#[test]
fn loom_a_close_and_a_lock_free_take_share_the_events_once() {
    loom::model(|| {
        let mut writer = Writer::<u64>::new();
        let (cursor, _room) = lock_free_reader(&mut writer, 2);
        let lock = LoomArc::new(Mutex::new(()));
        assert!(writer.write(event(0)));
        assert!(writer.write(event(1)));
        let reader = {
            let cursor = LoomArc::clone(&cursor);
            thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..2 {
                    match cursor.try_take() {
                        Take::Taken { published, .. } => got.push(published.event),
                        Take::Empty => panic!("both were written"),
                        Take::Locked => break,
                    }
                }
                got
            })
        };
        let mut rest = Vec::new();
        let n = {
            let _guard = lock.lock();
            cursor.close(2);
            cursor.take_rest(|published| rest.push(published.event))
        };
        let mut got = reader.join().expect("reader");
        assert_eq!(n as usize, rest.len());
        got.extend(rest);
        assert_eq!(got, [0, 1], "each event once, in order");
        let place = cursor.place();
        assert!(place.drained());
        assert_eq!(place.passed(), 2);
        assert_eq!(cursor.room().until, u64::MAX, "closed and drained");
    });
}

/// A snapshot taken while a stream takes without the lock reads the cursor
/// once: what it counts passed and what it counts queued always add up to
/// what was written.
#[test]
fn loom_a_snapshot_of_a_lock_free_reader_adds_up() {
    loom::model(|| {
        let mut writer = Writer::<u64>::new();
        let (cursor, _room) = lock_free_reader(&mut writer, 2);
        assert!(writer.write(event(0)));
        assert!(writer.write(event(1)));
        let reader = {
            let cursor = LoomArc::clone(&cursor);
            thread::spawn(move || {
                for _ in 0..2 {
                    assert!(matches!(cursor.try_take(), Take::Taken { .. }));
                }
            })
        };
        let place = cursor.place();
        assert_eq!(place.passed() + place.queued(2) as u64, 2);
        reader.join().expect("reader");
        assert_eq!(cursor.place().queued(2), 0);
    });
}

/// A writer refuses what the rooms do not allow: an event past a reader's
/// room, one written again, or rooms that are not those of its readers.
#[test]
fn loom_a_writer_refuses_what_the_rooms_do_not_allow() {
    loom::model(|| {
        let mut writer = Writer::<u64>::new();
        let (_cursor, room) = writer.add_reader(0, 1, 1);
        assert!(writer.write(event(0)));
        assert!(!writer.write(event(1)), "past the reader's room");
        assert!(!writer.write(event(0)), "written already");
        let mut other = Writer::<u64>::new();
        let (other_cursor, mut other_room) = other.add_reader(0, 1, 1);
        // Another reader's room changes nothing here.
        writer.looked(std::iter::once(&other_room));
        assert!(writer.must_look(1));
        other_room.update(other_cursor.room());
        let _ = room;
    });
}
