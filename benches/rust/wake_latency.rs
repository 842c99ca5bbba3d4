//! How long an idle rayon worker takes to start a job handed to it: the floor under which a
//! second thread cannot help a call (the calling thread has finished before the worker starts).
//!
//! ```text
//! cargo bench -p dynaq-core --bench wake_latency
//! ```
//!
//! Prints the median and 90th percentile of the delay between `spawn` and the job starting, after
//! gaps of 0 (back to back), 20 us, 200 us and 2 ms of idleness.

use std::time::{Duration, Instant};

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for gap_us in [0u64, 20, 200, 2000] {
        let mut delays: Vec<f64> = (0..400)
            .map(|_| {
                let until = Instant::now() + Duration::from_micros(gap_us);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                let t0 = Instant::now();
                let (tx, rx) = std::sync::mpsc::channel();
                pool.spawn(move || tx.send(Instant::now()).expect("send"));
                let started = rx.recv().expect("recv");
                started.duration_since(t0).as_secs_f64() * 1e6
            })
            .collect();
        delays.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        println!(
            "idle gap {gap_us:>5} us: worker starts after median {:7.1} us, p90 {:7.1} us",
            delays[delays.len() / 2],
            delays[delays.len() * 9 / 10]
        );
    }
}
