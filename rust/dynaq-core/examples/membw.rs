//! Single-thread memory read bandwidth, the roofline for M = 1 (weights streamed once per call).
//!
//! ```text
//! cargo run --release -p dynaq-core --example membw [-- MiB]
//! ```
//!
//! Reads a buffer of the given size (default 256 MiB, far beyond any L3) as 1, 2, 4 and 8
//! interleaved sequential streams (a GEMV reads one stream per weight panel in flight), and
//! prints the best and median GB/s of several passes for each.

use std::hint::black_box;
use std::time::Instant;

fn pass(buf: &[u64], streams: usize) -> f64 {
    let len = buf.len() / streams / 8 * 8;
    let parts: Vec<&[u64]> = (0..streams).map(|s| &buf[s * len..(s + 1) * len]).collect();
    let t = Instant::now();
    let mut acc = [0u64; 8];
    for i in (0..len).step_by(8) {
        for p in &parts {
            for (a, v) in acc.iter_mut().zip(&p[i..i + 8]) {
                *a = a.wrapping_add(*v);
            }
        }
    }
    black_box(acc);
    (len * streams * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let words = mib * (1 << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    for streams in [1, 2, 3, 4, 8] {
        let mut rates: Vec<f64> = (0..7).map(|_| pass(&buf, streams)).collect();
        rates.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        println!(
            "read bandwidth, {mib} MiB, 1 thread, {streams} streams: best {:.1} GB/s, median {:.1} GB/s",
            rates[rates.len() - 1],
            rates[rates.len() / 2]
        );
    }
}
