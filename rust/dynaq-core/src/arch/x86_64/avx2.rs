//! AVX2 kernels: an exact `vpmaddwd` GEMM microkernel and 8-lane quantization kernels.
//!
//! GEMM: `vpmaddubsw` (u8 x s8) would be the obvious instruction, but it saturates the sum of
//! each pair of products to i16 (`255 * 127 * 2 = 64770 > 32767`), so it is not exact on the
//! full range. Instead the driver widens A to i16 ([`AFormat::I16`]) and this kernel
//! sign-extends B (`vpmovsxbw`: 16 bytes of a `K4N16` group = 4 columns x 4 k -> 16 i16). The
//! row's 4 activations of the group are broadcast as one 64-bit pattern (`vpbroadcastq`), and
//! `vpmaddwd` gives, per column, the partial sums `a0 b0 + a1 b1` and `a2 b2 + a3 b3` in
//! adjacent i32 lanes (each at most `2 * 255 * 128` in magnitude: exact). They are accumulated
//! with `vpaddd` and the adjacent pairs added at the end (`vphaddd`).
//!
//! Tile: up to [`MR`] rows x 1 panel, processed as two passes of 8 columns (2 column quads) so
//! that the accumulators (`2 * MR`), the row broadcasts (`MR`) and the B registers (2) fit in the
//! 16 ymm registers without spilling. See `README.md` in this folder for the measurements.

use crate::dispatch::Isa;
use crate::kernels::{AData, AFormat, GemmKernel, QuantKernels, Tile};
use crate::pack::{GROUP_BYTES, PANEL};
use crate::reference::{self, MinMax};
use core::arch::x86_64::*;

/// Most rows of a tile.
const MR: usize = 4;
/// Most 16-column panels of a tile.
const NP: usize = 1;
/// Column quads (4 columns, 16 bytes of a group) per pass over K: 2 or 4.
const QN: usize = 2;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "avx2_u8s8_i32_madd16_4x16",
    isa: Isa::Avx2,
    mr: MR,
    np: NP,
    a_format: AFormat::I16,
    func: gemm_entry,
};

/// Quantization kernels of this path.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "avx2_minmax_f32x32",
    name_quantize: "avx2_quantize_f32x32_div",
    isa: Isa::Avx2,
    minmax,
    quantize_u8,
    quantize_i8,
};

/// `R` rows x `Q` column quads of one panel over `k4` groups, written as `4 * Q` columns.
///
/// # Safety
/// The CPU must have AVX2. For `r < R`: `a + r * lda .. + 4 * k4` (i16) is readable and
/// `c + r * ldc .. + 4 * Q` is writable; `b + 64 * g + 16 * q .. + 16` is readable for
/// `g < k4`, `q < Q` (`b` points at the first quad of this pass inside a panel; it is not
/// used when `k4 == 0`).
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const Q: usize>(
    a: *const i16,
    lda: usize,
    b: *const i8,
    k4: usize,
    c: *mut i32,
    ldc: usize,
) {
    let zero = _mm256_setzero_si256();
    let mut acc = [[zero; Q]; R];
    for g in 0..k4 {
        let mut av = [zero; R];
        for r in 0..R {
            // SAFETY: row `r`, elements `4 * g .. + 4` with `g < k4` (contract above).
            let word = unsafe { a.add(r * lda + 4 * g).cast::<i64>().read_unaligned() };
            av[r] = _mm256_set1_epi64x(word);
        }
        for q in 0..Q {
            // SAFETY: group `g < k4`, quad `q < Q`: 16 readable bytes (contract above).
            let raw = unsafe { _mm_loadu_si128(b.add(g * GROUP_BYTES + 16 * q).cast()) };
            let bv = _mm256_cvtepi8_epi16(raw);
            for r in 0..R {
                acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(av[r], bv));
            }
        }
    }
    for r in 0..R {
        for h in 0..Q / 2 {
            // Lanes of quad q: (c0, k01) (c0, k23) (c1, k01) ... (c3, k23). `vphaddd` sums the
            // pairs within 128-bit halves: [c0 c1 c4 c5 | c2 c3 c6 c7]; the permute restores
            // the column order.
            let s = _mm256_hadd_epi32(acc[r][2 * h], acc[r][2 * h + 1]);
            let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
            // SAFETY: row `r`, columns `8 * h .. + 8` of this pass are writable (contract).
            unsafe { _mm256_storeu_si256(c.add(r * ldc + 8 * h).cast(), s) };
        }
    }
}

type TileFn = unsafe fn(*const i16, usize, *const i8, usize, *mut i32, usize);

/// The monomorphized tile for `rows` (`1..=MR`).
fn tile_fn(rows: usize) -> TileFn {
    match rows {
        1 => tile::<1, QN>,
        2 => tile::<2, QN>,
        3 => tile::<3, QN>,
        4 => tile::<4, QN>,
        _ => unreachable!("tile rows out of range"),
    }
}

/// # Safety
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`GemmKernel::run`] (the
/// only caller).
unsafe fn gemm_entry(t: &mut Tile<'_>) {
    let AData::I16(a) = t.a else {
        unreachable!("the avx2 kernel reads i16 activations")
    };
    debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels >= 1 && t.panels <= NP);
    debug_assert!(a.len() >= (t.rows - 1) * t.lda + 4 * t.k4);
    debug_assert!(t.b.len() >= (t.panels - 1) * t.panel_stride + t.k4 * GROUP_BYTES);
    debug_assert!(t.c.len() >= (t.rows - 1) * t.ldc + t.panels * PANEL);
    let f = tile_fn(t.rows);
    for p in 0..t.panels {
        for pass in 0..4 / QN {
            // The first quad of this pass in panel `p`. `wrapping_add`: with `k4 == 0` the
            // panels may be empty, and the pointer is then never read.
            let b =
                t.b.as_ptr()
                    .wrapping_add(p * t.panel_stride + 16 * QN * pass);
            // SAFETY: `GemmKernel::run` asserted that the CPU supports `Isa::Avx2` and the bounds
            // `tile` relies on: A rows at `r * lda` hold `4 * k4` values; panel `p` holds
            // `64 * k4` bytes from `p * panel_stride`, of which this pass reads bytes
            // `16 * QN * pass .. + 16 * QN` of each group; C row `r` holds `16 * panels` values
            // from `r * ldc`, of which this pass writes `4 * QN` from `16 * p + 4 * QN * pass`
            // (inside the row since `p < panels`).
            unsafe {
                f(
                    a.as_ptr(),
                    t.lda,
                    b,
                    t.k4,
                    t.c.as_mut_ptr().add(p * PANEL + 4 * QN * pass),
                    t.ldc,
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization kernels.
// ---------------------------------------------------------------------------------------------

/// Folds 8 lanes into the min/max accumulators and the largest masked exponent.
///
/// `_mm256_min_ps(v, acc)` returns `acc` when `v` is NaN, like the reference's `v < min`.
#[inline]
#[target_feature(enable = "avx2")]
fn minmax_step(v: __m256, mn: &mut __m256, mx: &mut __m256, ex: &mut __m256i) {
    let expo = _mm256_set1_epi32(0x7f80_0000);
    *mn = _mm256_min_ps(v, *mn);
    *mx = _mm256_max_ps(v, *mx);
    *ex = _mm256_max_epu32(*ex, _mm256_and_si256(_mm256_castps_si256(v), expo));
}

/// Horizontal min of 8 lanes (any order: the values are equal up to the sign of a zero).
#[inline]
#[target_feature(enable = "avx2")]
fn hmin(v: __m256) -> f32 {
    let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_min_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// Horizontal max of 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn minmax_impl(x: &[f32]) -> MinMax {
    const W: usize = 8;
    let n = x.len();
    let p = x.as_ptr();
    let mut mn = [_mm256_set1_ps(f32::INFINITY); 4];
    let mut mx = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
    let mut ex = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    while i + 4 * W <= n {
        for u in 0..4 {
            // SAFETY: `i + 8 * u + 8 <= n`: inside `x`.
            let v = unsafe { _mm256_loadu_ps(p.add(i + W * u)) };
            minmax_step(v, &mut mn[u], &mut mx[u], &mut ex[u]);
        }
        i += 4 * W;
    }
    while i + W <= n {
        // SAFETY: `i + 8 <= n`: inside `x`.
        let v = unsafe { _mm256_loadu_ps(p.add(i)) };
        minmax_step(v, &mut mn[0], &mut mx[0], &mut ex[0]);
        i += W;
    }
    let mn = _mm256_min_ps(_mm256_min_ps(mn[0], mn[1]), _mm256_min_ps(mn[2], mn[3]));
    let mx = _mm256_max_ps(_mm256_max_ps(mx[0], mx[1]), _mm256_max_ps(mx[2], mx[3]));
    let ex = _mm256_max_epu32(
        _mm256_max_epu32(ex[0], ex[1]),
        _mm256_max_epu32(ex[2], ex[3]),
    );
    // Any lane whose exponent bits are all ones makes the unsigned max exactly 0x7f80_0000.
    let bad = _mm256_cmpeq_epi32(ex, _mm256_set1_epi32(0x7f80_0000));
    let body = MinMax {
        min: hmin(mn),
        max: hmax(mx),
        nonfinite: _mm256_movemask_epi8(bad) != 0,
    };
    body.merge(reference::minmax(&x[i..]))
}

/// # Safety
/// The CPU must have AVX2 (checked by [`QuantKernels::minmax`]).
unsafe fn minmax(x: &[f32]) -> MinMax {
    // SAFETY: `QuantKernels::minmax` asserted that `Isa::Avx2` is supported; the kernel reads
    // only inside `x`.
    unsafe { minmax_impl(x) }
}

/// 8 lanes of `round_half_even(clamp(x / scale, lo, hi))` as i32, in the reference's order of
/// operations (`cvtps2dq` rounds to nearest even under the default MXCSR).
#[inline]
#[target_feature(enable = "avx2")]
fn quant_lanes(v: __m256, scale: __m256, lo: __m256, hi: __m256) -> __m256i {
    let q = _mm256_div_ps(v, scale);
    let q = _mm256_max_ps(q, lo);
    let q = _mm256_min_ps(q, hi);
    _mm256_cvtps_epi32(q)
}

/// Order of the dwords after two in-lane packs of four registers (see [`quantize_impl`]).
const PACK_ORDER: [i32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Shared body of the u8 and i8 quantizers: 32 lanes per step, then 8, then the scalar
/// reference for the last `< 8` values.
///
/// `SIGNED` selects signed saturation for the final narrowing (the values are in range either
/// way, so the saturation never triggers: u8 lanes hold `0..=255`, i8 lanes `-127..=127`).
///
/// # Safety
/// The CPU must have AVX2; `out.len() == x.len()`; `lo`, `hi` and `zp` keep every lane in the
/// output type's range.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quantize_impl<const SIGNED: bool>(
    x: &[f32],
    out: *mut u8,
    scale: f32,
    lo: f32,
    hi: f32,
    zp: i32,
) -> usize {
    const W: usize = 8;
    let n = x.len();
    let xp = x.as_ptr();
    let (sv, lov, hiv, zpv) = (
        _mm256_set1_ps(scale),
        _mm256_set1_ps(lo),
        _mm256_set1_ps(hi),
        _mm256_set1_epi32(zp),
    );
    let order = _mm256_setr_epi32(
        PACK_ORDER[0],
        PACK_ORDER[1],
        PACK_ORDER[2],
        PACK_ORDER[3],
        PACK_ORDER[4],
        PACK_ORDER[5],
        PACK_ORDER[6],
        PACK_ORDER[7],
    );
    let mut i = 0;
    while i + 4 * W <= n {
        let mut q = [_mm256_setzero_si256(); 4];
        for (u, qu) in q.iter_mut().enumerate() {
            // SAFETY: `i + 8 * u + 8 <= n`: inside `x`.
            let v = unsafe { _mm256_loadu_ps(xp.add(i + W * u)) };
            *qu = _mm256_add_epi32(quant_lanes(v, sv, lov, hiv), zpv);
        }
        // In-lane packs: dwords end up as [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7].
        let ab = _mm256_packs_epi32(q[0], q[1]);
        let cd = _mm256_packs_epi32(q[2], q[3]);
        let bytes = if SIGNED {
            _mm256_packs_epi16(ab, cd)
        } else {
            _mm256_packus_epi16(ab, cd)
        };
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        // SAFETY: `i + 32 <= n = out.len()`: 32 bytes inside `out`.
        unsafe { _mm256_storeu_si256(out.add(i).cast(), bytes) };
        i += 4 * W;
    }
    while i + W <= n {
        // SAFETY: `i + 8 <= n`: inside `x`.
        let v = unsafe { _mm256_loadu_ps(xp.add(i)) };
        let q = _mm256_add_epi32(quant_lanes(v, sv, lov, hiv), zpv);
        let w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        let bytes = if SIGNED {
            _mm_packs_epi16(w, w)
        } else {
            _mm_packus_epi16(w, w)
        };
        // SAFETY: `i + 8 <= n = out.len()`: 8 bytes inside `out`.
        unsafe { _mm_storel_epi64(out.add(i).cast(), bytes) };
        i += W;
    }
    i
}

/// # Safety
/// The CPU must have AVX2; `out.len() == x.len()` (both checked by
/// [`QuantKernels::quantize_u8`]).
unsafe fn quantize_u8(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    let zpf = zp as f32;
    // SAFETY: `QuantKernels::quantize_u8` asserted that `Isa::Avx2` is supported; the lengths
    // match (asserted above); the clamp to `[0 - zp, 255 - zp]` plus `zp` keeps lanes in u8.
    let done = unsafe {
        quantize_impl::<false>(
            x,
            out.as_mut_ptr(),
            scale,
            0.0 - zpf,
            255.0 - zpf,
            zp as i32,
        )
    };
    reference::quantize_u8(&x[done..], scale, zp, &mut out[done..]);
}

/// # Safety
/// The CPU must have AVX2; `out.len() == x.len()` (both checked by
/// [`QuantKernels::quantize_i8`]).
unsafe fn quantize_i8(x: &[f32], scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    // SAFETY: `QuantKernels::quantize_i8` asserted that `Isa::Avx2` is supported; the lengths
    // match (asserted above); the clamp to `[-127, 127]` keeps lanes in i8.
    let done =
        unsafe { quantize_impl::<true>(x, out.as_mut_ptr().cast(), scale, -127.0, 127.0, 0) };
    reference::quantize_i8(&x[done..], scale, &mut out[done..]);
}
