//! Timing of the quantization kernels on every detected path: min/max, uint8 quantization and
//! both together, on one row of 4096 (L1-resident) and 512 x 4096 (8 MiB, L3) floats.
//!
//! ```text
//! cargo run --release -p dynaq-core --example quant_speed
//! ```

use dynaq_core::dispatch::detected;
use dynaq_core::kernels::quant_kernels;
use std::hint::black_box;
use std::time::Instant;

fn median_us(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    t[t.len() / 2]
}

fn main() {
    for &isa in detected() {
        let q = quant_kernels(isa);
        for (len, reps) in [(4096usize, 20000usize), (512 * 4096, 50)] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
                .collect();
            let mut out = vec![0u8; len];
            let mm = median_us(reps, || {
                black_box(q.minmax(black_box(&x)));
            });
            let qu = median_us(reps, || q.quantize_u8(black_box(&x), 0.04, 128, &mut out));
            let both = median_us(reps, || {
                let m = q.minmax(&x);
                let s = (m.max - m.min) / 255.0;
                q.quantize_u8(&x, s, 128, &mut out);
            });
            let gbs = |us: f64| len as f64 * 4.0 / us / 1e3;
            println!(
                "{:<11} {len:>8} floats: minmax {mm:8.2} us ({:5.1} GB/s) | quantize {qu:8.2} us \
                 ({:5.1} GB/s) | both {both:8.2} us ({:5.1} GB/s)",
                isa.name(),
                gbs(mm),
                gbs(qu),
                gbs(both)
            );
        }
    }
}
