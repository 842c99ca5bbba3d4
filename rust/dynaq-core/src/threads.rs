//! The rayon pool the kernels run on.
//!
//! One process-wide pool, sized by [`set_num_threads`] or `DYNAQ_NUM_THREADS`, defaulting to the
//! number of physical cores available to the process (SMT siblings share one core's int8 units,
//! so they add little to a compute-bound GEMM).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicUsize, Ordering};
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
pub fn for_each_index<E: Send>(
    count: usize,
    max_helpers: usize,
    f: impl Fn(usize) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<E>> = Mutex::new(None);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            break;
        }
        if let Err(e) = f(i) {
            // Stop handing out work and keep the first error.
            next.store(count, Ordering::Relaxed);
            failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
            break;
        }
    };
    let pool = pool().ok();
    let helpers = match pool.as_ref().and_then(|p| p.workers.as_ref()) {
        Some(w) => max_helpers
            .min(w.current_num_threads())
            .min(count.saturating_sub(1)),
        None => 0,
    };
    match pool.as_ref().and_then(|p| p.workers.as_ref()) {
        Some(workers) if helpers > 0 => workers.in_place_scope(|s| {
            for _ in 0..helpers {
                s.spawn(|_| work());
            }
            work();
        }),
        _ => work(),
    }
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs `f(i, item)` for every item of `items`, spread like [`for_each_index`]; the items are
/// typically disjoint mutable chunks of the outputs. With no helpers it is a plain loop (no
/// allocation, no synchronization).
pub fn for_each_item<I: Send, E: Send>(
    items: impl IntoIterator<Item = I>,
    max_helpers: usize,
    f: impl Fn(usize, I) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    if max_helpers == 0 || num_threads() <= 1 {
        return items
            .into_iter()
            .enumerate()
            .try_for_each(|(i, it)| f(i, it));
    }
    let slots: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    for_each_index(slots.len(), max_helpers, |i| {
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
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list("0,4"), 2);
        assert_eq!(count_cpu_list("0-3"), 4);
        assert_eq!(count_cpu_list("0-1,8-9"), 4);
    }
}
