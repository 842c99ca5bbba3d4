//! Running dynaq's parallel loops on an OpenMP team that another library (PyTorch) already has,
//! instead of on dynaq's own pool. Off unless the bindings call [`share_openmp_team`]; the
//! Python package does so only when asked (`dynaq.torch.share_torch_threads()`).
//!
//! Why: two thread pools on the same cores fight. After each parallel operation an OpenMP team
//! keeps its threads spinning for a while (GNU OpenMP's default), exactly when a model that
//! mixes PyTorch operations with dynaq layers calls dynaq; dynaq's worker then shares a core with
//! a spinning thread. A BERT-base-sized encoder on 2 cores ran 15% slower than on one pool. On
//! the team, the spinning thread does dynaq's work instead.
//!
//! The catch: unlike dynaq's pool, an OpenMP team makes the caller wait until every team thread
//! has run. When the cores are oversubscribed (another busy process), a descheduled team thread
//! held a 40 us quantization for milliseconds and made 2-thread GEMMs 1.3-5x slower than one
//! thread. So a call that the team kept waiting without help ([`TeamCall::kept_caller_waiting`])
//! sends the next [`TEAM_BACKOFF_CALLS`] calls to the calling thread alone. The rule reads a
//! clock that tests replace ([`set_clock`]), so that it is tested without depending on how fast
//! any thread is scheduled.

use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};

/// `GOMP_parallel(fn, data, num_threads, flags)`: runs `fn(data)` on a team of `num_threads`
/// (the caller is thread 0) and returns when all have finished. The GNU OpenMP entry point
/// (GCC >= 4.9); Intel's and LLVM's OpenMP runtimes export it too.
pub type GompParallel =
    unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// The registered `GOMP_parallel` (0: none) and the process that registered it.
static PARALLEL: AtomicUsize = AtomicUsize::new(0);
static PID: AtomicU32 = AtomicU32::new(0);

/// Runs dynaq's multi-threaded loops on the OpenMP team of a runtime already loaded in the
/// process (PyTorch's), or stops doing so (`None`).
///
/// Only the registering process uses the team: after `fork` the child falls back to the rayon
/// pool (GNU OpenMP does not support use of a team across `fork`).
///
/// # Safety
/// `addr` must be the address of `GOMP_parallel` (the signature of [`GompParallel`]) of an
/// OpenMP runtime that stays loaded for the rest of the process.
pub unsafe fn share_openmp_team(addr: Option<usize>) {
    PID.store(std::process::id(), Ordering::Release);
    PARALLEL.store(addr.unwrap_or(0), Ordering::Release);
}

/// Whether multi-threaded loops run on a shared OpenMP team in this process.
pub fn sharing_openmp_team() -> bool {
    team().is_some()
}

/// The registered team's entry point, in the process that registered it.
pub(super) fn team() -> Option<GompParallel> {
    let addr = PARALLEL.load(Ordering::Acquire);
    if addr == 0 || PID.load(Ordering::Acquire) != std::process::id() {
        return None;
    }
    // SAFETY: a non-zero address was registered through `share_openmp_team`, whose contract is
    // that it is `GOMP_parallel` of a runtime that stays loaded.
    Some(unsafe { std::mem::transmute::<usize, GompParallel>(addr) })
}

// ---------------------------------------------------------------------------------------------
// The back-off rule.
// ---------------------------------------------------------------------------------------------

/// Calls that skip the team after one that the team kept waiting.
pub const TEAM_BACKOFF_CALLS: u32 = 64;
/// A wait after the caller ran out of work shorter than this is never a reason to back off:
/// waking a sleeping team thread alone takes ~30 us.
const PATIENCE_NS: u64 = 100_000;

/// Calls left that skip the team.
static BACKOFF: AtomicU32 = AtomicU32::new(0);

/// Whether the next call may go to the team (counting down a back-off otherwise).
pub(super) fn team_not_backing_off() -> bool {
    let left = BACKOFF.load(Ordering::Relaxed);
    if left == 0 {
        return true;
    }
    // Racy by design: concurrent callers may skip a call more or less.
    BACKOFF.store(left - 1, Ordering::Relaxed);
    false
}

/// The times of one call on the team, read from the clock ([`set_clock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeamCall {
    /// Nanoseconds from handing the call to the team until the team returned.
    pub total_ns: u64,
    /// Nanoseconds until the calling thread found no more items to take.
    pub caller_busy_ns: u64,
    /// Items of the call.
    pub items: usize,
    /// Items the calling thread ran itself.
    pub caller_items: usize,
}

impl TeamCall {
    /// Whether the team kept the caller waiting without helping: it waited more than 100 us
    /// after running out of work, and the whole call took more than 90% of what the caller
    /// alone would have needed at its own pace (`caller_busy * items / caller_items`).
    pub fn kept_caller_waiting(&self) -> bool {
        let waited = self.total_ns.saturating_sub(self.caller_busy_ns);
        let alone =
            self.caller_busy_ns as f64 * self.items as f64 / self.caller_items.max(1) as f64;
        waited > PATIENCE_NS && self.total_ns as f64 > 0.9 * alone
    }
}

/// The clock of the back-off rule; `None` is the monotonic clock of the process.
static CLOCK: RwLock<Option<fn() -> u64>> = RwLock::new(None);

/// Replaces the clock the back-off rule reads (nanoseconds, monotonic) with `clock`, or restores
/// the real one (`None`). For tests, which then decide how long each call "took".
#[doc(hidden)]
pub fn set_clock(clock: Option<fn() -> u64>) {
    *CLOCK.write().unwrap_or_else(|e| e.into_inner()) = clock;
}

fn now_ns() -> u64 {
    if let Some(clock) = *CLOCK.read().unwrap_or_else(|e| e.into_inner()) {
        return clock();
    }
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Running a loop on the team.
// ---------------------------------------------------------------------------------------------

/// What each team thread runs: the shared work loop, with panics caught (they must not unwind
/// into C).
struct TeamJob<'a> {
    run_items: &'a (dyn Fn() -> usize + Sync),
    panicked: AtomicBool,
    caller: std::thread::ThreadId,
    /// Clock reading when the calling thread ran out of items, and how many it ran.
    caller_done_ns: AtomicU64,
    caller_items: AtomicUsize,
}

extern "C" fn team_entry(data: *mut c_void) {
    // SAFETY: `data` is the `TeamJob` that `run_on_team` keeps alive until `GOMP_parallel` has
    // returned, i.e. until every team thread has left this function.
    let job = unsafe { &*(data as *const TeamJob<'_>) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.run_items)) {
        Ok(ran) if std::thread::current().id() == job.caller => {
            job.caller_done_ns.store(now_ns(), Ordering::Relaxed);
            job.caller_items.store(ran, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(_) => job.panicked.store(true, Ordering::Release),
    }
}

/// Runs `run_items` (the shared loop over `count` items; returns how many items the thread that
/// ran it took) on `threads` team threads, the caller among them, then applies the back-off
/// rule to the call.
pub(super) fn run_on_team(
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
    };
    let threads = c_uint::try_from(threads).unwrap_or(c_uint::MAX);
    let start = now_ns();
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
    let call = TeamCall {
        total_ns: now_ns().saturating_sub(start),
        caller_busy_ns: job
            .caller_done_ns
            .load(Ordering::Relaxed)
            .saturating_sub(start),
        items: count,
        caller_items: job.caller_items.load(Ordering::Relaxed),
    };
    if call.kept_caller_waiting() {
        BACKOFF.store(TEAM_BACKOFF_CALLS, Ordering::Relaxed);
    }
    if job.panicked.load(Ordering::Acquire) {
        panic!("a dynaq thread panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::TeamCall;

    fn call(total_us: u64, busy_us: u64, items: usize, caller_items: usize) -> TeamCall {
        TeamCall {
            total_ns: total_us * 1000,
            caller_busy_ns: busy_us * 1000,
            items,
            caller_items,
        }
    }

    #[test]
    fn back_off_rule() {
        // The caller ran everything, then waited 5 ms for a team thread: back off.
        assert!(call(5_000, 0, 8, 8).kept_caller_waiting());
        assert!(call(5_100, 100, 8, 8).kept_caller_waiting());
        // A short wait is never a reason (waking a thread alone takes ~30 us).
        assert!(!call(100, 0, 8, 8).kept_caller_waiting());
        assert!(!call(1_090, 1_000, 8, 8).kept_caller_waiting());
        // The team helped: half the items in 500 us, the whole call 700 us against 1 ms alone.
        assert!(!call(700, 500, 8, 4).kept_caller_waiting());
        // It waited 400 us but the call still took under 90% of the caller's pace alone.
        assert!(!call(1_200, 800, 16, 8).kept_caller_waiting());
        // Above 90% of the caller's pace alone, after a long wait: the team did not help.
        assert!(call(1_500, 800, 16, 8).kept_caller_waiting());
        // A clock that went backwards (or a caller that never recorded) never panics.
        let odd = TeamCall {
            total_ns: 0,
            caller_busy_ns: u64::MAX,
            items: 0,
            caller_items: 0,
        };
        assert!(!odd.kept_caller_waiting());
    }
}
