//! The GIL: every kernel call releases it through [`detach`], the one place that does.

use pyo3::prelude::*;

/// Runs `f` (a kernel call) with the GIL released. Tests can hold calls at this point
/// ([`hold_detached_calls`]) to prove that the GIL really is released during them.
pub fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(|| {
        gate::wait_while_held();
        f()
    })
}

pub use gate::{held_calls, hold_detached_calls};

/// A test seam: while held, every call that released the GIL waits before computing. A test
/// holds calls, starts one in a thread, and waits (in Python) until it is waiting here, which
/// can only happen if the GIL was released; no test depends on how fast a thread runs.
mod gate {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    static HELD: AtomicBool = AtomicBool::new(false);
    static WAITING: AtomicUsize = AtomicUsize::new(0);

    pub fn wait_while_held() {
        if !HELD.load(Ordering::Acquire) {
            return;
        }
        WAITING.fetch_add(1, Ordering::AcqRel);
        while HELD.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }

    /// Holds (`true`) or releases (`false`) the calls that released the GIL.
    #[pyo3::pyfunction]
    #[pyo3(name = "_hold_detached_calls")]
    pub fn hold_detached_calls(hold: bool) {
        HELD.store(hold, Ordering::Release);
    }

    /// How many calls are waiting, GIL released, for [`hold_detached_calls`]`(False)`.
    #[pyo3::pyfunction]
    #[pyo3(name = "_held_calls")]
    pub fn held_calls() -> usize {
        WAITING.load(Ordering::Acquire)
    }
}
