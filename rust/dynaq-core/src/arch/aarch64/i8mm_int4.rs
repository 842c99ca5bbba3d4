//! The i8mm 4-bit GEMM microkernel (`ummla`, ARMv8.6; `README.md` of `int4`, "The arithmetic").
//!
//! `ummla vd.4s, vn.16b, vm.16b` treats `vn` as a 2 x 8 matrix of unsigned bytes (two rows of
//! activations over 8 k), `vm` as another (two columns of levels over the same 8 k) and adds the
//! 2 x 2 product to `vd` = `[r0 c0, r0 c1, r1 c0, r1 c1]`: 32 multiply-adds per instruction,
//! twice `udot`'s. Levels (`q ∈ 0..=15`) and activations are both unsigned: no correction term.
//!
//! The `K8N16` panels need no new packing. A block's quad (16 bytes: 4 columns × 4 bytes, low
//! nibbles k 0..4, high nibbles k 4..8) unpacks with one `and` and one shift; `zip1`/`zip2` on
//! 32-bit lanes of the two give `[c0 k0..4, c0 k4..8, c1 k0..4, c1 k4..8]` and the same for
//! `c2, c3`: two `vm` operands of 2 columns × 8 k. A row pair's 8 activations of the block are
//! two 8-byte loads; an odd last row is paired with zeros and its results are not stored.
//!
//! Per group, each column pair's 2 x 2 sums are multiplied by the group's codes laid out
//! `[cd c0, cd c1, cd c0, cd c1]` (`mla`) into `Σ cd·P`; `Σ cm·A` is summed per row after the
//! main loop, as in the dotprod kernel. One row (M = 1) would waste half of every `ummla`: the
//! dispatch gives it the dotprod kernel where the CPU has dotprod.
//!
//! Exactness: every lane adds non-negative products (at most `8·255·15` per `ummla`), and the
//! driver's chunks keep every sum below 2^31 (`int4::gemm`); u32 arithmetic is then exact.
//!
//! Tile: [`MR`] = 4 rows (2 row pairs) × 16 columns: 16 group sums and 16 `Σ cd·P` vectors
//! (the compiler may keep some of the latter on the stack: they change once per group).

use super::int4_codes;
use crate::int4::kernel::{Int4Kernel, Int4Ptrs, Int4Tile};
use crate::int4::weight::BLOCK_BYTES;
use crate::isa::Isa;
use core::arch::aarch64::*;

/// Most rows of a tile (a multiple of 2: `ummla` works on row pairs).
const MR: usize = 4;
/// Row pairs of a tile.
const PAIRS: usize = MR / 2;

/// The 4-bit GEMM kernel of this path.
pub static GEMM_INT4: Int4Kernel = Int4Kernel {
    name: "i8mm_u8u4_i32_ummla_4x16",
    isa: Isa::I8mm,
    mr: MR,
    np: 1,
    func: gemm_entry,
};

/// `R` rows × 16 columns: `(Σ cd·P, Σ cm·A)`, 4 columns per vector.
///
/// # Safety
/// The CPU must have i8mm. For `r < R`, `g < groups`, block `h < groups·group_blocks`:
/// `a + r·lda + 8h .. + 8`, `asum + r·lds + g`, `b + 64h .. + 64` and
/// `cd/cm + g·code_step .. + 16` are readable.
#[target_feature(enable = "neon,i8mm")]
#[allow(clippy::needless_range_loop)]
unsafe fn panel<const R: usize>(p: &Int4Ptrs) -> [[[uint32x4_t; 4]; 2]; MR] {
    let pairs = R.div_ceil(2);
    let zero = vdupq_n_u32(0);
    let mask = vdupq_n_u8(0x0F);
    // `x1[pair][2q + j]`: column pair `4q + 2j, 4q + 2j + 1` of the row pair, as `ummla` lays
    // it out.
    let mut x1 = [[zero; 8]; PAIRS];
    for g in 0..p.groups {
        let mut t = [[zero; 8]; PAIRS];
        for h in g * p.group_blocks..(g + 1) * p.group_blocks {
            let av: [uint8x16_t; PAIRS] = std::array::from_fn(|pair| {
                let row = |r: usize| {
                    if r < R {
                        // SAFETY: row `r < R`, block `h`: 8 readable bytes (contract above).
                        unsafe { vld1_u8(p.a.add(r * p.lda + 8 * h)) }
                    } else {
                        vdup_n_u8(0)
                    }
                };
                vcombine_u8(row(2 * pair), row(2 * pair + 1))
            });
            for q in 0..4 {
                // SAFETY: block `h`, quad `q < 4`: 16 of its 64 readable bytes.
                let v = unsafe { vld1q_u8(p.b.add(BLOCK_BYTES * h + 16 * q)) };
                let lo = vreinterpretq_u32_u8(vandq_u8(v, mask));
                let hi = vreinterpretq_u32_u8(vshrq_n_u8::<4>(v));
                let c01 = vreinterpretq_u8_u32(vzip1q_u32(lo, hi));
                let c23 = vreinterpretq_u8_u32(vzip2q_u32(lo, hi));
                for pair in 0..pairs {
                    t[pair][2 * q] = mmla!("ummla", uint32x4_t, t[pair][2 * q], av[pair], c01);
                    t[pair][2 * q + 1] =
                        mmla!("ummla", uint32x4_t, t[pair][2 * q + 1], av[pair], c23);
                }
            }
        }
        // SAFETY: group `g < groups`: 16 readable codes (contract above).
        let cd = unsafe { int4_codes(p.cd.add(g * p.code_step)) };
        for q in 0..4 {
            let c01 = vcombine_u32(vget_low_u32(cd[q]), vget_low_u32(cd[q]));
            let c23 = vcombine_u32(vget_high_u32(cd[q]), vget_high_u32(cd[q]));
            for pair in 0..pairs {
                x1[pair][2 * q] = vmlaq_u32(x1[pair][2 * q], t[pair][2 * q], c01);
                x1[pair][2 * q + 1] = vmlaq_u32(x1[pair][2 * q + 1], t[pair][2 * q + 1], c23);
            }
        }
    }
    let mut out = [[[zero; 4]; 2]; MR];
    for pair in 0..pairs {
        for q in 0..4 {
            // `[r0 c0, r0 c1, r1 c0, r1 c1]` and the same for `c2, c3`: the two rows' quads.
            let x = vreinterpretq_u64_u32(x1[pair][2 * q]);
            let y = vreinterpretq_u64_u32(x1[pair][2 * q + 1]);
            out[2 * pair][0][q] = vreinterpretq_u32_u64(vzip1q_u64(x, y));
            out[2 * pair + 1][0][q] = vreinterpretq_u32_u64(vzip2q_u64(x, y));
        }
    }
    for g in 0..p.groups {
        // SAFETY: group `g < groups`: 16 readable codes (contract above).
        let cm = unsafe { int4_codes(p.cm.add(g * p.code_step)) };
        for r in 0..R {
            // SAFETY: row `r < R`, group `g < groups` (contract above).
            let asum = unsafe { *p.asum.add(r * p.lds + g) } as u32;
            for q in 0..4 {
                out[r][1][q] = vmlaq_n_u32(out[r][1][q], cm[q], asum);
            }
        }
    }
    out
}

int4_gemm_entry!(1, 2, 3, 4);
