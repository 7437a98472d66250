//! The one attempt loop every runner runs: wait for the circuit breaker,
//! take an event, attempt it, retry it after the policy's delay or give it
//! up as a dead letter; a panic in the runner's own code dead-letters the
//! event it held and the runner goes on.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;

use super::invoke::Invoke;
use super::HandlerPlan;
use crate::config::{PublishOptions, Settled};
use crate::dead_letter::DeadLetter;
use crate::event::Envelope;
use crate::event::Event;
use crate::outcome::{panic_message, Outcome};
use crate::telemetry::{self, Span};
use crate::topic::{Breaker, Final, Permit, SubscriptionState};

/// What comes after an attempt.
enum Next {
    Handled,
    /// Try again after this delay.
    Retry(Duration),
    /// The attempts are used up: publish this and count the event given up.
    GiveUp(DeadLetter),
}

/// Books an attempt's outcome: breaker, counters, and what comes next.
/// Inlined: left out of line, it costs a handler run about 35
/// instructions (the icount gate's `handler_c1`, 1.9 %).
#[inline]
fn after_attempt<E: Event>(
    subscription: &SubscriptionState<E>,
    plan: &HandlerPlan,
    env: &Envelope<E>,
    probe: bool,
    outcome: Outcome,
    took: Duration,
    span: &Span,
) -> Next {
    #[cfg(test)]
    fault::hit(&subscription.info.name);
    let ok = matches!(outcome, Outcome::Ok);
    if let Some(breaker) = &plan.breaker {
        subscription.breaker_changed(breaker.record(probe, ok));
    }
    let attempt = env.attempt();
    let policy = &plan.retry;
    // Counted with the failure, if it was one.
    let retry = attempt < policy.attempts();
    let error = subscription.attempted(env.id().get(), &outcome, took, retry);
    telemetry::record_run(span, &outcome, took);
    let Some(error) = error else {
        return Next::Handled;
    };
    if retry {
        let seed = env.id().get()
            ^ (u64::from(attempt) << 48)
            ^ subscription.info.id.get().rotate_left(24);
        return Next::Retry(policy.wait_after(attempt, seed));
    }
    Next::GiveUp(dead_letter(subscription, env, error))
}

fn dead_letter<E: Event>(
    subscription: &SubscriptionState<E>,
    env: &Envelope<E>,
    error: String,
) -> DeadLetter {
    DeadLetter {
        topic: E::TOPIC,
        event_id: env.id(),
        seq: env.seq(),
        subscription: subscription.info.name.to_string(),
        subscription_id: subscription.info.id,
        attempts: env.attempt(),
        error,
        event: env.copy_for_log(),
    }
}

/// Publishes a dead letter on the bus's dead-letter topic; whether it was
/// heard (reached a subscription, or is retained). One that was not is
/// logged once per subscription, and counted when the event is done.
async fn send_dead_letter<E>(
    subscription: &SubscriptionState<E>,
    plan: &HandlerPlan,
    letter: DeadLetter,
) -> bool {
    let (event_id, error) = (letter.event_id.get(), letter.error.clone());
    let topic = plan.dead_letters.as_deref();
    // The failed event caused it.
    let options = PublishOptions::new().caused(letter.event.cause_of_follow_ups());
    let receipt = match topic {
        Some(topic) => topic.publish(letter, &options).await.ok(),
        None => None,
    };
    let retained = topic.is_some_and(|t| t.config().retained() > 0);
    let heard = receipt.is_some_and(|r| r.enqueued > 0 || retained);
    if !heard {
        subscription.unheard(event_id, &error);
    }
    heard
}

/// Waits until the breaker (if any) lets an attempt run: `Some(true)` if it
/// is the probe, `None` if the queue was cut off meanwhile.
async fn permit<E, K: Invoke<E>>(
    subscription: &SubscriptionState<E>,
    breaker: Option<&Breaker>,
    kind: &K,
) -> Option<bool> {
    let Some(breaker) = breaker else {
        return Some(false);
    };
    loop {
        let (permit, change) = poll_fn(|cx| breaker.poll_permit(cx)).await;
        subscription.breaker_changed(change);
        match permit {
            Permit::Go => return Some(false),
            Permit::Probe => return Some(true),
            Permit::WaitUntil(until) => {
                let wait = until.saturating_duration_since(tokio::time::Instant::now());
                if !kind.sleep(subscription, wait).await {
                    return None;
                }
            }
            Permit::WaitProbe => {}
        }
    }
}

/// The event a runner works on, as far as a panic or a cancellation needs
/// to know. Dropped before its event is done (the runner's task was
/// cancelled at the shutdown deadline, or the deadline cut a wait to
/// retry), it books the run as cancelled: the run is over, and counted
/// once.
struct Holding<'a, E> {
    subscription: &'a SubscriptionState<E>,
    probe: bool,
    /// `done` was called: the event is accounted for.
    finished: bool,
}

impl<E> Drop for Holding<'_, E> {
    fn drop(&mut self) {
        if !self.finished {
            self.subscription.cancelled();
        }
    }
}

/// Every attempt at one event: how it ended, or `None` if the queue was
/// cut off while it waited to retry (the runner stops, the run is left
/// unfinished). The caller books the end once it has let go of the event,
/// so that whoever sees the run done also sees its `on_done` run.
async fn attempts<E: Event, K: Invoke<E>>(
    subscription: &SubscriptionState<E>,
    plan: &HandlerPlan,
    kind: &K,
    mut env: Envelope<E>,
    holding: &mut Holding<'_, E>,
) -> Option<Final> {
    let limit = plan.timeout;
    let breaker = plan.breaker.as_deref();
    loop {
        // The run's span closes at the end of this block, before the run
        // counts as done, so whoever waits for the subscription to drain
        // sees it closed.
        let next = {
            let span = telemetry::handler_span(
                &subscription.info,
                env.id().get(),
                env.seq(),
                env.attempt(),
                env.inner.meta.as_deref(),
            );
            let (outcome, took) = kind.invoke(subscription, limit, env.clone(), &span).await;
            after_attempt(
                subscription,
                plan,
                &env,
                holding.probe,
                outcome,
                took,
                &span,
            )
        };
        match next {
            Next::Handled => {
                env.inner.settle(Settled::Handled);
                return Some(Final::Handled);
            }
            Next::GiveUp(letter) => {
                let error = letter.error.clone();
                let heard = send_dead_letter(subscription, plan, letter).await;
                env.inner.dead_lettered(&error);
                return Some(Final::DeadLettered { heard });
            }
            Next::Retry(delay) => {
                if !kind.sleep(subscription, delay).await {
                    return None;
                }
                match permit(subscription, breaker, kind).await {
                    Some(probe) => holding.probe = probe,
                    None => return None,
                }
                env = env.for_attempt(env.attempt().saturating_add(1));
            }
        }
    }
}

/// The runner's own code failed while it held `env`: the event becomes a
/// dead letter naming the failure, and is done (booked by the caller).
async fn give_up<E: Event>(
    subscription: &SubscriptionState<E>,
    plan: &HandlerPlan,
    env: &Envelope<E>,
    probe: bool,
    message: &str,
) -> Final {
    subscription.runner_failed(Some(env.id().get()), message);
    if probe {
        if let Some(breaker) = &plan.breaker {
            subscription.breaker_changed(breaker.record(true, false));
        }
    }
    let error = format!("runner failed: {message}");
    let letter = dead_letter(subscription, env, error.clone());
    let heard = AssertUnwindSafe(send_dead_letter(subscription, plan, letter))
        .catch_unwind()
        .await
        .unwrap_or(false);
    env.inner.dead_lettered(&error);
    Final::DeadLettered { heard }
}

/// A runner's next event. Runners take part in tokio's cooperative
/// scheduling: each event spends a unit of the task's budget, and a runner
/// that spent it all yields before it takes more, so that a runner whose
/// queue never runs dry still lets the other tasks of its worker run (its
/// handler may well never wait). Outside a runtime (sync runners) there is
/// no budget. Streams do not spend budget: their reader's task is the
/// application's (`tokio::task::coop::cooperative` wraps a `recv` that
/// should). A blocking runner gives its worker up after a run when other
/// runners wait for one ([`Invoke::poll_turn`]).
fn take<E, K: Invoke<E>>(
    subscription: &SubscriptionState<E>,
    kind: &K,
    cx: &mut Context<'_>,
    consumer: usize,
) -> Poll<Option<Envelope<E>>> {
    std::task::ready!(kind.poll_turn(cx));
    let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
    let taken = subscription.poll_pop(cx, consumer);
    if taken.is_ready() {
        coop.made_progress();
    }
    taken
}

/// One runner: takes events from `subscription` until it is closed and drained.
pub(super) async fn run<E: Event, K: Invoke<E>>(
    subscription: Arc<SubscriptionState<E>>,
    plan: Arc<HandlerPlan>,
    kind: Arc<K>,
    consumer: usize,
) {
    let breaker = plan.breaker.as_deref();
    loop {
        let taken = AssertUnwindSafe(async {
            let probe = permit(&subscription, breaker, &*kind).await?;
            let Some(env) = poll_fn(|cx| take(&subscription, &*kind, cx, consumer)).await else {
                if probe {
                    breaker.inspect(|b| b.release_probe());
                }
                return None;
            };
            Some((env, probe))
        })
        .catch_unwind()
        .await;
        let (env, probe) = match taken {
            Ok(Some(taken)) => taken,
            Ok(None) => return,
            Err(panic) => {
                // Between events: nothing is held. Count it, and do not spin
                // if it keeps failing.
                subscription.runner_failed(None, &panic_message(&*panic));
                if !kind.sleep(&subscription, Duration::from_millis(10)).await {
                    return;
                }
                continue;
            }
        };
        let mut holding = Holding {
            subscription: &subscription,
            probe,
            finished: false,
        };
        let went = AssertUnwindSafe(attempts(
            &subscription,
            &plan,
            &*kind,
            env.clone(),
            &mut holding,
        ))
        .catch_unwind()
        .await;
        let end = match went {
            Ok(Some(end)) => end,
            Ok(None) => return,
            Err(panic) => {
                let message = panic_message(&*panic);
                give_up(&subscription, &plan, &env, holding.probe, &message).await
            }
        };
        // The event is let go of before the run counts as done: its
        // `on_done` has run by the time anyone sees the subscription idle.
        holding.finished = true;
        drop(env);
        subscription.done(end);
    }
}

/// Fault injection for the crate's own tests: makes the runner's code panic
/// after an attempt, as a bug in it would.
#[cfg(test)]
pub(super) mod fault {
    use std::sync::Mutex;

    static ARMED: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

    /// The next `times` attempts of `subscription` end in a runner panic.
    #[cfg(feature = "derive")]
    pub(crate) fn arm(subscription: &str, times: u32) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        armed.push((subscription.to_owned(), times));
    }

    pub(crate) fn hit(subscription: &str) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, times)) = armed
            .iter_mut()
            .find(|(name, times)| name == subscription && *times > 0)
        {
            *times -= 1;
            drop(armed);
            panic!("injected runner fault");
        }
    }
}
