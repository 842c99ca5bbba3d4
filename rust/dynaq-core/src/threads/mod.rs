//! The threads the kernels run on: one process-wide rayon pool, or a shared OpenMP team.
//!
//! The pool is sized by [`set_num_threads`] or `DYNAQ_NUM_THREADS`, defaulting to the number of
//! physical cores available to the process (SMT siblings share one core's int8 units, so they
//! add little to a compute-bound GEMM). The calling thread always works too, and never waits
//! for a worker that has not started ([`for_each_index`]). [`openmp`] holds the alternative:
//! another library's OpenMP team, used only when the bindings register one.

pub mod openmp;

pub use openmp::{share_openmp_team, sharing_openmp_team};

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Logical CPUs this process may run on, divided by the SMT width of cpu0 (Linux; elsewhere the
/// logical count).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let smt = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
        .ok()
        .map(|s| count_cpu_list(s.trim()))
        .filter(|&n| n >= 1)
        .unwrap_or(1);
    (logical / smt).max(1)
}

/// Counts the CPUs of a Linux CPU list such as `0,4` or `0-1`.
fn count_cpu_list(s: &str) -> usize {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

fn default_threads() -> usize {
    std::env::var("DYNAQ_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or_else(physical_cores)
}

/// The pool holds `threads - 1` workers: the calling thread always takes part in the work
/// (see [`for_each_index`]), so it never sleeps while work waits for a worker to wake up.
struct Pool {
    threads: usize,
    workers: Option<ThreadPool>,
}

fn build(n: usize) -> Result<Arc<Pool>> {
    let workers = if n > 1 {
        Some(
            ThreadPoolBuilder::new()
                .num_threads(n - 1)
                .thread_name(|i| format!("dynaq-{i}"))
                .build()
                .map_err(|e| Error::Value(format!("cannot start {} threads: {e}", n - 1)))?,
        )
    } else {
        None
    };
    Ok(Arc::new(Pool {
        threads: n,
        workers,
    }))
}

static POOL: RwLock<Option<Arc<Pool>>> = RwLock::new(None);

fn pool() -> Result<Arc<Pool>> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(p.clone());
    }
    let mut w = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = w.as_ref() {
        return Ok(p.clone());
    }
    let p = build(default_threads())?;
    *w = Some(p.clone());
    Ok(p)
}

/// Threads the kernels use (the calling thread included).
pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.threads)
}

/// Sets the number of threads (at least 1); calls already running keep their pool.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > 4096 {
        return Err(Error::Value(format!(
            "num_threads must be between 1 and 4096, got {n}"
        )));
    }
    let p = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    Ok(())
}

/// Runs `f(i)` for every `i < count`, on the calling thread and on up to `max_helpers` pool
/// workers, each taking the next index as it becomes free (so a late-waking worker only takes
/// what is left). Returns the first error (the other indices may or may not have run).
///
/// The caller never waits for a worker that has not started: an idle worker takes 20-35 us to
/// wake on the development machine (`benches/rust/wake_latency.rs`), longer than many calls, and a
/// scope that waited for it made 2-thread calls of ~100 us slower than 1-thread ones. Workers
/// join through a [`Gate`] instead: once the caller has run out of work it closes the gate,
/// waits only for the workers inside (each finishing the index it holds), and returns; a worker
/// that arrives later finds the gate closed and touches nothing.
pub fn for_each_index<E: Send>(
    count: usize,
    max_helpers: usize,
    f: impl Fn(usize) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    for_each_index_on(count, max_helpers, false, f)
}

/// [`for_each_index`], run on a shared OpenMP team instead when `on_team` is set and one is
/// registered ([`share_openmp_team`]); for work long enough (tens of microseconds) that waiting
/// at the team's closing barrier for a sleeping thread costs little. While a team is shared,
/// a loop that does not go to it (or that the back-off rule of [`openmp`] keeps off it) runs on
/// the calling thread alone.
pub fn for_each_index_on<E: Send>(
    count: usize,
    max_helpers: usize,
    on_team: bool,
    f: impl Fn(usize) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<E>> = Mutex::new(None);
    // The shared loop; returns how many items this thread ran.
    let run_items = || {
        let mut ran = 0;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                break ran;
            }
            ran += 1;
            if let Err(e) = f(i) {
                // Stop handing out work and keep the first error.
                next.store(count, Ordering::Relaxed);
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                break ran;
            }
        }
    };
    let work = || {
        run_items();
    };
    let pool = pool().ok();
    let workers = pool.as_ref().and_then(|p| p.workers.as_ref());
    let helpers = workers.map_or(0, |w| {
        max_helpers
            .min(w.current_num_threads())
            .min(count.saturating_sub(1))
    });
    let team = if helpers > 0 { openmp::team() } else { None };
    match (team, workers) {
        (Some(parallel), _) => {
            if on_team && openmp::team_not_backing_off() {
                openmp::run_on_team(parallel, helpers + 1, count, &run_items);
            } else {
                // With a shared team, dynaq's own workers stay asleep: a third busy thread on
                // the cores is what sharing avoids. Short loops run on the caller alone.
                work();
            }
        }
        (None, Some(workers)) if helpers > 0 => {
            let work_ref: &(dyn Fn() + Sync) = &work;
            // SAFETY: only the lifetime is erased. The pointer is dereferenced only by workers
            // that entered the gate before it closed, and `_closer` (dropped before `work` and
            // before this function returns or unwinds) closes the gate and waits until every
            // such worker has left.
            let erased: *const (dyn Fn() + Sync + 'static) = unsafe {
                std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync)>(
                    work_ref,
                )
            };
            let gate = Arc::new(Gate {
                state: AtomicUsize::new(0),
                work: erased,
                panicked: AtomicBool::new(false),
            });
            let closer = CloseOnDrop(&gate);
            for _ in 0..helpers {
                let g = Arc::clone(&gate);
                workers.spawn(move || g.run());
            }
            work();
            drop(closer);
            if gate.panicked.load(Ordering::Acquire) {
                panic!("a dynaq worker thread panicked");
            }
        }
        _ => work(),
    }
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Admission of late-starting workers to one call's work (see [`for_each_index`]).
///
/// `state` holds [`CLOSED`] and the number of workers inside.
struct Gate {
    state: AtomicUsize,
    work: *const (dyn Fn() + Sync),
    panicked: AtomicBool,
}

const CLOSED: usize = 1 << (usize::BITS - 1);

// SAFETY: `work` points to a `Sync` closure and is only called by workers admitted while the
// calling thread keeps it alive (the gate protocol); everything else is atomic.
unsafe impl Send for Gate {}
// SAFETY: as above.
unsafe impl Sync for Gate {}

impl Gate {
    /// A worker's part: enter unless closed, run the shared loop, leave.
    fn run(&self) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & CLOSED != 0 {
                return;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        let _leave = LeaveOnDrop(self);
        // SAFETY: this worker entered before the gate closed, so the caller is still inside
        // `for_each_index`, waiting for it to leave: the closure is alive.
        let work = unsafe { &*self.work };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
            self.panicked.store(true, Ordering::Release);
        }
    }
}

/// Leaves the gate when a worker is done (also when its work panicked).
struct LeaveOnDrop<'a>(&'a Gate);

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes the gate and waits for the workers inside; runs on return and on unwinding alike.
struct CloseOnDrop<'a>(&'a Gate);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.0.state.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED != 0 {
            // Workers inside are finishing one work item each (microseconds).
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs `f(i, item)` for every item of `items`, spread like [`for_each_index`]; the items are
/// typically disjoint mutable chunks of the outputs. With no helpers it is a plain loop (no
/// allocation, no synchronization).
/// `on_team` as for [`for_each_index_on`].
pub fn for_each_item<I: Send, E: Send>(
    items: impl IntoIterator<Item = I>,
    max_helpers: usize,
    on_team: bool,
    f: impl Fn(usize, I) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    if max_helpers == 0 || num_threads() <= 1 {
        return items
            .into_iter()
            .enumerate()
            .try_for_each(|(i, it)| f(i, it));
    }
    let slots: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    for_each_index_on(slots.len(), max_helpers, on_team, |i| {
        let item = slots[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("each index is handed out once");
        f(i, item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for_each_index::<()>(hits.len(), 8, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        let r = for_each_index(100, 8, |i| if i == 37 { Err(i) } else { Ok(()) });
        assert_eq!(r, Err(37));
    }

    #[test]
    fn concurrent_callers_each_get_every_index_once() {
        // Several threads share the pool; late workers must never touch a finished call.
        let callers: Vec<_> = (0..6)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let n = 1 + (c * 7 + round) % 40;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        for_each_index::<()>(n, 4, |i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        })
                        .unwrap();
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list("0,4"), 2);
        assert_eq!(count_cpu_list("0-3"), 4);
        assert_eq!(count_cpu_list("0-1,8-9"), 4);
    }
}
