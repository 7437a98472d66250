//! The synchronization types of the ring (`topic/ring/`), the one place
//! where tidings carries state in atomics rather than under a lock. In the
//! unit tests built with `--cfg tidings_loom` they are loom's, so that the loom models in
//! `topic/ring/loom_models.rs` explore every interleaving of that code (the way tokio
//! swaps its own `loom` facade in); otherwise they are std's and
//! parking_lot's, with the same small API.
//!
//! ```text
//! RUSTFLAGS="--cfg tidings_loom" cargo test -p tidings --lib --release loom
//! ```

#[cfg(not(all(test, tidings_loom)))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[cfg(all(test, tidings_loom))]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A cell whose value is shared by hand-written synchronization: `with`
/// and `with_mut` hand out raw pointers, which only the ring dereferences,
/// each time under a `// SAFETY:` comment. loom's version checks that no
/// two accesses race.
#[cfg(not(all(test, tidings_loom)))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(all(test, tidings_loom)))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(all(test, tidings_loom))]
pub(crate) use loom::cell::UnsafeCell;

/// A mutex with parking_lot's API (no poisoning).
#[cfg(not(all(test, tidings_loom)))]
pub(crate) use parking_lot::Mutex;

#[cfg(all(test, tidings_loom))]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(all(test, tidings_loom))]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits a moment for another thread to finish a few instructions (a take
/// of the ring that is under way): spins, then yields its time slice.
#[cfg(not(all(test, tidings_loom)))]
pub(crate) fn spin(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// loom's yield, so that the model lets the other thread run.
#[cfg(all(test, tidings_loom))]
pub(crate) fn spin(_spins: &mut u32) {
    loom::thread::yield_now();
}
