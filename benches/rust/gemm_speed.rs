//! Timing of the GEMM paths, for every detected path: the microkernel on one hot tile, the GEMM
//! driver alone (tiles discarded), activation quantization alone, quantization + GEMM, and the
//! full `ops::linear` (quantization + GEMM + dequantizing epilogue into the f32 output).
//!
//! ```text
//! DYNAQ_NUM_THREADS=1 cargo bench -p dynaq-core --bench gemm_speed [-- M...]
//! ```
//!
//! Prints effective GOP/s = 2 * M * N * K / time (best of several repetitions).
//! `GEMM_SPEED_K` / `GEMM_SPEED_N` change K and N (default 3072), `GEMM_SPEED_SCALAR=1` adds the
//! scalar path, `GEMM_SPEED_ISA=avx2` (a path name) times that path only.

use dynaq_core::dispatch::gemm_kernel;
use dynaq_core::gemm::{gemm, Epilogue};
use dynaq_core::isa::detected;
use dynaq_core::kernel::{AData, AFormat, Tile};
use dynaq_core::ops;
use dynaq_core::pack::{PackedB, GROUP_BYTES, PANEL};
use dynaq_core::quant::{Granularity, Matrix, Quantization};
use dynaq_core::{Isa, PackedWeight};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Discards the tiles (keeps the compiler from dropping the work).
struct Sink;

impl Epilogue for Sink {
    fn tile_i32(&self, _m0: usize, _n0: usize, _r: usize, _c: usize, acc: &[i32], _ldc: usize) {
        black_box(acc[0]);
    }
    fn tile_i64(&self, _m0: usize, _n0: usize, _r: usize, _c: usize, acc: &[i64], _ldc: usize) {
        black_box(acc[0]);
    }
}

/// Best time per call of `f` over repetitions filling about `budget`.
fn best_time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < 3 || (start.elapsed() < budget && reps < 10_000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let ms: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ms = if ms.is_empty() { vec![1, 8, 128] } else { ms };
    let k = env_usize("GEMM_SPEED_K", 3072);
    let n = env_usize("GEMM_SPEED_N", 3072);
    let with_scalar = std::env::var("GEMM_SPEED_SCALAR").is_ok_and(|v| v == "1");
    let only = std::env::var("GEMM_SPEED_ISA").ok();
    let budget = Duration::from_millis(400);
    println!(
        "threads = {}, K = {k}, N = {n}",
        dynaq_core::threads::num_threads()
    );

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let wq: Vec<i8> = (0..n * k).map(|_| (rng.next() % 255) as i8 / 2).collect();
    let wq: Vec<i8> = wq.iter().map(|&v| v.max(-127)).collect();
    let scales: Vec<f32> = (0..n).map(|i| 0.01 + i as f32 * 1e-6).collect();
    let w = PackedWeight::from_quantized(&wq, &scales, n, k, true).expect("weight");
    let pb = PackedB::from_nk(&wq, n, k).expect("pack");

    for &isa in detected() {
        if isa == Isa::Scalar && !with_scalar {
            continue;
        }
        if only.as_ref().is_some_and(|o| o != isa.name()) {
            continue;
        }
        let kern = gemm_kernel(isa);
        // Microkernel on one hot tile: full rows and panels, the whole K.
        {
            let (rows, panels, k4) = (kern.mr, kern.np, k.div_ceil(4));
            let lda = 4 * k4;
            let a8: Vec<u8> = (0..rows * lda).map(|_| rng.next() as u8).collect();
            let a16: Vec<i16> = a8.iter().map(|&v| v as i16).collect();
            let b = pb.data();
            let ps = pb.panel_stride();
            let ldc = panels * PANEL;
            let mut c = vec![0i32; rows * ldc];
            assert!(b.len() >= (panels - 1) * ps + k4 * GROUP_BYTES);
            let t = best_time(budget, || {
                for _ in 0..16 {
                    let mut tile = Tile {
                        rows,
                        panels,
                        k4,
                        a: match kern.a_format {
                            AFormat::U8 => AData::U8(&a8),
                            AFormat::I16 => AData::I16(&a16),
                        },
                        lda,
                        b,
                        panel_stride: ps,
                        c: &mut c,
                        ldc,
                    };
                    kern.run(&mut tile);
                    black_box(&mut c);
                }
            });
            let ops = 16.0 * 2.0 * (rows * panels * PANEL * 4 * k4) as f64;
            println!(
                "{:<28} microkernel {rows}x{} hot tile: {:8.1} GOP/s",
                kern.name,
                panels * PANEL,
                ops / t / 1e9
            );
        }
        for &m in &ms {
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let quantize = || {
                ops::quantize_activations(
                    isa,
                    Matrix::new(&x, m, k).unwrap(),
                    Quantization::dynamic(Granularity::Row),
                )
                .expect("quant")
            };
            let (qa, _, _) = quantize();
            let ops_count = 2.0 * (m * n * k) as f64;
            let t_gemm = best_time(budget, || gemm(kern, &qa, &pb, &Sink).expect("gemm"));
            let t_quant = best_time(budget, || {
                black_box(quantize());
            });
            let t_both = best_time(budget, || {
                let (qa, _, _) = quantize();
                gemm(kern, &qa, &pb, &Sink).expect("gemm");
            });
            let mut out = vec![0f32; m * n];
            let t_lin = best_time(budget, || {
                ops::linear(
                    isa,
                    Matrix::new(&x, m, w.k()).unwrap(),
                    &w,
                    None,
                    Quantization::dynamic(Granularity::Row),
                    &mut out,
                )
                .expect("linear");
                black_box(&mut out);
            });
            let gops = |t: f64| ops_count / t / 1e9;
            println!(
                "{:<28} M = {m:4}: gemm {:6.1} GOP/s {:8.1} us | quantize {:6.1} us | \
                 quantize+gemm {:6.1} GOP/s | linear {:6.1} GOP/s {:8.1} us",
                kern.name,
                gops(t_gemm),
                t_gemm * 1e6,
                t_quant * 1e6,
                gops(t_both),
                gops(t_lin),
                t_lin * 1e6,
            );
        }
    }
}
