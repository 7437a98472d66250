//! Graceful shutdown: draining the bus within a deadline (the
//! [`ShutdownReport`](crate::ShutdownReport) says what happened).
//!
//! A drain refuses publishes from outside the bus at once, but accepts those
//! made by the bus's own handlers (and their dead letters), so that chains of
//! handlers (`orders.created` → invoice → mail) finish. It is over when no
//! subscription holds an event and no handler runs, all at one moment: only
//! a running handler could publish again, so nothing can start after that.
//!
//! Seeing that moment takes two passes over the topics (a double collect):
//! each pass looks at every subscription under its topic's lock and reads
//! the topic's count of accepted publishes. If both passes find every
//! subscription quiet and no count moved between them, no publish happened
//! between the two looks at any subscription, so each stayed quiet all
//! along, and every one of them was quiet at the instant between the passes.

use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::id::SubscriptionId;
use crate::topic::ErasedTopic;

/// Drains `topics` within `deadline`: see the module docs. `caller` is the
/// subscription whose handler called shutdown, if one did: its own run is
/// not waited for. Returns the time taken and whether the deadline cut
/// anything off.
pub(crate) async fn drain(
    topics: &[&dyn ErasedTopic],
    deadline: Duration,
    caller: Option<SubscriptionId>,
) -> (Duration, bool) {
    let start = Instant::now();
    for topic in topics {
        topic.begin_drain();
    }
    let quiet = poll_fn(|cx| poll_quiescent(topics, cx, caller));
    let deadline_hit = tokio::time::timeout(deadline, quiet).await.is_err();
    let mut stopped = Vec::new();
    for topic in topics {
        if deadline_hit {
            stopped.extend(topic.cut_off(caller));
        } else {
            topic.finish();
        }
    }
    // Cancelled tasks end at their next await; one in the middle of a poll
    // finishes that poll first. Once they have all ended, no async handler
    // of the bus runs any more and the report's numbers stay put.
    for task in stopped {
        let _ = task.await;
    }
    (start.elapsed(), deadline_hit)
}

fn poll_quiescent(
    topics: &[&dyn ErasedTopic],
    cx: &mut Context<'_>,
    caller: Option<SubscriptionId>,
) -> Poll<()> {
    let mut first = Vec::with_capacity(topics.len());
    for topic in topics {
        match topic.poll_quiet(cx, caller) {
            Some(published) => first.push(published),
            // Woken when that subscription may be quiet.
            None => return Poll::Pending,
        }
    }
    for (topic, before) in topics.iter().zip(first) {
        match topic.poll_quiet(cx, caller) {
            Some(published) if published == before => {}
            Some(_) => {
                // A handler published between the passes: look again, after
                // letting others run.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None => return Poll::Pending,
        }
    }
    Poll::Ready(())
}
