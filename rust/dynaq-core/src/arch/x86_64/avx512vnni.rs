//! AVX-512 VNNI kernels: the `vpdpbusd` GEMM microkernel and the quantization kernels (min/max
//! from the bits, reciprocal quantization with a tie test, the division kernels as fallback).
//!
//! GEMM: B is packed `K4N16`, so one K group of one panel is exactly one zmm of 16 columns x 4
//! consecutive k (s8, the signed operand of `vpdpbusd`). For each row, the 4 u8 activations of
//! the group are broadcast to every 32-bit lane (the unsigned operand), and one `vpdpbusd`
//! adds `sum_{q<4} a[q] * b[q][c]` to lane `c`. The tile is up to 8 rows x 3 panels (48 columns):
//! 24 accumulators, 3 B registers and 1 broadcast, 28 of the 32 zmm registers. `vpdpbusd` widens
//! each product to 16 bits exactly and sums in 32 bits without saturation, so the results are
//! exact (the driver keeps K chunks short enough for i32).
//!
//! See `README.md` in this folder for the measured numbers.

use super::{has_fma, minmax_from_bits, Recip, TIE_MASK};
use crate::isa::Isa;
use crate::kernel::{AData, AFormat, GemmKernel, QuantKernels, Tile};
use crate::pack::{GROUP_BYTES, PANEL};
use crate::reference::MinMax;
use core::arch::x86_64::*;

/// Most rows of a tile.
const MR: usize = 8;
/// Most 16-column panels of a tile.
const NP: usize = 3;
/// K groups per iteration of the main loop.
const UNROLL: usize = 4;
/// Software prefetch distance for B, in bytes ahead within each panel (32 groups).
const PF_DIST: usize = 2048;
/// Tiles with at least this many rows prefetch B. They are compute-bound, with load slots to
/// spare, and the prefetch crosses each 4 KiB page of B (and so its TLB miss) well ahead: +28%
/// at M = 8 with 45 MB of weights (beyond L3), +1-2% at M = 8..128 with 16 MB. Tiles of 1..3
/// rows are bound by the loads themselves, and prefetching cost them 1-40% (README).
const PF_ROWS: usize = 4;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "avx512vnni_u8s8_i32_8x48",
    isa: Isa::Avx512Vnni,
    mr: MR,
    np: NP,
    a_format: AFormat::U8,
    func: gemm_entry,
};

/// Quantization kernels of this path.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "avx512_minmax_f32x64_bits",
    name_quantize: "avx512_quantize_f32x64_recip",
    isa: Isa::Avx512Vnni,
    minmax,
    quantize_u8,
    quantize_i8,
};

/// The microkernel for exactly `R` rows and `P` panels (one monomorphized copy per shape).
///
/// With few accumulators (`R * P < 8`), consecutive K groups go to separate accumulator sets
/// (added at the end) so that the `vpdpbusd` latency does not serialize the loop.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI. For `r < R`, `p < P`: `a + r * lda .. + 4 * k4` is
/// readable, `b + p * ps .. + 64 * k4` is readable and `c + r * ldc .. + 16 * P` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const P: usize>(
    a: *const u8,
    lda: usize,
    b: *const i8,
    ps: usize,
    k4: usize,
    c: *mut i32,
    ldc: usize,
) {
    let sets = if R * P >= 8 {
        1
    } else if R * P >= 4 {
        2
    } else {
        4
    };
    let zero = _mm512_setzero_si512();
    let mut acc = [[[zero; P]; R]; UNROLL];
    // `g` counts K groups; every address below is `a + r * lda + 4 * g` or
    // `b + p * ps + 64 * g` with `g < k4`, inside the ranges of the contract.
    let mut g = 0;
    while g + UNROLL <= k4 {
        for u in 0..UNROLL {
            let s = u % sets;
            let mut bv = [zero; P];
            if R >= PF_ROWS {
                for p in 0..P {
                    // A prefetch is a hint: it never faults, even past the end of B.
                    let ahead = b.wrapping_add(p * ps + (g + u) * GROUP_BYTES + PF_DIST);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            for p in 0..P {
                // SAFETY: panel `p`, group `g + u < k4`: 64 readable bytes (contract above).
                bv[p] = unsafe { _mm512_loadu_si512(b.add(p * ps + (g + u) * GROUP_BYTES).cast()) };
            }
            for r in 0..R {
                // SAFETY: row `r`, bytes `4 * (g + u) .. + 4` with `g + u < k4` (contract above).
                let word = unsafe { a.add(r * lda + 4 * (g + u)).cast::<i32>().read_unaligned() };
                let av = _mm512_set1_epi32(word);
                for p in 0..P {
                    acc[s][r][p] = _mm512_dpbusd_epi32(acc[s][r][p], av, bv[p]);
                }
            }
        }
        g += UNROLL;
    }
    while g < k4 {
        let mut bv = [zero; P];
        for p in 0..P {
            // SAFETY: as in the main loop, with `g < k4`.
            bv[p] = unsafe { _mm512_loadu_si512(b.add(p * ps + g * GROUP_BYTES).cast()) };
        }
        for r in 0..R {
            // SAFETY: as in the main loop, with `g < k4`.
            let word = unsafe { a.add(r * lda + 4 * g).cast::<i32>().read_unaligned() };
            let av = _mm512_set1_epi32(word);
            for p in 0..P {
                acc[0][r][p] = _mm512_dpbusd_epi32(acc[0][r][p], av, bv[p]);
            }
        }
        g += 1;
    }
    for r in 0..R {
        for p in 0..P {
            let mut v = acc[0][r][p];
            for s in 1..sets {
                v = _mm512_add_epi32(v, acc[s][r][p]);
            }
            // SAFETY: row `r`, columns `16 * p .. + 16` of C are writable (contract above).
            unsafe { _mm512_storeu_si512(c.add(r * ldc + p * PANEL).cast(), v) };
        }
    }
}

type TileFn = unsafe fn(*const u8, usize, *const i8, usize, usize, *mut i32, usize);

/// The monomorphized tile for `rows x panels` (`1..=MR`, `1..=NP`).
fn tile_fn(rows: usize, panels: usize) -> TileFn {
    macro_rules! by_rows {
        ($p:literal) => {
            match rows {
                1 => tile::<1, $p> as TileFn,
                2 => tile::<2, $p>,
                3 => tile::<3, $p>,
                4 => tile::<4, $p>,
                5 => tile::<5, $p>,
                6 => tile::<6, $p>,
                7 => tile::<7, $p>,
                8 => tile::<8, $p>,
                _ => unreachable!("tile rows out of range"),
            }
        };
    }
    match panels {
        1 => by_rows!(1),
        2 => by_rows!(2),
        3 => by_rows!(3),
        _ => unreachable!("tile panels out of range"),
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, and `t` must satisfy the bounds asserted by
/// [`GemmKernel::run`] (the only caller).
unsafe fn gemm_entry(t: &mut Tile<'_>) {
    let AData::U8(a) = t.a else {
        unreachable!("the avx512vnni kernel reads u8 activations")
    };
    debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels >= 1 && t.panels <= NP);
    debug_assert!(a.len() >= (t.rows - 1) * t.lda + 4 * t.k4);
    debug_assert!(t.b.len() >= (t.panels - 1) * t.panel_stride + t.k4 * GROUP_BYTES);
    debug_assert!(t.c.len() >= (t.rows - 1) * t.ldc + t.panels * PANEL);
    let f = tile_fn(t.rows, t.panels);
    // SAFETY: `GemmKernel::run` asserted that the CPU supports `Isa::Avx512Vnni` (detected only
    // with AVX-512 F/BW/VL/VNNI) and exactly the ranges `tile` reads and writes: A rows at
    // `r * lda` covering `4 * k4` bytes, B panels at `p * panel_stride` covering `64 * k4` bytes,
    // C rows at `r * ldc` covering `16 * panels` values.
    unsafe {
        f(
            a.as_ptr(),
            t.lda,
            t.b.as_ptr(),
            t.panel_stride,
            t.k4,
            t.c.as_mut_ptr(),
            t.ldc,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization kernels.
// ---------------------------------------------------------------------------------------------

/// Lane mask for the first `n < 16` elements.
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// Min, max and the largest masked exponent of 16 lanes folded into the accumulators.
///
/// `_mm512_min_ps(v, acc)` returns `acc` when `v` is NaN, like the reference's `v < min`.
#[inline]
#[target_feature(enable = "avx512f")]
fn minmax_step(v: __m512, mn: &mut __m512, mx: &mut __m512, ex: &mut __m512i) {
    let expo = _mm512_set1_epi32(0x7f80_0000);
    *mn = _mm512_min_ps(v, *mn);
    *mx = _mm512_max_ps(v, *mx);
    *ex = _mm512_max_epu32(*ex, _mm512_and_si512(_mm512_castps_si512(v), expo));
}

/// Min/max with float comparisons (NaN ignored like the reference); used when
/// [`minmax_bits`] finds a non-finite element.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn minmax_float(x: &[f32]) -> MinMax {
    const W: usize = 16;
    let n = x.len();
    let p = x.as_ptr();
    let mut mn = [_mm512_set1_ps(f32::INFINITY); 4];
    let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    let mut ex = [_mm512_setzero_si512(); 4];
    let mut i = 0;
    while i + 4 * W <= n {
        for u in 0..4 {
            // SAFETY: `i + 16 * u + 16 <= n`: inside `x`.
            let v = unsafe { _mm512_loadu_ps(p.add(i + W * u)) };
            minmax_step(v, &mut mn[u], &mut mx[u], &mut ex[u]);
        }
        i += 4 * W;
    }
    while i + W <= n {
        // SAFETY: `i + 16 <= n`: inside `x`.
        let v = unsafe { _mm512_loadu_ps(p.add(i)) };
        minmax_step(v, &mut mn[0], &mut mx[0], &mut ex[0]);
        i += W;
    }
    if i < n {
        let m = tail_mask(n - i);
        // SAFETY: only the `n - i` lanes of the mask are read (masked-off lanes are not
        // accessed and cannot fault); they lie inside `x`.
        let v = unsafe { _mm512_maskz_loadu_ps(m, p.add(i)) };
        // Masked-off lanes are +0.0, which must not take part: blend them to the neutral values.
        let vmin = _mm512_mask_blend_ps(m, _mm512_set1_ps(f32::INFINITY), v);
        let vmax = _mm512_mask_blend_ps(m, _mm512_set1_ps(f32::NEG_INFINITY), v);
        mn[1] = _mm512_min_ps(vmin, mn[1]);
        mx[1] = _mm512_max_ps(vmax, mx[1]);
        // +0.0 has a zero exponent, so the padding never looks non-finite.
        ex[1] = _mm512_max_epu32(
            ex[1],
            _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7f80_0000)),
        );
    }
    let mn = _mm512_min_ps(_mm512_min_ps(mn[0], mn[1]), _mm512_min_ps(mn[2], mn[3]));
    let mx = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
    let ex = _mm512_max_epu32(
        _mm512_max_epu32(ex[0], ex[1]),
        _mm512_max_epu32(ex[2], ex[3]),
    );
    MinMax {
        min: _mm512_reduce_min_ps(mn),
        max: _mm512_reduce_max_ps(mx),
        nonfinite: _mm512_reduce_max_epu32(ex) == 0x7f80_0000,
    }
}

/// Min/max from integer reductions of the bits ([`minmax_from_bits`]): three integer ops per
/// vector, which run on all four vector pipes, where `vminps`/`vmaxps` share two.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn minmax_bits(x: &[f32]) -> MinMax {
    const W: usize = 16;
    if x.is_empty() {
        return MinMax::EMPTY;
    }
    let n = x.len();
    let p = x.as_ptr();
    let mut smax = [_mm512_set1_epi32(i32::MIN); 4];
    let mut umin = [_mm512_set1_epi32(-1); 4];
    let mut umax = [_mm512_setzero_si512(); 4];
    let mut i = 0;
    while i + 4 * W <= n {
        for u in 0..4 {
            // SAFETY: `i + 16 * u + 16 <= n`: inside `x`.
            let v = _mm512_castps_si512(unsafe { _mm512_loadu_ps(p.add(i + W * u)) });
            smax[u] = _mm512_max_epi32(smax[u], v);
            umin[u] = _mm512_min_epu32(umin[u], v);
            umax[u] = _mm512_max_epu32(umax[u], v);
        }
        i += 4 * W;
    }
    while i < n {
        let m = if n - i >= W { !0 } else { tail_mask(n - i) };
        // SAFETY: only the masked lanes (at most `n - i`, inside `x`) are read.
        let v = _mm512_castps_si512(unsafe { _mm512_maskz_loadu_ps(m, p.add(i)) });
        // Masked-off lanes keep the accumulators.
        smax[1] = _mm512_mask_max_epi32(smax[1], m, smax[1], v);
        umin[1] = _mm512_mask_min_epu32(umin[1], m, umin[1], v);
        umax[1] = _mm512_mask_max_epu32(umax[1], m, umax[1], v);
        i += W;
    }
    let smax = _mm512_max_epi32(
        _mm512_max_epi32(smax[0], smax[1]),
        _mm512_max_epi32(smax[2], smax[3]),
    );
    let umin = _mm512_min_epu32(
        _mm512_min_epu32(umin[0], umin[1]),
        _mm512_min_epu32(umin[2], umin[3]),
    );
    let umax = _mm512_max_epu32(
        _mm512_max_epu32(umax[0], umax[1]),
        _mm512_max_epu32(umax[2], umax[3]),
    );
    match minmax_from_bits(
        _mm512_reduce_max_epi32(smax),
        _mm512_reduce_min_epu32(umin),
        _mm512_reduce_max_epu32(umax),
    ) {
        Some(mm) => mm,
        // SAFETY: same CPU requirement as this function.
        None => unsafe { minmax_float(x) },
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL (checked by [`QuantKernels::minmax`]).
unsafe fn minmax(x: &[f32]) -> MinMax {
    // SAFETY: `QuantKernels::minmax` asserted that `Isa::Avx512Vnni` (which implies AVX-512
    // F/BW/VL) is supported; the kernel reads only inside `x`.
    unsafe { minmax_bits(x) }
}

/// 16 lanes of `round_half_even(clamp(x / scale, lo, hi))` as i32 (the reference's order of
/// operations; `cvtps2dq` rounds to nearest even under the default MXCSR).
#[inline]
#[target_feature(enable = "avx512f")]
fn quant_lanes(v: __m512, scale: __m512, lo: __m512, hi: __m512) -> __m512i {
    let q = _mm512_div_ps(v, scale);
    let q = _mm512_max_ps(q, lo);
    let q = _mm512_min_ps(q, hi);
    _mm512_cvtps_epi32(q)
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_u8_div(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    const W: usize = 16;
    let n = x.len().min(out.len());
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let zpf = zp as f32;
    let scale = _mm512_set1_ps(scale);
    let lo = _mm512_set1_ps(0.0 - zpf);
    let hi = _mm512_set1_ps(255.0 - zpf);
    let zpi = _mm512_set1_epi32(zp as i32);
    let mut i = 0;
    while i + W <= n {
        // SAFETY: `i + 16 <= n`: inside `x`.
        let v = unsafe { _mm512_loadu_ps(xp.add(i)) };
        let q = _mm512_add_epi32(quant_lanes(v, scale, lo, hi), zpi);
        // SAFETY: `i + 16 <= n`: 16 bytes inside `out`. The lanes hold 0..=255, so the
        // truncating narrowing is exact.
        unsafe { _mm_storeu_si128(op.add(i).cast(), _mm512_cvtepi32_epi8(q)) };
        i += W;
    }
    if i < n {
        let m = tail_mask(n - i);
        // SAFETY: only the `n - i` masked lanes are read, all inside `x`.
        let v = unsafe { _mm512_maskz_loadu_ps(m, xp.add(i)) };
        let q = _mm512_add_epi32(quant_lanes(v, scale, lo, hi), zpi);
        // SAFETY: only the `n - i` masked bytes are written, all inside `out`.
        unsafe { _mm512_mask_cvtepi32_storeu_epi8(op.add(i).cast(), m, q) };
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_i8_div(x: &[f32], scale: f32, out: &mut [i8]) {
    const W: usize = 16;
    let n = x.len().min(out.len());
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let scale = _mm512_set1_ps(scale);
    let lo = _mm512_set1_ps(-127.0);
    let hi = _mm512_set1_ps(127.0);
    let mut i = 0;
    while i + W <= n {
        // SAFETY: `i + 16 <= n`: inside `x`.
        let v = unsafe { _mm512_loadu_ps(xp.add(i)) };
        let q = quant_lanes(v, scale, lo, hi);
        // SAFETY: `i + 16 <= n`: 16 bytes inside `out`; lanes hold -127..=127 (exact narrowing).
        unsafe { _mm_storeu_si128(op.add(i).cast(), _mm512_cvtepi32_epi8(q)) };
        i += W;
    }
    if i < n {
        let m = tail_mask(n - i);
        // SAFETY: only the `n - i` masked lanes are read, all inside `x`.
        let v = unsafe { _mm512_maskz_loadu_ps(m, xp.add(i)) };
        let q = quant_lanes(v, scale, lo, hi);
        // SAFETY: only the `n - i` masked bytes are written, all inside `out`.
        unsafe { _mm512_mask_cvtepi32_storeu_epi8(op.add(i).cast(), m, q) };
    }
}

/// Lanes per block of the reciprocal kernel: four vectors, narrowed together, with one tie check.
const QBLOCK: usize = 64;

/// Recomputes one block with the division kernel (a lane of it is near a tie).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out.len() == x.len()`.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn redo_block<const SIGNED: bool>(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    if SIGNED {
        // SAFETY: `i8` and `u8` have the same layout; same length as `out`.
        let out = unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), out.len()) };
        // SAFETY: same CPU requirement and lengths as this function.
        unsafe { quantize_i8_div(x, scale, out) }
    } else {
        // SAFETY: same CPU requirement and lengths as this function.
        unsafe { quantize_u8_div(x, scale, zp, out) }
    }
}

/// The reciprocal kernel (see [`Recip`] and `README.md`) on the whole blocks of `x`; returns how
/// many elements it did (a multiple of [`QBLOCK`]; all whole blocks unless ties are frequent).
///
/// Per 16 lanes: `vfmadd` (with the load) and `vcvttps2dq` (no clamp: see [`Recip`]); per 64
/// lanes three `vpminuw` and one `vptestnmd` check the fractions, and the high words of the four
/// `t` vectors are gathered by two `vpermt2w` and narrowed with one `vpackuswb` (signed words to
/// unsigned bytes: a negative `t`, from a quotient below the range, saturates to 0, the lower
/// bound, and integer parts above 255 to 255) and one `vpermq`. `SIGNED` outputs are offset by
/// 127, clamped to 254 and shifted back.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL and FMA; `out.len() == x.len()`; `p` comes from
/// [`Recip::new`] with `off = zp` (u8) or `off = 127` (i8).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn quantize_recip<const SIGNED: bool>(
    x: &[f32],
    scale: f32,
    zp: u8,
    p: Recip,
    out: &mut [u8],
) -> usize {
    let n = x.len() / QBLOCK * QBLOCK;
    let (r, k) = (_mm512_set1_ps(p.r), _mm512_set1_ps(p.k));
    let tie = _mm512_set1_epi32(TIE_MASK);
    // Word `j` of `vpermt2w(a, idx, b)` is word `idx[j]` of `a:b`: the high words of the 16
    // dwords of `a`, then of `b`.
    let mut high = [0i16; 32];
    for (j, h) in high.iter_mut().enumerate() {
        *h = 2 * j as i16 + 1;
    }
    // SAFETY: 64 readable bytes.
    let high = unsafe { _mm512_loadu_si512(high.as_ptr().cast()) };
    // `vpackuswb(w1, w2)` interleaves 8-byte halves of each 128-bit lane of `w1` and `w2`.
    let order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    let bias = _mm512_set1_epi8(127);
    let top_i8 = _mm512_set1_epi8(-2); // 254
    let mut redone = 0;
    for (blk, (xb, ob)) in x[..n]
        .chunks_exact(QBLOCK)
        .zip(out[..n].chunks_exact_mut(QBLOCK))
        .enumerate()
    {
        let xp = xb.as_ptr();
        let mut t = [_mm512_setzero_si512(); 4];
        for (u, tu) in t.iter_mut().enumerate() {
            // SAFETY: `16 * u + 16 <= 64 = xb.len()`.
            let v = unsafe { _mm512_loadu_ps(xp.add(16 * u)) };
            *tu = _mm512_cvttps_epi32(_mm512_fmadd_ps(v, r, k));
        }
        // A lane is near a tie when no bit of `TIE_MASK` is set in its fraction (the low word).
        // The unsigned word minimum of the four vectors has a fraction below 16 exactly when
        // one of them has; its high words (a minimum of integer parts) are masked off by the
        // test. One `vptestnmd` instead of four: the mask tests share pipes with `vfmadd`.
        let m = _mm512_min_epu16(_mm512_min_epu16(t[0], t[1]), _mm512_min_epu16(t[2], t[3]));
        let near = _mm512_testn_epi32_mask(m, tie);
        let w1 = _mm512_permutex2var_epi16(t[0], high, t[1]);
        let w2 = _mm512_permutex2var_epi16(t[2], high, t[3]);
        let mut b = _mm512_permutexvar_epi64(order, _mm512_packus_epi16(w1, w2));
        if SIGNED {
            // Integer parts saturated to 0..=255: 255 (a quotient of 127.5 or more, clamped to
            // 127 by the reference) becomes 254, then 127 is taken off.
            b = _mm512_sub_epi8(_mm512_min_epu8(b, top_i8), bias);
        }
        // SAFETY: 64 bytes, `ob.len() == 64`.
        unsafe { _mm512_storeu_si512(ob.as_mut_ptr().cast(), b) };
        if near != 0 {
            // SAFETY: same CPU requirement; equal lengths.
            unsafe { redo_block::<SIGNED>(xb, scale, zp, ob) };
            // Data with many quotients at ties (values on a grid of half steps) pays for both
            // kernels: past a quarter of the blocks, leave the rest to the division kernel.
            redone += 1;
            if redone >= 8 && 4 * redone > blk {
                return (blk + 1) * QBLOCK;
            }
        }
    }
    n
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out.len() == x.len()` (both checked by
/// [`QuantKernels::quantize_u8`]).
unsafe fn quantize_u8(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    let done = match Recip::new(scale, zp as f32) {
        // SAFETY: `QuantKernels::quantize_u8` asserted that the path is supported (AVX-512
        // F/BW/VL), FMA is checked here, the lengths match, and `p` is for this `zp`.
        Some(p) if has_fma() => unsafe { quantize_recip::<false>(x, scale, zp, p, out) },
        _ => 0,
    };
    // SAFETY: the path is supported (see above); the kernel touches only the two sub-slices.
    unsafe { quantize_u8_div(&x[done..], scale, zp, &mut out[done..]) }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL; `out.len() == x.len()` (both checked by
/// [`QuantKernels::quantize_i8`]).
unsafe fn quantize_i8(x: &[f32], scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    let done = match Recip::new(scale, 127.0) {
        Some(p) if has_fma() => {
            // SAFETY: `i8` and `u8` have the same layout; the same length as `out`, which is
            // not used while this view lives.
            let bytes =
                unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), out.len()) };
            // SAFETY: `QuantKernels::quantize_i8` asserted that the path is supported, FMA is
            // checked here, the lengths match, and `p` is the i8 one.
            unsafe { quantize_recip::<true>(x, scale, 0, p, bytes) }
        }
        _ => 0,
    };
    // SAFETY: the path is supported (see above); the kernel touches only the two sub-slices.
    unsafe { quantize_i8_div(&x[done..], scale, &mut out[done..]) }
}
