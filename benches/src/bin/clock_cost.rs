//! The options for a publish's timestamp, measured: what one reading
//! costs, and how far each strays from the wall clock
//! (`SystemTime::now`), the clock every process shares, so timestamps of
//! two processes compare within their machines' clock sync plus this.
//!
//! - `SystemTime::now` (`Clock::Precise`, the default): the wall clock,
//!   through the vDSO.
//! - `CLOCK_REALTIME_COARSE` (`Clock::Coarse`): the wall clock at the last
//!   timer tick.
//! - an anchored monotonic clock: the wall clock read once per anchor
//!   period (per thread), `Instant::now` in between.
//! - an anchored cycle counter (`quanta`, TSC): the same with the
//!   calibrated counter in between, added without a division.
//!
//! Each returns a `SystemTime`, as a publish takes it.
//!
//! Each reading's cost is the best of 5 runs of 5M readings on one
//! thread; the error is the largest |option − SystemTime::now| over
//! `--secs` of readings taken back to back (so it includes the time
//! between the two reads, and any preemption between them: an upper
//! bound).
//!
//! Usage: clock_cost [--secs S] [--anchor-ms MS]

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidings_benches::arg;

fn coarse() -> SystemTime {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

thread_local! {
    /// (monotonic reference, wall clock at it)
    static MONO_ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
    /// (raw counter at the anchor, wall seconds and nanoseconds at it)
    static CYCLE_ANCHOR: Cell<Option<(u64, u64, u32)>> = const { Cell::new(None) };
}

fn anchored_mono(period: Duration) -> SystemTime {
    MONO_ANCHOR.with(|a| {
        let now = Instant::now();
        match a.get() {
            Some((at, wall)) if now.duration_since(at) < period => wall + now.duration_since(at),
            _ => {
                let wall = SystemTime::now();
                a.set(Some((Instant::now(), wall)));
                wall
            }
        }
    })
}

/// As a publish would take it: no division on the common path.
fn anchored_cycles(clock: &quanta::Clock, period_ns: u64) -> SystemTime {
    let raw = clock.raw();
    let anchored = CYCLE_ANCHOR.with(|a| {
        let (at, secs, nanos) = a.get()?;
        let since = clock.delta_as_nanos(at, raw);
        if since >= period_ns {
            return None;
        }
        let nanos = u64::from(nanos) + since;
        Some(if nanos >= 1_000_000_000 {
            (secs + 1, nanos - 1_000_000_000)
        } else {
            (secs, nanos)
        })
    });
    match anchored {
        Some((secs, nanos)) => UNIX_EPOCH + Duration::new(secs, nanos as u32),
        None => {
            let now = SystemTime::now();
            let wall = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            CYCLE_ANCHOR.with(|a| a.set(Some((clock.raw(), wall.as_secs(), wall.subsec_nanos()))));
            now
        }
    }
}

fn cost(f: &dyn Fn() -> SystemTime) -> f64 {
    let n = 5_000_000u64;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..n {
            black_box(f());
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

/// The largest |f() − SystemTime::now()| over `secs`, in µs, and the
/// 99.9th percentile.
fn error(f: &dyn Fn() -> SystemTime, secs: Duration) -> (f64, f64) {
    let end = Instant::now() + secs;
    let mut errors = Vec::new();
    while Instant::now() < end {
        for _ in 0..1000 {
            let a = f();
            let w = SystemTime::now();
            let e = w.duration_since(a).unwrap_or_else(|e| e.duration());
            errors.push(e.as_nanos() as u64);
        }
    }
    errors.sort_unstable();
    let p999 = errors[errors.len() * 999 / 1000] as f64 / 1e3;
    let max = errors.last().copied().unwrap_or(0) as f64 / 1e3;
    (max, p999)
}

fn main() {
    let secs = Duration::from_secs(arg("--secs", 3).max(1));
    let period = Duration::from_millis(arg("--anchor-ms", 10).max(1));
    let started = Instant::now();
    let clock = quanta::Clock::new();
    let calibration = started.elapsed();
    let period_ns = period.as_nanos() as u64;
    let options: [(&str, &dyn Fn() -> SystemTime); 4] = [
        ("SystemTime::now (Clock::Precise)", &SystemTime::now),
        ("CLOCK_REALTIME_COARSE (Clock::Coarse)", &coarse),
        ("anchored Instant::now", &|| anchored_mono(period)),
        ("anchored cycle counter (quanta)", &|| {
            anchored_cycles(&clock, period_ns)
        }),
    ];
    println!(
        "Publish timestamp options, one thread; anchors re-read the wall clock every {} ms; errors over {} s of back-to-back readings.",
        period.as_millis(),
        secs.as_secs()
    );
    println!(
        "clocksource: {}; quanta calibrated in {:.1} ms",
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default()
            .trim(),
        calibration.as_secs_f64() * 1e3
    );
    println!();
    println!(
        "| option | ns per reading | max error vs SystemTime::now (µs) | 99.9th percentile (µs) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, f) in options {
        let ns = cost(f);
        let (max, p999) = error(f, secs);
        println!("| {name} | {ns:.1} | {max:.1} | {p999:.2} |");
    }
}
