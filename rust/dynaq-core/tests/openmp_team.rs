//! Running parallel loops on a shared OpenMP team (`threads::share_openmp_team`), with stand-ins
//! for `GOMP_parallel`. A test binary of its own: the team is process-wide state.

use dynaq_core::threads::{
    for_each_index_on, set_num_threads, share_openmp_team, sharing_openmp_team, TEAM_BACKOFF_CALLS,
};
use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// `fn(data)` on the caller and `n - 1` scoped threads, which start `DELAY_MS` late.
extern "C" fn fake_gomp_parallel<const DELAY_MS: u64>(
    f: extern "C" fn(*mut c_void),
    data: *mut c_void,
    n: c_uint,
    _flags: c_uint,
) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let data = data as usize;
    std::thread::scope(|s| {
        for _ in 1..n {
            s.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(DELAY_MS));
                f(data as *mut c_void)
            });
        }
        f(data as *mut c_void);
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

    // Every index once, errors and panics reported.
    register(fake_gomp_parallel::<0>);
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

    // A team whose other threads start late (descheduled) makes the caller wait without helping:
    // the next calls run on the calling thread alone, then the team is tried again.
    register(fake_gomp_parallel::<5>);
    // Once any back-off left by the calls above has run out, a call goes to the slow team...
    let tries = (0..=TEAM_BACKOFF_CALLS)
        .take_while(|_| team_calls(1) == 0)
        .count();
    assert!(
        tries <= TEAM_BACKOFF_CALLS as usize,
        "the team was never tried"
    );
    // ... and backs the next ones off.
    assert_eq!(
        team_calls(TEAM_BACKOFF_CALLS as usize),
        0,
        "the team was not backed off"
    );
    assert_eq!(team_calls(1), 1, "the team was not tried again");

    // SAFETY: unregistering uses no address.
    unsafe { share_openmp_team(None) };
    assert!(!sharing_openmp_team());
    assert_eq!(team_calls(3), 0);
}
