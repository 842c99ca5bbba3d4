//! Dot-product kernels (ARMv8.2 `sdot`): an exact u8 x s8 GEMM microkernel built on the signed
//! s8 x s8 dot product. Quantization runs the NEON kernels.
//!
//! `sdot vd.4s, vn.16b, vm.16b` adds to each i32 lane the dot product of 4 signed bytes of `vn`
//! with 4 of `vm`. Our activations are u8, so the kernel flips their top bit:
//! `a' = a ^ 0x80`, read as s8, is `a - 128` in `[-128, 127]`, and
//!
//! ```text
//! sum_k a[k] b[k] = sum_k a'[k] b[k] + 128 * sum_k b[k]
//! ```
//!
//! The second term is the column sum of B over the tile's K range, which the kernel forms with
//! one more `sdot` per 4 columns and group, against a vector of ones (shared by all rows).
//!
//! Exactness, with the numbers for the longest chunk the driver hands a kernel (`K_CHUNK` =
//! 65536 k, 16384 groups): each `sdot` lane adds at most `4 * 128 * 128 = 65536` in magnitude, so
//! a row accumulator stays within `16384 * 65536 = 2^30` and a column sum within
//! `65536 * 128 = 2^23` (times 128: `2^30`). Neither wraps; and since `sdot`, the shift and the
//! add are all exact modulo 2^32, the result is the scalar kernel's i32 sum modulo 2^32, i.e.
//! exactly the sum whenever that fits i32 (`|sum| <= 65536 * 255 * 128 < 2^31`). `sdot` never
//! saturates.
//!
//! Tile: [`MR`] = 4 rows x 16 columns: 16 row accumulators, 4 column-sum accumulators, 4 B
//! vectors, 4 rows of A (16 bytes = 4 groups each, used by element) and the ones vector = 29 of
//! 32 vector registers.

use crate::isa::Isa;
use crate::kernel::{AData, AFormat, GemmKernel, QuantKernels, Tile};
use crate::pack::GROUP_BYTES;
use core::arch::aarch64::*;
use core::arch::asm;

/// Most rows of a tile.
const MR: usize = 4;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "dotprod_u8s8_i32_sdot_4x16",
    isa: Isa::Dotprod,
    mr: MR,
    np: 1,
    a_format: AFormat::U8,
    func: gemm_entry,
};

/// Quantization kernels of this path: the NEON ones.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "neon_minmax_f32x16",
    name_quantize: "neon_quantize_f32x16_div",
    isa: Isa::Dotprod,
    minmax: super::neon::minmax,
    quantize_u8: super::neon::quantize_u8,
    quantize_i8: super::neon::quantize_i8,
};

/// `acc + sdot(x, y)` (4 lanes, each `acc + sum of 4 s8 x s8 products`).
macro_rules! sdot {
    ($acc:expr, $x:expr, $y:expr) => {{
        let mut acc: int32x4_t = $acc;
        // SAFETY: only used in `#[target_feature(enable = "neon,dotprod")]` functions, which
        // run only where dotprod was detected; the instruction touches registers only.
        unsafe {
            asm!(
                "sdot {acc:v}.4s, {x:v}.16b, {y:v}.16b",
                acc = inout(vreg) acc,
                x = in(vreg) $x,
                y = in(vreg) $y,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        acc
    }};
}

/// Computes `R` rows x 16 columns over `k4` groups and stores them to `c`.
///
/// Blocks of 4 groups load 16 bytes of each row at once (flipped with one `eor`) and take each
/// group's 4 bytes by element (`sdot .4b[j]`); the last `k4 % 4` groups broadcast the row's 4
/// bytes instead.
///
/// # Safety
/// The CPU must have dotprod. For `r < R`: `a + r * lda .. + 4 * k4` is readable and
/// `c + r * ldc .. + 16` writable; `b .. + 64 * k4` is readable.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile<const R: usize>(
    a: *const u8,
    lda: usize,
    b: *const i8,
    k4: usize,
    c: *mut i32,
    ldc: usize,
) {
    let ones = vdupq_n_s8(1);
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    let mut colsum = [vdupq_n_s32(0); 4];
    // The 4 column quads of group `g`, with their column sums added to `colsum`.
    macro_rules! load_b {
        ($g:expr) => {{
            let mut bq = [vdupq_n_s8(0); 4];
            for (q, v) in bq.iter_mut().enumerate() {
                // SAFETY: group `$g < k4`, quad `q < 4`: 16 readable bytes (contract above).
                *v = unsafe { vld1q_s8(b.add($g * GROUP_BYTES + 16 * q)) };
                colsum[q] = sdot!(colsum[q], *v, ones);
            }
            bq
        }};
    }
    let blocks = k4 / 4;
    for blk in 0..blocks {
        let g0 = 4 * blk;
        let mut av = [vdupq_n_s8(0); R];
        for (r, av) in av.iter_mut().enumerate() {
            // SAFETY: row `r < R`, bytes `4 g0 .. 4 g0 + 16` with `g0 + 4 <= k4`.
            let raw = unsafe { vld1q_u8(a.add(r * lda + 4 * g0)) };
            // The row's 16 activations minus 128, as s8.
            *av = vreinterpretq_s8_u8(veorq_u8(raw, flip));
        }
        macro_rules! group {
            ($j:literal) => {{
                let bq = load_b!(g0 + $j);
                for (r, acc) in acc.iter_mut().enumerate() {
                    for q in 0..4 {
                        acc[q] = dot_lane!("sdot", int32x4_t, acc[q], bq[q], av[r], $j);
                    }
                }
            }};
        }
        group!(0);
        group!(1);
        group!(2);
        group!(3);
    }
    for g in 4 * blocks..k4 {
        let bq = load_b!(g);
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r < R`, bytes `4 g .. 4 g + 4` with `g < k4` (contract above).
            let word = unsafe { a.add(r * lda + 4 * g).cast::<u32>().read_unaligned() };
            // The row's 4 activations in every lane, minus 128 as s8.
            let av = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(word)), flip));
            for q in 0..4 {
                acc[q] = sdot!(acc[q], bq[q], av);
            }
        }
    }
    let corr = colsum.map(|v| vshlq_n_s32::<7>(v));
    for (r, acc) in acc.iter().enumerate() {
        for q in 0..4 {
            // SAFETY: row `r < R`, columns `4 q .. 4 q + 4 <= 16`: writable (contract above).
            unsafe { vst1q_s32(c.add(r * ldc + 4 * q), vaddq_s32(acc[q], corr[q])) };
        }
    }
}

gemm_entry_4x16!("dotprod");
