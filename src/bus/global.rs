//! The process-wide bus, for code that cannot be handed one.

use std::fmt;
use std::sync::OnceLock;

use super::Bus;

/// [`set_global`](crate::set_global) was called when a global bus was already
/// set. Holds the bus that was not installed.
#[derive(thiserror::Error)]
#[error("a global bus is already set")]
pub struct AlreadySet(pub Bus);

impl fmt::Debug for AlreadySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AlreadySet(..)")
    }
}

static GLOBAL: OnceLock<Bus> = OnceLock::new();

/// Installs `bus` as the process-wide bus, for code that cannot be handed one.
///
/// ```
/// use tidings::{Bus, Event};
/// # #[derive(Event)] #[event(topic = "app.started")] struct Started;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // At start-up:
/// let bus = Bus::builder().topic::<Started>().build()?;
/// tidings::set_global(bus)?;
///
/// // Anywhere else, without being handed the bus:
/// tidings::global().publish(Started).await?;
/// assert!(tidings::set_global(Bus::builder().build()?).is_err(), "once per process");
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`AlreadySet`], holding `bus`, if a global bus was already installed; it
/// can be set once per process.
pub fn set_global(bus: Bus) -> Result<(), AlreadySet> {
    GLOBAL.set(bus).map_err(AlreadySet)
}

/// The process-wide bus.
///
/// # Panics
/// If [`set_global`] has not been called; use [`try_global`] where that can
/// happen.
#[track_caller]
pub fn global() -> &'static Bus {
    match GLOBAL.get() {
        Some(bus) => bus,
        None => panic!(
            "tidings::global() was called before tidings::set_global(bus); install the bus at start-up, or use tidings::try_global()"
        ),
    }
}

/// The process-wide bus, if one was installed.
pub fn try_global() -> Option<&'static Bus> {
    GLOBAL.get()
}
