//! The rayon pool the kernels run on.
//!
//! One process-wide pool, sized by [`set_num_threads`] or `DYNAQ_NUM_THREADS`, defaulting to the
//! number of physical cores available to the process (SMT siblings share one core's int8 units,
//! so they add little to a compute-bound GEMM).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

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

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("dynaq-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Value(format!("cannot start {n} threads: {e}")))
}

fn pool() -> Result<Arc<ThreadPool>> {
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

/// Threads the kernels use.
pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
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

/// Runs `f` inside the pool (so that rayon calls in it use the pool's threads).
pub fn install<R: Send>(f: impl FnOnce(usize) -> R + Send) -> R {
    match pool() {
        Ok(p) => {
            let n = p.current_num_threads();
            p.install(move || f(n))
        }
        Err(_) => f(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list("0,4"), 2);
        assert_eq!(count_cpu_list("0-3"), 4);
        assert_eq!(count_cpu_list("0-1,8-9"), 4);
    }
}
