//! The AVX2 activation-quantization kernels ([`QUANT`]): min/max from the bits, reciprocal
//! quantization with a tie test, and the division kernels as the exact fallback.
//!
//! Apart from the GEMM kernels because they share nothing with them but the path: they read
//! floats and write the u8/i8 activations the GEMM then consumes. The helpers they share with
//! the AVX-512 path ([`Recip`], [`minmax_from_bits`]) are in `mod.rs`; the design and the
//! exactness argument are in `README.md` in this folder, "Quantization kernels".

use super::{has_fma, minmax_from_bits, Recip, TIE_MASK};
use crate::isa::Isa;
use crate::kernel::QuantKernels;
use crate::reference::{self, MinMax};
use core::arch::x86_64::*;

/// Quantization kernels of this path.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "avx2_minmax_f32x32_bits",
    name_quantize: "avx2_quantize_f32x64_recip",
    isa: Isa::Avx2,
    minmax,
    quantize_u8,
    quantize_i8,
};

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

/// Min/max with float comparisons (NaN ignored like the reference); used when
/// [`minmax_bits`] finds a non-finite element.
///
/// # Safety
/// The CPU must have AVX2.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn minmax_float(x: &[f32]) -> MinMax {
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

/// Min/max from integer reductions of the bits ([`minmax_from_bits`]): three integer ops per
/// vector, which run on all four vector pipes, where `vminps`/`vmaxps` share two.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn minmax_bits(x: &[f32]) -> MinMax {
    const W: usize = 8;
    if x.is_empty() {
        return MinMax::EMPTY;
    }
    let n = x.len();
    let p = x.as_ptr();
    let mut smax = [_mm256_set1_epi32(i32::MIN); 4];
    let mut umin = [_mm256_set1_epi32(-1); 4];
    let mut umax = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    while i + 4 * W <= n {
        for u in 0..4 {
            // SAFETY: `i + 8 * u + 8 <= n`: inside `x`.
            let v = _mm256_castps_si256(unsafe { _mm256_loadu_ps(p.add(i + W * u)) });
            smax[u] = _mm256_max_epi32(smax[u], v);
            umin[u] = _mm256_min_epu32(umin[u], v);
            umax[u] = _mm256_max_epu32(umax[u], v);
        }
        i += 4 * W;
    }
    while i + W <= n {
        // SAFETY: `i + 8 <= n`: inside `x`.
        let v = _mm256_castps_si256(unsafe { _mm256_loadu_ps(p.add(i)) });
        smax[1] = _mm256_max_epi32(smax[1], v);
        umin[1] = _mm256_min_epu32(umin[1], v);
        umax[1] = _mm256_max_epu32(umax[1], v);
        i += W;
    }
    let smax = _mm256_max_epi32(
        _mm256_max_epi32(smax[0], smax[1]),
        _mm256_max_epi32(smax[2], smax[3]),
    );
    let umin = _mm256_min_epu32(
        _mm256_min_epu32(umin[0], umin[1]),
        _mm256_min_epu32(umin[2], umin[3]),
    );
    let umax = _mm256_max_epu32(
        _mm256_max_epu32(umax[0], umax[1]),
        _mm256_max_epu32(umax[2], umax[3]),
    );
    let (mut a, mut b, mut c) = ([0i32; W], [0u32; W], [0u32; W]);
    // SAFETY: 32 writable bytes each.
    unsafe {
        _mm256_storeu_si256(a.as_mut_ptr().cast(), smax);
        _mm256_storeu_si256(b.as_mut_ptr().cast(), umin);
        _mm256_storeu_si256(c.as_mut_ptr().cast(), umax);
    }
    let (mut smax, mut umin, mut umax) = (a[0], b[0], c[0]);
    for l in 1..W {
        smax = smax.max(a[l]);
        umin = umin.min(b[l]);
        umax = umax.max(c[l]);
    }
    for &v in &x[i..] {
        let bits = v.to_bits();
        smax = smax.max(bits as i32);
        umin = umin.min(bits);
        umax = umax.max(bits);
    }
    match minmax_from_bits(smax, umin, umax) {
        Some(mm) => mm,
        // SAFETY: same CPU requirement as this function.
        None => unsafe { minmax_float(x) },
    }
}

/// # Safety
/// The CPU must have AVX2 (checked by [`QuantKernels::minmax`]).
unsafe fn minmax(x: &[f32]) -> MinMax {
    // SAFETY: `QuantKernels::minmax` asserted that `Isa::Avx2` is supported; the kernel reads
    // only inside `x`.
    unsafe { minmax_bits(x) }
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

/// Lanes per block of the reciprocal kernel: two steps of four vectors, one tie check.
const QBLOCK: usize = 64;

/// The division kernel on all of `x` (vectors, then the scalar reference for the last `< 8`).
///
/// # Safety
/// The CPU must have AVX2; `out.len() == x.len()`.
#[target_feature(enable = "avx2")]
unsafe fn quantize_div<const SIGNED: bool>(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    let zpf = zp as f32;
    let (lo, hi, zpi) = if SIGNED {
        (-127.0, 127.0, 0)
    } else {
        (0.0 - zpf, 255.0 - zpf, zp as i32)
    };
    // SAFETY: the CPU has AVX2, the lengths match, and the clamp (plus `zp`) keeps every lane in
    // the output type's range.
    let done = unsafe { quantize_impl::<SIGNED>(x, out.as_mut_ptr(), scale, lo, hi, zpi) };
    if SIGNED {
        for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
            *o = reference::quantize_i8_one(v, scale) as u8;
        }
    } else {
        reference::quantize_u8(&x[done..], scale, zp, &mut out[done..]);
    }
}

/// Recomputes one block with the division kernel (a lane of it is near a tie). Out of line so
/// that its constants do not take registers from the hot loop.
///
/// # Safety
/// The CPU must have AVX2; `out.len() == x.len()`.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn redo_block<const SIGNED: bool>(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    // SAFETY: same requirements as this function.
    unsafe { quantize_div::<SIGNED>(x, scale, zp, out) }
}

/// The reciprocal kernel (see [`Recip`] and `README.md`) on the whole blocks of `x`; returns how
/// many elements it did (a multiple of [`QBLOCK`]; all whole blocks unless ties are frequent).
///
/// Per 8 lanes: `vfmadd` (with the load), `vcvttps2dq` (no clamp: see [`Recip`]), `vpminuw`
/// into the block's word minimum, `vpshufb` (high words to one half of each 128-bit lane); per
/// 32 lanes two `vpor`, `vpackuswb` (signed words to unsigned bytes: negative words, from
/// quotients below the range, saturate to the lower bound 0, words above 255 to 255) and
/// `vpermd`. A lane is near a tie when its fraction (low word) is below 16; the low words of the
/// block's unsigned word minimum are the minima of the lanes' fractions, so one `vpand` with
/// [`TIE_MASK`] and one `vpcmpeqd` per block find any such lane (the high words, minima of
/// integer parts, are masked off).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out.len() == x.len()`; `p` comes from [`Recip::new`] with
/// `off = zp` (u8) or `off = 127` (i8).
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_recip<const SIGNED: bool>(
    x: &[f32],
    scale: f32,
    zp: u8,
    p: Recip,
    out: &mut [u8],
) -> usize {
    let n = x.len() / QBLOCK * QBLOCK;
    let (r, k) = (_mm256_set1_ps(p.r), _mm256_set1_ps(p.k));
    let tie = _mm256_set1_epi32(TIE_MASK);
    let bias = _mm256_set1_epi8(127);
    let top_i8 = _mm256_set1_epi8(-2); // 254
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
    // High words of the four dwords of each 128-bit lane to its bytes 0..8 (`lo`) or 8..16
    // (`hi`), zeros elsewhere (index -1).
    #[rustfmt::skip]
    let (lo_half, hi_half) = (
        _mm256_setr_epi8(
            2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
            2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
        ),
        _mm256_setr_epi8(
            -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6, 7, 10, 11, 14, 15,
            -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6, 7, 10, 11, 14, 15,
        ),
    );
    let mut redone = 0;
    for (blk, (xb, ob)) in x[..n]
        .chunks_exact(QBLOCK)
        .zip(out[..n].chunks_exact_mut(QBLOCK))
        .enumerate()
    {
        let xp = xb.as_ptr();
        let mut acc = _mm256_set1_epi16(-1);
        for h in 0..QBLOCK / 32 {
            let mut t = [_mm256_setzero_si256(); 4];
            for (u, tu) in t.iter_mut().enumerate() {
                // SAFETY: `32 * h + 8 * u + 8 <= 64 = xb.len()`.
                let v = unsafe { _mm256_loadu_ps(xp.add(32 * h + 8 * u)) };
                *tu = _mm256_cvttps_epi32(_mm256_fmadd_ps(v, r, k));
                acc = _mm256_min_epu16(acc, *tu);
            }
            // Words [t0 lane high words | t1 ...] per 128-bit lane, as `vpackssdw` would give.
            let ab = _mm256_or_si256(
                _mm256_shuffle_epi8(t[0], lo_half),
                _mm256_shuffle_epi8(t[1], hi_half),
            );
            let cd = _mm256_or_si256(
                _mm256_shuffle_epi8(t[2], lo_half),
                _mm256_shuffle_epi8(t[3], hi_half),
            );
            let mut b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
            if SIGNED {
                // Integer parts saturated to 0..=255: 255 (a quotient of 127.5 or more, clamped
                // to 127 by the reference) becomes 254, then 127 is taken off.
                b = _mm256_sub_epi8(_mm256_min_epu8(b, top_i8), bias);
            }
            // SAFETY: bytes `32 * h .. + 32` of `ob` (64 bytes).
            unsafe { _mm256_storeu_si256(ob.as_mut_ptr().add(32 * h).cast(), b) };
        }
        // All ones in the lanes whose fraction minimum is below 16.
        let near = _mm256_cmpeq_epi32(_mm256_and_si256(acc, tie), _mm256_setzero_si256());
        if _mm256_testz_si256(near, near) == 0 {
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
/// The CPU must have AVX2; `out.len() == x.len()` (both checked by
/// [`QuantKernels::quantize_u8`]).
unsafe fn quantize_u8(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    let done = match Recip::new(scale, zp as f32) {
        // SAFETY: `QuantKernels::quantize_u8` asserted that `Isa::Avx2` is supported, FMA is
        // checked here, the lengths match, and `p` is the u8 one for this `zp`.
        Some(p) if has_fma() => unsafe { quantize_recip::<false>(x, scale, zp, p, out) },
        _ => 0,
    };
    // SAFETY: AVX2 is supported (see above); equal lengths.
    unsafe { quantize_div::<false>(&x[done..], scale, zp, &mut out[done..]) }
}

/// # Safety
/// The CPU must have AVX2; `out.len() == x.len()` (both checked by
/// [`QuantKernels::quantize_i8`]).
unsafe fn quantize_i8(x: &[f32], scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    // SAFETY: `i8` and `u8` have the same layout; the same length as `out`, which is not used
    // while this view lives.
    let out = unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len()) };
    let done = match Recip::new(scale, 127.0) {
        // SAFETY: `QuantKernels::quantize_i8` asserted that `Isa::Avx2` is supported, FMA is
        // checked here, the lengths match, and `p` is the i8 one.
        Some(p) if has_fma() => unsafe { quantize_recip::<true>(x, scale, 0, p, out) },
        _ => 0,
    };
    // SAFETY: AVX2 is supported (see above); equal lengths.
    unsafe { quantize_div::<true>(&x[done..], scale, 0, &mut out[done..]) }
}
