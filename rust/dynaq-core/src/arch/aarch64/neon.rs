//! Plain NEON kernels (ARMv8.0 Advanced SIMD, every aarch64 CPU): an exact widening GEMM
//! microkernel and the min/max and quantization kernels (also used by the dotprod and i8mm paths).
//!
//! GEMM: one `ld4` de-interleaves a 64-byte `K4N16` group (16 columns x 4 k, column-major) into
//! four vectors, one per k, each holding that k for the 16 columns; `sxtl`/`sxtl2` widen them to
//! eight i16x8 vectors. A row's 4 activations of the group are widened to i16 (u8 fits), and
//! `smlal`/`smlal2` by element add `b[k][c..c+4] * a[k]` into i32 accumulators, 4 columns each.
//! Every product is at most `255 * 128` in magnitude and is formed exactly in i32 (no i16
//! saturation anywhere, unlike a pairwise `u8 x s8 -> i16` scheme); the i32 sums are the
//! scalar kernel's, modulo 2^32, which is exact whenever the true sum fits i32 (the driver
//! guarantees it: at most `K_CHUNK * 255 * 128 < 2^31`).
//!
//! Tile: [`MR`] = 4 rows x 16 columns: 16 accumulators + 8 widened B vectors + 1 row of A = 25
//! of the 32 vector registers.

use crate::isa::Isa;
use crate::kernel::{AData, AFormat, GemmKernel, QuantKernels, Tile};
use crate::pack::GROUP_BYTES;
use crate::reference::{self, MinMax};
use core::arch::aarch64::*;

/// Most rows of a tile.
const MR: usize = 4;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "neon_u8s8_i32_smlal_4x16",
    isa: Isa::Neon,
    mr: MR,
    np: 1,
    a_format: AFormat::U8,
    func: gemm_entry,
};

/// Quantization kernels of this path.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "neon_minmax_f32x16",
    name_quantize: "neon_quantize_f32x16_div",
    isa: Isa::Neon,
    minmax,
    quantize_u8,
    quantize_i8,
};

/// Computes `R` rows x 16 columns over `k4` groups and stores them to `c`.
///
/// # Safety
/// The CPU must have NEON. For `r < R`: `a + r * lda .. + 4 * k4` is readable and
/// `c + r * ldc .. + 16` writable; `b .. + 64 * k4` is readable.
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize>(
    a: *const u8,
    lda: usize,
    b: *const i8,
    k4: usize,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    for g in 0..k4 {
        // SAFETY: group `g < k4`: 64 readable bytes at `b + 64 g` (contract above).
        let bv = unsafe { vld4q_s8(b.add(g * GROUP_BYTES)) };
        // `bk[k][h]`: k-th value of the group for columns `8 h .. 8 h + 8`, as i16.
        let bk = [bv.0, bv.1, bv.2, bv.3].map(|v| [vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v)]);
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r < R`, bytes `4 g .. 4 g + 4` with `g < k4` (contract above).
            let word = unsafe { a.add(r * lda + 4 * g).cast::<u32>().read_unaligned() };
            // Lanes 0..4: the row's 4 activations as i16 (0..=255, exact).
            let av = vget_low_s16(vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(word as u64))));
            macro_rules! k {
                ($k:literal) => {
                    acc[0] = vmlal_lane_s16::<$k>(acc[0], vget_low_s16(bk[$k][0]), av);
                    acc[1] = vmlal_high_lane_s16::<$k>(acc[1], bk[$k][0], av);
                    acc[2] = vmlal_lane_s16::<$k>(acc[2], vget_low_s16(bk[$k][1]), av);
                    acc[3] = vmlal_high_lane_s16::<$k>(acc[3], bk[$k][1], av);
                };
            }
            k!(0);
            k!(1);
            k!(2);
            k!(3);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, v) in acc.iter().enumerate() {
            // SAFETY: row `r < R`, columns `4 q .. 4 q + 4 <= 16`: writable (contract above).
            unsafe { vst1q_s32(c.add(r * ldc + 4 * q), *v) };
        }
    }
}

gemm_entry_4x16!("neon");

// ---------------------------------------------------------------------------------------------
// Quantization kernels (shared by the dotprod and i8mm paths).
// ---------------------------------------------------------------------------------------------

/// Vectors per step of the quantization loops (16 floats).
const QV: usize = 4;

/// Min/max as the reference computes it: `v < min` / `v > max` comparisons with `bsl` (a NaN
/// compares false and never enters; infinities do), and the non-finite flag from the largest
/// masked exponent. A zero extreme may differ from the reference's in sign only.
#[target_feature(enable = "neon")]
fn minmax_impl(x: &[f32]) -> MinMax {
    let expo = vdupq_n_u32(0x7f80_0000);
    let mut mn = [vdupq_n_f32(f32::INFINITY); QV];
    let mut mx = [vdupq_n_f32(f32::NEG_INFINITY); QV];
    let mut ex = [vdupq_n_u32(0); QV];
    let chunks = x.chunks_exact(4 * QV);
    let rest = chunks.remainder();
    for ch in chunks {
        for j in 0..QV {
            // SAFETY: `ch` holds `4 QV` floats; lanes `4 j .. 4 j + 4` are inside it.
            let v = unsafe { vld1q_f32(ch.as_ptr().add(4 * j)) };
            mn[j] = vbslq_f32(vcltq_f32(v, mn[j]), v, mn[j]);
            mx[j] = vbslq_f32(vcgtq_f32(v, mx[j]), v, mx[j]);
            ex[j] = vmaxq_u32(ex[j], vandq_u32(vreinterpretq_u32_f32(v), expo));
        }
    }
    let mut r = reference::minmax(rest);
    for j in 0..QV {
        let (mut lo, mut hi) = ([0f32; 4], [0f32; 4]);
        // SAFETY: 4-float arrays, exactly one vector each.
        unsafe {
            vst1q_f32(lo.as_mut_ptr(), mn[j]);
            vst1q_f32(hi.as_mut_ptr(), mx[j]);
        }
        for l in 0..4 {
            r = r.merge(MinMax {
                min: lo[l],
                max: hi[l],
                nonfinite: false,
            });
        }
        r.nonfinite |= vmaxvq_u32(ex[j]) == 0x7f80_0000;
    }
    r
}

/// `R` results of 4 lanes each, clamped with `bsl` exactly as `maxps`/`minps` in the reference
/// (a NaN quotient gives `lo`), then rounded half to even by `fcvtns`.
#[inline(always)]
fn quantize_lanes(v: float32x4_t, s: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> int32x4_t {
    // SAFETY: only reached from the `#[target_feature(enable = "neon")]` kernels below, and
    // NEON is part of every aarch64 target's baseline anyway; no memory is touched.
    unsafe {
        let d = vdivq_f32(v, s);
        let d = vbslq_f32(vcgtq_f32(d, lo), d, lo);
        let d = vbslq_f32(vcltq_f32(d, hi), d, hi);
        vcvtnq_s32_f32(d)
    }
}

/// `out = clamp(round(x / scale) + zp, 0, 255)`: the IEEE division and the reference's clamp and
/// rounding, 16 lanes at a time; the tail (fewer than 16) runs the reference itself.
#[target_feature(enable = "neon")]
fn quantize_u8_impl(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    let zpf = zp as f32;
    let (s, lo, hi) = (
        vdupq_n_f32(scale),
        vdupq_n_f32(0.0 - zpf),
        vdupq_n_f32(255.0 - zpf),
    );
    let z = vdupq_n_s32(zp as i32);
    let n = x.len() - x.len() % (4 * QV);
    for i in (0..n).step_by(4 * QV) {
        let mut q = [vdupq_n_s32(0); QV];
        for (j, q) in q.iter_mut().enumerate() {
            // SAFETY: `i + 4 j + 4 <= n <= x.len()`.
            let v = unsafe { vld1q_f32(x.as_ptr().add(i + 4 * j)) };
            // In 0..=255: the rounded quotient is within [-zp, 255 - zp].
            *q = vaddq_s32(quantize_lanes(v, s, lo, hi), z);
        }
        let lo16 = vcombine_u16(vqmovun_s32(q[0]), vqmovun_s32(q[1]));
        let hi16 = vcombine_u16(vqmovun_s32(q[2]), vqmovun_s32(q[3]));
        let bytes = vcombine_u8(vqmovn_u16(lo16), vqmovn_u16(hi16));
        // SAFETY: `i + 16 <= n <= out.len()`.
        unsafe { vst1q_u8(out.as_mut_ptr().add(i), bytes) };
    }
    reference::quantize_u8(&x[n..], scale, zp, &mut out[n..]);
}

/// `out = clamp(round(x / scale), -127, 127)`, as [`quantize_u8_impl`].
#[target_feature(enable = "neon")]
fn quantize_i8_impl(x: &[f32], scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    let (s, lo, hi) = (vdupq_n_f32(scale), vdupq_n_f32(-127.0), vdupq_n_f32(127.0));
    let n = x.len() - x.len() % (4 * QV);
    for i in (0..n).step_by(4 * QV) {
        let mut q = [vdupq_n_s32(0); QV];
        for (j, q) in q.iter_mut().enumerate() {
            // SAFETY: `i + 4 j + 4 <= n <= x.len()`.
            let v = unsafe { vld1q_f32(x.as_ptr().add(i + 4 * j)) };
            *q = quantize_lanes(v, s, lo, hi);
        }
        let lo16 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        let hi16 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        let bytes = vcombine_s8(vqmovn_s16(lo16), vqmovn_s16(hi16));
        // SAFETY: `i + 16 <= n <= out.len()`.
        unsafe { vst1q_s8(out.as_mut_ptr().add(i), bytes) };
    }
    reference::quantize_i8(&x[n..], scale, &mut out[n..]);
}

/// # Safety
/// The CPU must have NEON.
pub(crate) unsafe fn minmax(x: &[f32]) -> MinMax {
    // SAFETY: NEON is present (caller's contract).
    unsafe { minmax_impl(x) }
}

/// # Safety
/// The CPU must have NEON; `x.len() == out.len()` (asserted).
pub(crate) unsafe fn quantize_u8(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    // SAFETY: NEON is present (caller's contract).
    unsafe { quantize_u8_impl(x, scale, zp, out) }
}

/// # Safety
/// The CPU must have NEON; `x.len() == out.len()` (asserted).
pub(crate) unsafe fn quantize_i8(x: &[f32], scale: f32, out: &mut [i8]) {
    // SAFETY: NEON is present (caller's contract).
    unsafe { quantize_i8_impl(x, scale, out) }
}
