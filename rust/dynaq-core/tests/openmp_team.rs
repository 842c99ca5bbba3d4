//! Running parallel loops on a shared OpenMP team (`threads::share_openmp_team`), with stand-ins
//! for `GOMP_parallel` and a clock the test moves by hand, so that nothing here depends on how
//! fast a thread is scheduled. A test binary of its own: the team and the clock are process-wide
//! state.

use dynaq_core::threads::openmp::{set_clock, TEAM_BACKOFF_CALLS};
use dynaq_core::threads::{
    for_each_index_on, set_num_threads, share_openmp_team, sharing_openmp_team,
};
use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// Calls of a stand-in team.
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// The test's clock, in nanoseconds: it moves only when a stand-in team says so.
static NOW: AtomicU64 = AtomicU64::new(0);

fn test_clock() -> u64 {
    NOW.load(Ordering::SeqCst)
}

/// `fn(data)` on the caller and `n - 1` scoped threads, all at once (a team that helps).
extern "C" fn helping_team(
    f: extern "C" fn(*mut c_void),
    data: *mut c_void,
    n: c_uint,
    _flags: c_uint,
) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let data = data as usize;
    std::thread::scope(|s| {
        for _ in 1..n {
            s.spawn(move || f(data as *mut c_void));
        }
        f(data as *mut c_void);
    });
}

/// A team whose other threads arrive only after the caller has run out of work, and 5 ms later
/// on the test's clock: the caller waits without help (oversubscribed cores, as seen by the
/// back-off rule).
extern "C" fn late_team(
    f: extern "C" fn(*mut c_void),
    data: *mut c_void,
    n: c_uint,
    _flags: c_uint,
) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let data = data as usize;
    let caller_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 1..n {
            let caller_done = &caller_done;
            s.spawn(move || {
                while !caller_done.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                f(data as *mut c_void)
            });
        }
        f(data as *mut c_void);
        NOW.fetch_add(5_000_000, Ordering::SeqCst);
        caller_done.store(true, Ordering::Release);
    });
}

fn register(parallel: GompParallel) {
    // SAFETY: the address is a function with the `GOMP_parallel` signature and contract: it runs
    // `f(data)` on `n` threads, the caller among them, and returns when all have finished.
    unsafe { share_openmp_team(Some(parallel as usize)) };
}

/// Calls on the team during `n` calls of 8 trivial items.
fn team_calls(n: usize) -> usize {
    let before = CALLS.load(Ordering::Relaxed);
    for _ in 0..n {
        for_each_index_on::<()>(8, 3, true, |_| Ok(())).unwrap();
    }
    CALLS.load(Ordering::Relaxed) - before
}

#[test]
fn shared_team() {
    set_num_threads(4).unwrap();
    set_clock(Some(test_clock));

    // Every index once, errors and panics reported.
    register(helping_team);
    assert!(sharing_openmp_team());
    for n in [2usize, 3, 17, 1000] {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for_each_index_on::<()>(n, 3, true, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
    let r = for_each_index_on(100, 3, true, |i| if i == 37 { Err(i) } else { Ok(()) });
    assert_eq!(r, Err(37));
    let panicked = std::panic::catch_unwind(|| {
        for_each_index_on::<()>(64, 3, true, |i| {
            assert!(i != 5, "boom");
            Ok(())
        })
    });
    assert!(panicked.is_err());
    // `on_team = false` never uses it.
    let before = CALLS.load(Ordering::Relaxed);
    for_each_index_on::<()>(64, 3, false, |_| Ok(())).unwrap();
    assert_eq!(CALLS.load(Ordering::Relaxed), before);
    // A team that helps (no time passes on the test's clock) is never backed off.
    assert_eq!(
        team_calls(3 * TEAM_BACKOFF_CALLS as usize),
        3 * TEAM_BACKOFF_CALLS as usize
    );

    // A team that keeps the caller waiting without help: the call goes to it, then the next
    // calls run on the calling thread alone, then the team is tried again.
    register(late_team);
    assert_eq!(team_calls(1), 1, "the team was not tried");
    assert_eq!(
        team_calls(TEAM_BACKOFF_CALLS as usize),
        0,
        "the team was not backed off"
    );
    assert_eq!(team_calls(1), 1, "the team was not tried again");
    // That call backed the team off again; once the back-off has run out, a helping team gets
    // every call.
    assert_eq!(team_calls(TEAM_BACKOFF_CALLS as usize), 0);
    register(helping_team);
    assert_eq!(team_calls(5), 5);

    // SAFETY: unregistering uses no address.
    unsafe { share_openmp_team(None) };
    assert!(!sharing_openmp_team());
    assert_eq!(team_calls(3), 0);
    set_clock(None);
}
