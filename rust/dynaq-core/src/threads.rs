//! The rayon pool the kernels run on.
//!
//! One process-wide pool, sized by [`set_num_threads`] or `DYNAQ_NUM_THREADS`, defaulting to the
//! number of physical cores available to the process (SMT siblings share one core's int8 units,
//! so they add little to a compute-bound GEMM).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
/// wake on the development machine (`examples/wake_latency.rs`), longer than many calls, and a
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
/// a loop that does not go to it runs on the calling thread alone.
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
    let team = if helpers > 0 { openmp_parallel() } else { None };
    match (team, workers) {
        (Some(parallel), _) => {
            if on_team && team_not_backing_off() {
                run_on_openmp_team(parallel, helpers + 1, count, &run_items);
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

/// `GOMP_parallel(fn, data, num_threads, flags)`: runs `fn(data)` on a team of `num_threads`
/// (the caller is thread 0) and returns when all have finished. The GNU OpenMP entry point
/// (GCC >= 4.9); Intel's and LLVM's OpenMP runtimes export it too.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// The registered `GOMP_parallel` (0: none) and the process that registered it.
static OPENMP_PARALLEL: AtomicUsize = AtomicUsize::new(0);
static OPENMP_PID: AtomicU32 = AtomicU32::new(0);

/// Runs dynaq's multi-threaded GEMMs on the OpenMP team of a runtime already loaded in the
/// process (PyTorch's), or stops doing so (`None`).
///
/// Why: two thread pools on the same cores fight. After each parallel operation an OpenMP team
/// keeps its threads spinning for a while (GNU OpenMP's default), exactly when a model that
/// mixes PyTorch operations with dynaq layers calls dynaq; dynaq's worker then shares a core
/// with a spinning thread. A BERT-base-sized encoder on 2 cores ran 15% slower than on one
/// pool. On the team, the spinning thread does dynaq's work instead.
///
/// Only the registering process uses the team: after `fork` the child falls back to the rayon
/// pool (GNU OpenMP does not support use of a team across `fork`).
///
/// # Safety
/// `addr` must be the address of `GOMP_parallel` (the signature of [`GompParallel`]) of an
/// OpenMP runtime that stays loaded for the rest of the process.
pub unsafe fn share_openmp_team(addr: Option<usize>) {
    OPENMP_PID.store(std::process::id(), Ordering::Release);
    OPENMP_PARALLEL.store(addr.unwrap_or(0), Ordering::Release);
}

/// Whether multi-threaded GEMMs run on a shared OpenMP team in this process.
pub fn sharing_openmp_team() -> bool {
    openmp_parallel().is_some()
}

fn openmp_parallel() -> Option<GompParallel> {
    let addr = OPENMP_PARALLEL.load(Ordering::Acquire);
    if addr == 0 || OPENMP_PID.load(Ordering::Acquire) != std::process::id() {
        return None;
    }
    // SAFETY: a non-zero address was registered through `share_openmp_team`, whose contract is
    // that it is `GOMP_parallel` of a runtime that stays loaded.
    Some(unsafe { std::mem::transmute::<usize, GompParallel>(addr) })
}

/// Calls left that skip the team after one that waited too long for it (see
/// [`run_on_openmp_team`]).
static TEAM_BACKOFF: AtomicU32 = AtomicU32::new(0);
/// Calls that skip the team after a slow one.
pub const TEAM_BACKOFF_CALLS: u32 = 64;

fn team_not_backing_off() -> bool {
    let left = TEAM_BACKOFF.load(Ordering::Relaxed);
    if left == 0 {
        return true;
    }
    // Racy by design: concurrent callers may skip a call more or less.
    TEAM_BACKOFF.store(left - 1, Ordering::Relaxed);
    false
}

/// What each team thread runs: the shared work loop, with panics caught (they must not unwind
/// into C).
struct TeamJob<'a> {
    run_items: &'a (dyn Fn() -> usize + Sync),
    panicked: AtomicBool,
    caller: std::thread::ThreadId,
    /// When the calling thread ran out of work (nanoseconds after `start`), and the items it ran.
    caller_done_ns: AtomicU64,
    caller_items: AtomicUsize,
    start: std::time::Instant,
}

extern "C" fn team_entry(data: *mut c_void) {
    // SAFETY: `data` is the `TeamJob` that `run_on_openmp_team` keeps alive until
    // `GOMP_parallel` has returned, i.e. until every team thread has left this function.
    let job = unsafe { &*(data as *const TeamJob<'_>) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.run_items)) {
        Ok(ran) if std::thread::current().id() == job.caller => {
            let ns = job.start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            job.caller_done_ns.store(ns, Ordering::Relaxed);
            job.caller_items.store(ran, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(_) => job.panicked.store(true, Ordering::Release),
    }
}

/// Runs the `count` items on the team. Unlike dynaq's pool, an OpenMP team makes the caller wait
/// until every team thread has run: when the cores are oversubscribed (another busy process), a
/// descheduled team thread held a 40 us quantization for milliseconds and made 2-thread GEMMs
/// 1.3-5x slower than one thread. So when a call took longer than 90% of what the caller alone
/// would have needed at its own pace (`worked * count / caller_items`), and the wait was over
/// 100 us, the next [`TEAM_BACKOFF_CALLS`] calls run on the calling thread alone (which never
/// waits for anyone); then the team is tried again.
fn run_on_openmp_team(
    parallel: GompParallel,
    threads: usize,
    count: usize,
    run_items: &(dyn Fn() -> usize + Sync),
) {
    let job = TeamJob {
        run_items,
        panicked: AtomicBool::new(false),
        caller: std::thread::current().id(),
        caller_done_ns: AtomicU64::new(0),
        caller_items: AtomicUsize::new(0),
        start: std::time::Instant::now(),
    };
    let threads = c_uint::try_from(threads).unwrap_or(c_uint::MAX);
    // SAFETY: `parallel` is `GOMP_parallel` (registration contract). It calls `team_entry`
    // with `data` on each team thread and returns only when all of them have finished, so
    // `job` outlives every use; `team_entry` never unwinds. Flags 0: default binding.
    unsafe {
        parallel(
            team_entry,
            &job as *const TeamJob<'_> as *mut c_void,
            threads,
            0,
        )
    };
    let total = job.start.elapsed().as_nanos() as f64;
    let worked = job.caller_done_ns.load(Ordering::Relaxed) as f64;
    let ran = job.caller_items.load(Ordering::Relaxed).max(1) as f64;
    let alone = worked * count as f64 / ran;
    if total - worked > 100e3 && total > 0.9 * alone {
        TEAM_BACKOFF.store(TEAM_BACKOFF_CALLS, Ordering::Relaxed);
    }
    if job.panicked.load(Ordering::Acquire) {
        panic!("a dynaq thread panicked");
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
