//! The stored messages a durable importer handed to the local bus and has
//! not acknowledged yet, by stream sequence, each with the reply subject of
//! its latest delivery.
//!
//! A handler slower than the consumer's `ack_wait` makes the broker
//! deliver such a message again while the bridge still holds it. That
//! redelivery must not be acknowledged (the event is not handled yet: a
//! crash now would lose it), nor published again (it is in hand). It is
//! recorded here instead, and answered with a progress acknowledgement
//! (`+WPI`), which restarts the broker's `ack_wait`; the importer also
//! sends one for every message it holds every third of `ack_wait`, so that
//! slow work is not delivered again at all. The acknowledgement, once
//! every local subscription is done, goes on the latest delivery's subject.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

/// See the module docs.
#[derive(Default)]
pub(crate) struct InHand {
    by_seq: Mutex<HashMap<u64, Bytes>>,
}

impl InHand {
    /// How many messages it holds.
    pub(crate) fn len(&self) -> usize {
        self.by_seq.lock().len()
    }

    /// A message handed to the bus.
    pub(crate) fn hand(&self, seq: u64, reply: Bytes) {
        self.by_seq.lock().insert(seq, reply);
    }

    /// A delivery of message `seq`: if it is in hand, its reply subject is
    /// now `reply`, and `true` (a redelivery, not to be imported again).
    pub(crate) fn redelivered(&self, seq: u64, reply: &Bytes) -> bool {
        match self.by_seq.lock().get_mut(&seq) {
            Some(latest) => {
                *latest = reply.clone();
                true
            }
            None => false,
        }
    }

    /// Message `seq` is done with (or was never handed after all): the
    /// reply subject to acknowledge it on.
    pub(crate) fn done(&self, seq: u64) -> Option<Bytes> {
        self.by_seq.lock().remove(&seq)
    }

    /// The reply subjects of every message in hand, for progress
    /// acknowledgements.
    pub(crate) fn replies(&self) -> Vec<Bytes> {
        self.by_seq.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivery_of_a_message_in_hand_is_recognised_and_acknowledged_on_its_latest_subject() {
        let in_hand = InHand::default();
        assert!(!in_hand.redelivered(7, &Bytes::from_static(b"first")));
        in_hand.hand(7, Bytes::from_static(b"first"));
        assert!(in_hand.redelivered(7, &Bytes::from_static(b"second")));
        assert_eq!(in_hand.replies(), [Bytes::from_static(b"second")]);
        assert_eq!(in_hand.done(7), Some(Bytes::from_static(b"second")));
        assert_eq!(in_hand.done(7), None);
        assert_eq!(in_hand.len(), 0);
    }
}
