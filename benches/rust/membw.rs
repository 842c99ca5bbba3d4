//! Single-thread memory read bandwidth, the roofline for M = 1 (weights streamed once per call).
//!
//! ```text
//! cargo bench -p dynaq-core --bench membw [-- MiB...]
//! ```
//!
//! Reads a buffer of each given size (default 44 MiB, the packed 4096 x 11008 weight of the
//! M = 1 benchmark, and 1024 MiB, far beyond any L3) with the widest vector loads the CPU has
//! (zmm with AVX-512, ymm with AVX2), as 1, 2, 4 and 8 interleaved sequential streams (a GEMV
//! reads one stream per weight panel in flight), without and with software prefetch 1 or 4 KiB
//! ahead, and prints the median GB/s of several passes (all configurations interleaved in
//! each round, so that a noisy neighbour slows them alike). The loads are folded with `vpor`
//! into four accumulators per stream: the loop issues nothing but loads, so the number is what
//! the memory system delivers to one core, not what a scalar loop can consume.

use std::hint::black_box;
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod wide {
    use core::arch::x86_64::*;

    /// Bytes per step of one stream: four vectors of 64 bytes.
    pub const STEP: usize = 256;

    /// ORs `streams` equal parts of `buf` (each a multiple of `STEP` bytes) into 64 bytes,
    /// prefetching `PF` bytes ahead in each stream (none when `PF == 0`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn read512<const PF: usize>(buf: &[u8], streams: usize) -> u64 {
        let part = buf.len() / streams / STEP * STEP;
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut i = 0;
        while i < part {
            for s in 0..streams {
                let p = buf[s * part + i..].as_ptr();
                if PF > 0 {
                    // A prefetch past the end of the buffer is only a hint; it never faults.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF + 128).cast());
                }
                for (u, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `i + 64 u + 64 <= part`: inside stream `s` of `buf`.
                    let v = unsafe { _mm512_loadu_si512(p.add(64 * u).cast()) };
                    *a = _mm512_or_si512(*a, v);
                }
            }
            i += STEP;
        }
        let v = _mm512_or_si512(
            _mm512_or_si512(acc[0], acc[1]),
            _mm512_or_si512(acc[2], acc[3]),
        );
        _mm512_reduce_or_epi64(v) as u64
    }

    /// The same with 32-byte loads (eight per step).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn read256<const PF: usize>(buf: &[u8], streams: usize) -> u64 {
        let part = buf.len() / streams / STEP * STEP;
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < part {
            for s in 0..streams {
                let p = buf[s * part + i..].as_ptr();
                if PF > 0 {
                    // A prefetch past the end of the buffer is only a hint; it never faults.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF).cast());
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF + 128).cast());
                }
                for u in 0..8 {
                    // SAFETY: `i + 32 u + 32 <= part`: inside stream `s` of `buf`.
                    let v = unsafe { _mm256_loadu_si256(p.add(32 * u).cast()) };
                    acc[u % 4] = _mm256_or_si256(acc[u % 4], v);
                }
            }
            i += STEP;
        }
        let v = _mm256_or_si256(
            _mm256_or_si256(acc[0], acc[1]),
            _mm256_or_si256(acc[2], acc[3]),
        );
        _mm256_extract_epi64::<0>(v) as u64
    }
}

type ReadFn = fn(&[u8], usize) -> u64;

/// Safe wrappers of the readers, only handed out by [`reader`] after detecting the feature.
#[cfg(target_arch = "x86_64")]
macro_rules! wrappers {
    ($($name:ident = $f:ident::<$pf:literal>;)*) => {$(
        fn $name(b: &[u8], s: usize) -> u64 {
            // SAFETY: `reader` returns this function only when the CPU has the feature `$f`
            // needs (AVX-512 F for `read512`, AVX2 for `read256`).
            unsafe { wide::$f::<$pf>(b, s) }
        }
    )*};
}

#[cfg(target_arch = "x86_64")]
wrappers! {
    z0 = read512::<0>;
    z1 = read512::<1024>;
    z4 = read512::<4096>;
    y0 = read256::<0>;
    y1 = read256::<1024>;
    y4 = read256::<4096>;
}

/// The reader for prefetch distance `pf` (0, 1024 or 4096) with the widest loads available.
#[cfg(target_arch = "x86_64")]
fn reader(pf: usize) -> Option<(ReadFn, &'static str)> {
    let by_pf = |f0: ReadFn, f1: ReadFn, f4: ReadFn| match pf {
        0 => f0,
        1024 => f1,
        _ => f4,
    };
    if std::is_x86_feature_detected!("avx512f") {
        Some((by_pf(z0, z1, z4), "zmm"))
    } else if std::is_x86_feature_detected!("avx2") {
        Some((by_pf(y0, y1, y4), "ymm"))
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn reader(_pf: usize) -> Option<(ReadFn, &'static str)> {
    None
}

/// Portable fallback: 8 u64 per step.
fn read_scalar(buf: &[u8], streams: usize) -> u64 {
    let part = buf.len() / streams / 64 * 64;
    let mut acc = [0u64; 8];
    for i in (0..part).step_by(64) {
        for s in 0..streams {
            for (a, c) in acc
                .iter_mut()
                .zip(buf[s * part + i..s * part + i + 64].chunks(8))
            {
                *a |= u64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
        }
    }
    acc.iter().fold(0, |x, y| x | y)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![44, 1024]
    } else {
        sizes
    };
    for mib in sizes {
        let buf: Vec<u8> = (0..mib << 20).map(|i| ((i * 131) >> 7) as u8).collect();
        let mut configs: Vec<(String, ReadFn, usize)> = Vec::new();
        for pf in [0, 1024, 4096] {
            let (f, width) = match reader(pf) {
                Some(r) => r,
                None if pf == 0 => (read_scalar as ReadFn, "u64"),
                None => continue,
            };
            for streams in [1, 2, 4, 8] {
                let name = format!("{width}, {streams} stream(s), prefetch {pf:4} B");
                configs.push((name, f, streams));
            }
        }
        let mut rates = vec![Vec::new(); configs.len()];
        let passes = if mib >= 256 { 3 } else { 7 };
        for _ in 0..passes {
            for (c, (_, f, streams)) in configs.iter().enumerate() {
                let t = Instant::now();
                black_box(f(black_box(&buf), *streams));
                rates[c].push(buf.len() as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        for (c, (name, _, _)) in configs.iter().enumerate() {
            println!(
                "read bandwidth, {mib} MiB, 1 thread, {name}: median {:.1} GB/s",
                median(rates[c].clone())
            );
        }
    }
}
