//! Int8 matrix-multiply extension kernels (ARMv8.6 i8mm): an exact u8 x s8 GEMM microkernel on
//! `usmmla`. Quantization runs the NEON kernels.
//!
//! `usmmla vd.4s, vn.16b, vm.16b` treats `vn` as a 2 x 8 matrix of **unsigned** bytes (two rows
//! of A over 8 k), `vm` as a 2 x 8 matrix of **signed** bytes (two columns of B over the same 8
//! k) and adds the 2 x 2 product to `vd` = `[r0 c0, r0 c1, r1 c0, r1 c1]`: 32 multiply-adds per
//! instruction, on exactly our operand types, with no correction term.
//!
//! The `K4N16` panels need no new packing: for a pair of K groups `g, g + 1` and a column quad
//! (16 bytes per group: 4 columns x 4 k), `zip1`/`zip2` on 32-bit lanes interleave the two
//! groups' vectors into `[c0 k0..4, c0 k4..8, c1 k0..4, c1 k4..8]` and the same for `c2, c3`,
//! i.e. two `vm` operands of 2 columns x 8 k. A row pair's 8 activations are two 8-byte loads.
//! An odd last group is paired with zeros (B) and a 4-byte load (A), so nothing past the tile's
//! K is read; an odd last row is paired with a zero row, and its results are not stored.
//!
//! Exactness: a lane adds at most `8 * 255 * 128 = 261120` in magnitude per instruction and
//! `usmmla` neither saturates nor narrows; over the longest chunk (`K_CHUNK` = 65536 k) a sum is
//! at most `65536 * 255 * 128 < 2^31`. The accumulators hold the exact sums (and in any case the
//! scalar kernel's i32 sums modulo 2^32).
//!
//! Tile: [`MR`] = 4 rows (2 row pairs) x 16 columns (8 column pairs): 16 accumulators, 2 A
//! vectors and up to 8 raw and 8 interleaved B vectors. A 6-row tile (24 accumulators) fits on
//! paper (31 registers) but the compiler then keeps 2 accumulators on the stack and its loop
//! came out at 8.3 multiply-adds per instruction against 14.2 for 4 rows (`README.md`).

use crate::isa::Isa;
use crate::kernel::{AData, AFormat, GemmKernel, QuantKernels, Tile};
use crate::pack::GROUP_BYTES;
use core::arch::aarch64::*;

/// Most rows of a tile (a multiple of 2: `usmmla` works on row pairs).
const MR: usize = 4;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "i8mm_u8s8_i32_usmmla_4x16",
    isa: Isa::I8mm,
    mr: MR,
    np: 1,
    a_format: AFormat::U8,
    func: gemm_entry,
};

/// Quantization kernels of this path: the NEON ones.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "neon_minmax_f32x16",
    name_quantize: "neon_quantize_f32x16_div",
    isa: Isa::I8mm,
    minmax: super::neon::minmax,
    quantize_u8: super::neon::quantize_u8,
    quantize_i8: super::neon::quantize_i8,
};

/// Computes `R` rows x 16 columns over `k4` groups and stores them to `c`.
///
/// # Safety
/// The CPU must have i8mm. For `r < R`: `a + r * lda .. + 4 * k4` is readable and
/// `c + r * ldc .. + 16` writable; `b .. + 64 * k4` is readable.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile<const R: usize>(
    a: *const u8,
    lda: usize,
    b: *const i8,
    k4: usize,
    c: *mut i32,
    ldc: usize,
) {
    let pairs = R.div_ceil(2);
    let mut acc = [[vdupq_n_s32(0); 8]; MR / 2];
    // One step: groups `g` and `g + 1` (`$two`) or `g` alone (the last of an odd `k4`).
    macro_rules! step {
        ($g:expr, $two:expr) => {{
            let g: usize = $g;
            // A: row pair `p` as `[r 8 k | r + 1 8 k]` (zeros past the rows and the groups).
            let mut av = [vdupq_n_u8(0); MR / 2];
            for (p, av) in av.iter_mut().enumerate().take(pairs) {
                let mut half = [vdup_n_u8(0); 2];
                for (h, half) in half.iter_mut().enumerate() {
                    let r = 2 * p + h;
                    if r < R {
                        let at = r * lda + 4 * g;
                        *half = if $two {
                            // SAFETY: row `r < R`, bytes `4 g .. 4 g + 8` with `g + 2 <= k4`.
                            vcreate_u8(unsafe { a.add(at).cast::<u64>().read_unaligned() })
                        } else {
                            // SAFETY: row `r < R`, bytes `4 g .. 4 g + 4` with `g < k4`.
                            let w = unsafe { a.add(at).cast::<u32>().read_unaligned() };
                            vcreate_u8(w as u64)
                        };
                    }
                }
                *av = vcombine_u8(half[0], half[1]);
            }
            for q in 0..4 {
                // SAFETY: group `g < k4`, quad `q < 4`: 16 readable bytes (contract above).
                let b0 = unsafe { vld1q_s32(b.add(g * GROUP_BYTES + 16 * q).cast()) };
                let b1 = if $two {
                    // SAFETY: group `g + 1 < k4`, quad `q < 4`: 16 readable bytes.
                    unsafe { vld1q_s32(b.add((g + 1) * GROUP_BYTES + 16 * q).cast()) }
                } else {
                    vdupq_n_s32(0)
                };
                // Columns 4q, 4q + 1 and 4q + 2, 4q + 3, each over the 8 k of the step.
                let lo = vreinterpretq_s8_s32(vzip1q_s32(b0, b1));
                let hi = vreinterpretq_s8_s32(vzip2q_s32(b0, b1));
                for (p, acc) in acc.iter_mut().enumerate().take(pairs) {
                    acc[2 * q] = mmla!("usmmla", int32x4_t, acc[2 * q], av[p], lo);
                    acc[2 * q + 1] = mmla!("usmmla", int32x4_t, acc[2 * q + 1], av[p], hi);
                }
            }
        }};
    }
    for gp in 0..k4 / 2 {
        step!(2 * gp, true);
    }
    if k4 % 2 == 1 {
        step!(k4 - 1, false);
    }
    for (p, acc) in acc.iter().enumerate().take(pairs) {
        for q in 0..4 {
            // `acc[2q]` = [r0 c0, r0 c1, r1 c0, r1 c1] of columns 4q, 4q + 1; `acc[2q + 1]` the
            // same for 4q + 2, 4q + 3. The row pair's two rows of the quad:
            let (x, y) = (
                vreinterpretq_s64_s32(acc[2 * q]),
                vreinterpretq_s64_s32(acc[2 * q + 1]),
            );
            let rows = [vzip1q_s64(x, y), vzip2q_s64(x, y)];
            for (h, row) in rows.iter().enumerate() {
                let r = 2 * p + h;
                if r < R {
                    // SAFETY: row `r < R`, columns `4 q .. 4 q + 4 <= 16`: writable.
                    unsafe { vst1q_s32(c.add(r * ldc + 4 * q), vreinterpretq_s32_s64(*row)) };
                }
            }
        }
    }
}

gemm_entry_4x16!("i8mm");
