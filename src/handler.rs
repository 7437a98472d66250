//! Running handlers: async handlers as tokio tasks, sync handlers on threads
//! owned by the bus. Both catch errors and panics, count them, and go on.

use std::any::Any;
use std::error::Error;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures::FutureExt;

use crate::event::Envelope;
use crate::queue::{Outcome, Queue};
use crate::Event;

/// What a handler may return: `()` or `Result<(), Err>` with
/// `Err: Into<Box<dyn Error + Send + Sync>>`. An `Err` is counted as a
/// handler failure in the subscription's stats, with its message kept as
/// `last_error`.
pub trait HandlerResult: Send + 'static {
    /// The error, if the handler failed.
    fn into_result(self) -> Result<(), Box<dyn Error + Send + Sync>>;
}

impl HandlerResult for () {
    fn into_result(self) -> Result<(), Box<dyn Error + Send + Sync>> {
        Ok(())
    }
}

impl<Err> HandlerResult for Result<(), Err>
where
    Err: Into<Box<dyn Error + Send + Sync>> + Send + 'static,
{
    fn into_result(self) -> Result<(), Box<dyn Error + Send + Sync>> {
        self.map_err(Into::into)
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn outcome<R: HandlerResult>(run: std::thread::Result<R>) -> Outcome {
    match run {
        Ok(r) => match r.into_result() {
            Ok(()) => Outcome::Ok,
            Err(err) => Outcome::Failed(err.to_string()),
        },
        Err(payload) => Outcome::Panicked(panic_message(&*payload)),
    }
}

/// Starts `concurrency` tokio tasks that feed `queue` to `f`.
pub(crate) fn spawn_async<E, F, Fut>(
    runtime: &tokio::runtime::Handle,
    queue: &Arc<Queue<E>>,
    concurrency: usize,
    f: F,
) where
    E: Event,
    F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    let f = Arc::new(f);
    for consumer in 0..concurrency {
        let worker = Arc::clone(queue);
        let f = Arc::clone(&f);
        let task = runtime.spawn(async move {
            while let Some(env) = poll_fn(|cx| worker.poll_pop(cx, consumer)).await {
                let run = match catch_unwind(AssertUnwindSafe(|| f(env))) {
                    Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                    Err(payload) => Err(payload),
                };
                worker.finish(outcome(run));
            }
        });
        queue.add_abort_handle(task.abort_handle());
    }
}

/// Starts `concurrency` threads that feed `queue` to `f`. If a thread cannot
/// be started, the ones already started end when the queue is closed.
pub(crate) fn spawn_sync<E, F, R>(
    queue: &Arc<Queue<E>>,
    concurrency: usize,
    f: F,
) -> std::io::Result<()>
where
    E: Event,
    F: Fn(Envelope<E>) -> R + Send + Sync + 'static,
    R: HandlerResult,
{
    let f = Arc::new(f);
    for consumer in 0..concurrency {
        let queue = Arc::clone(queue);
        let f = Arc::clone(&f);
        std::thread::Builder::new()
            .name(format!("tidings:{}", queue.info.name).replace('\0', " "))
            .spawn(move || {
                while let Some(env) =
                    futures::executor::block_on(poll_fn(|cx| queue.poll_pop(cx, consumer)))
                {
                    queue.finish(outcome(catch_unwind(AssertUnwindSafe(|| f(env)))));
                }
            })?;
    }
    Ok(())
}
