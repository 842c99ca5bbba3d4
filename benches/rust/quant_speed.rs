//! Timing of the quantization kernels on every detected path: min/max, uint8 quantization and
//! both together, on one row of 4096 floats (L1-resident) and on 512 x 4096 floats (8 MiB, L3),
//! the latter per tensor (min/max over all of it, then quantization: two passes over L3) and per
//! row (each row's min/max then its quantization, the second pass from L1).
//!
//! ```text
//! cargo bench -p dynaq-core --bench quant_speed [-- ROUNDS]
//! ```
//!
//! GB/s counts the float input once (`4 * len` bytes). Each number is the median over `ROUNDS`
//! (default 7) rounds of the median of many calls; the paths and columns are interleaved within
//! each round, so that a noisy neighbour slows all of them alike. The `ties` column quantizes
//! data whose quotients sit on (or within rounding of) half-integers, the worst case of the
//! reciprocal kernels (every block is recomputed by division until they give up on the call).

use dynaq_core::dispatch::quant_kernels;
use dynaq_core::isa::detected;
use dynaq_core::kernel::QuantKernels;
use dynaq_core::Isa;
use std::hint::black_box;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

/// Median time in microseconds of one call of `f`, timing batches of `batch` calls.
fn median_us(samples: usize, batch: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..samples)
            .map(|_| {
                let s = Instant::now();
                for _ in 0..batch {
                    f();
                }
                s.elapsed().as_secs_f64() * 1e6 / batch as f64
            })
            .collect(),
    )
}

/// Per-tensor asymmetric parameters the way `quant.rs` derives them (ONNX rule).
fn params(q: &QuantKernels, x: &[f32]) -> (f32, u8) {
    let m = q.minmax(x);
    dynaq_core::reference::dql_params(m.min, m.max)
}

const COLS: [&str; 5] = ["minmax", "quantize", "both", "both/row", "ties"];

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let paths: Vec<Isa> = detected().to_vec();
    for (len, samples, batch) in [(4096usize, 200usize, 50usize), (512 * 4096, 15, 1)] {
        let row = 4096;
        // Smooth, activation-like values; quotients are nowhere near a grid.
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0 + (i % 13) as f32 * 1.3e-4)
            .collect();
        // Values k/4 - 5 with scale 0.5: every quotient is an integer or a half-integer.
        let ties: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.25 - 125.0)
            .collect();
        let mut out = vec![0u8; len];
        let mut t = vec![vec![Vec::new(); COLS.len()]; paths.len()];
        for _ in 0..rounds {
            for (pi, &isa) in paths.iter().enumerate() {
                let q = quant_kernels(isa);
                let (s, z) = params(q, &x);
                let (samples, batch) = if isa == Isa::Scalar {
                    (samples.min(5), 1)
                } else {
                    (samples, batch)
                };
                let cols = [
                    median_us(samples, batch, || {
                        black_box(q.minmax(black_box(&x)));
                    }),
                    median_us(samples, batch, || {
                        q.quantize_u8(black_box(&x), s, z, &mut out)
                    }),
                    median_us(samples, batch, || {
                        let (s, z) = params(q, black_box(&x));
                        q.quantize_u8(&x, s, z, &mut out);
                    }),
                    median_us(samples, batch, || {
                        for (xr, or) in black_box(&x).chunks(row).zip(out.chunks_mut(row)) {
                            let (s, z) = params(q, xr);
                            q.quantize_u8(xr, s, z, or);
                        }
                    }),
                    median_us(samples, batch, || {
                        q.quantize_u8(black_box(&ties), 0.5, 128, &mut out)
                    }),
                ];
                for (c, v) in cols.into_iter().enumerate() {
                    t[pi][c].push(v);
                }
            }
        }
        for (pi, &isa) in paths.iter().enumerate() {
            let gbs = |us: f64| len as f64 * 4.0 / us / 1e3;
            let mut line = format!("{:<11} {len:>8} floats:", isa.name());
            for (c, name) in COLS.iter().enumerate() {
                let us = median(t[pi][c].clone());
                line += &format!(" | {name} {us:8.2} us ({:5.1} GB/s)", gbs(us));
            }
            println!("{line}");
        }
    }
}
