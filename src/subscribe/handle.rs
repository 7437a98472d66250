//! The [`SubscriptionHandle`] of a handler subscription.

use std::fmt;
use std::future::poll_fn;

use super::{Attachment, Detach};
use crate::event::Event;
use crate::id::SubscriptionId;
use crate::resume::Started;
use crate::stats::SubscriptionStats;

/// The handle of a handler subscription ([`HandlerBuilder::handler`](crate::HandlerBuilder::handler),
/// [`HandlerBuilder::sync`](crate::HandlerBuilder::sync)). Dropping it unsubscribes: the handler
/// finishes the event it is on, and what is still queued is discarded (and
/// counted). [`unsubscribe`](SubscriptionHandle::unsubscribe) drains first.
///
/// The handle does not name its event type, so handles of many topics fit in
/// one `Vec`.
#[must_use = "dropping the handle unsubscribes; keep it, or call .run_until_shutdown()"]
pub struct SubscriptionHandle {
    attachment: Box<dyn Detach>,
    detached: bool,
}

impl SubscriptionHandle {
    pub(crate) fn new<E: Event>(attachment: Attachment<E>) -> Self {
        SubscriptionHandle {
            attachment: Box::new(attachment),
            detached: false,
        }
    }

    /// Unsubscribes, waits until the handler has handled everything that was
    /// queued, and returns the subscription's final numbers. If this future
    /// is dropped early, the handler still drains the queue in the
    /// background, and [`Bus::shutdown`](crate::Bus::shutdown) waits for it.
    ///
    /// Called from inside the subscription's own handler, it cannot wait for
    /// that handler: it stops the subscription taking new events and returns
    /// at once; what is queued is still handled once the handler returns.
    pub async fn unsubscribe(mut self) -> SubscriptionStats {
        self.detached = true;
        self.attachment.detach(false);
        let own = crate::context::current().is_some_and(|r| r.subscription == self.id());
        if !own {
            poll_fn(|cx| self.attachment.subscription().poll_idle(cx)).await;
        }
        self.attachment.stats()
    }

    /// The subscription's numbers now.
    pub fn stats(&self) -> SubscriptionStats {
        self.attachment.stats()
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.attachment.info().id
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.attachment.info().name
    }

    /// Where it started ([`SubscribeBuilder::from`](crate::SubscribeBuilder::from)).
    pub fn started(&self) -> &Started {
        self.attachment.started()
    }

    /// Lets the subscription run until the bus shuts down, without holding
    /// its handle: dropping a handle unsubscribes (and `let _ =` drops it at
    /// once), this does not. The shutdown drains it and reports it like any
    /// other.
    ///
    /// ```
    /// # use tidings::{Bus, Event};
    /// # #[derive(Debug, Event)] #[event(topic = "audit.line")] struct AuditLine(String);
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().topic::<AuditLine>().build()?;
    /// bus.subscribe::<AuditLine>()
    ///     .name("audit")
    ///     .sync(|line| println!("{}", line.0))?
    ///     .run_until_shutdown();
    /// bus.publish(AuditLine("started".into())).await?;
    /// let report = bus.shutdown(std::time::Duration::from_secs(5)).await;
    /// let audit = report.subscriptions().find(|s| s.name == "audit").expect("listed");
    /// assert_eq!(audit.handled, 1);
    /// # Ok(()) }
    /// ```
    pub fn run_until_shutdown(mut self) {
        self.detached = true;
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if !self.detached {
            self.attachment.detach(true);
        }
    }
}

impl fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.attachment.info();
        f.debug_struct("SubscriptionHandle")
            .field("id", &info.id)
            .field("name", &info.name)
            .field("topic", &info.topic)
            .field("kind", &info.kind)
            .finish()
    }
}
