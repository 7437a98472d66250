//! What an event becomes when its handler's attempts are used up: a
//! [`DeadLetter`], published on [`DEAD_LETTER_TOPIC`].

use crate::any::AnyEvent;
use crate::event::Event;
use crate::id::{EventId, SubscriptionId};

/// The topic dead letters are published on. Every bus registers it;
/// subscribe to it with [`Bus::dead_letters`](crate::Bus::dead_letters).
pub const DEAD_LETTER_TOPIC: &str = "tidings.dead_letters";

/// An event whose handler attempts were all used up, published on
/// [`DEAD_LETTER_TOPIC`]. Read them with
/// [`Bus::dead_letters`](crate::Bus::dead_letters).
///
/// ```
/// # use std::time::Duration;
/// # use tidings::{Bus, Event, RetryPolicy};
/// # #[derive(Debug, Event)] #[event(topic = "orders.created")] struct OrderCreated { id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().topic::<OrderCreated>().build()?;
/// let mut dead = bus.dead_letters().stream()?;
/// let _mailer = bus
///     .subscribe::<OrderCreated>()
///     .name("mailer")
///     .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(2))
///     .handler(|_| async { Err::<(), _>("smtp is down") })?;
/// bus.publish(OrderCreated { id: 7 }).await?;
/// let letter = dead.recv().await.expect("dead letter");
/// assert_eq!((letter.subscription.as_str(), letter.attempts), ("mailer", 2));
/// assert_eq!(letter.error, "smtp is down");
/// assert_eq!(letter.event.downcast_ref::<OrderCreated>().map(|o| o.id), Some(7));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The topic of the event.
    pub topic: &'static str,
    /// The event's id.
    pub event_id: EventId,
    /// The event's sequence number on its topic.
    pub seq: u64,
    /// The subscription whose handler gave up.
    pub subscription: String,
    /// Its id.
    pub subscription_id: SubscriptionId,
    /// Attempts made, all failed.
    pub attempts: u32,
    /// The last attempt's error (`panic: …` for a panic, `timed out after …`
    /// for a timeout).
    pub error: String,
    /// The event itself, type-erased; `event.downcast_ref::<E>()` gives it
    /// back typed.
    pub event: AnyEvent,
}

// Keeps compiler errors about a missing `Event` impl from suggesting this one.
#[diagnostic::do_not_recommend]
impl Event for DeadLetter {
    const TOPIC: &'static str = DEAD_LETTER_TOPIC;
}
