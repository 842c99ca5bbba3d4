//! The NEON 4-bit GEMM microkernel (every ARMv8 CPU; `README.md` of `int4`, "The arithmetic").
//!
//! Without the dot-product instructions, the products are widened: `umull`/`umlal` multiply
//! the u8 activations by the unsigned levels into u16 lanes, one product of k and one of k + 4
//! per lane (at most `2·255·15 = 7,650`: exact), and `uadalp` adds adjacent lanes into u32
//! accumulators. A 16-byte quad of a `K8N16` block (4 columns × 4 bytes) unpacks with one `and`
//! (k 0..4) and one shift (k 4..8); the row's 4 + 4 activations of the block are broadcast to
//! every 32-bit lane. At the end of a group, `addp` folds each column's two lanes.
//!
//! Per group, the sums are multiplied by the group's codes (`mla` with the 16 codes widened to
//! u32) into `Σ cd·P`, and the row's activation sum by `cm` (`mla` by scalar) into `Σ cm·A`.
//! Every term is non-negative and the driver's chunks keep every sum below 2^31
//! (`int4::gemm`), so u32 arithmetic is exact.
//!
//! Tile: up to [`MR`] = 2 rows × 16 columns: 16 accumulators (two per column quad and row),
//! one quad's two unpacked vectors and the rows' broadcast activations in registers.

use super::int4_codes;
use crate::int4::kernel::{Int4Kernel, Int4Ptrs, Int4Tile};
use crate::int4::weight::BLOCK_BYTES;
use crate::isa::Isa;
use core::arch::aarch64::*;

/// Most rows of a tile.
const MR: usize = 2;

/// The 4-bit GEMM kernel of this path.
pub static GEMM_INT4: Int4Kernel = Int4Kernel {
    name: "neon_u8u4_i32_umlal_2x16",
    isa: Isa::Neon,
    mr: MR,
    np: 1,
    func: gemm_entry,
};

/// `R` rows × 16 columns: `(Σ cd·P, Σ cm·A)`, 4 columns per vector.
///
/// # Safety
/// The CPU must have NEON. For `r < R`, `g < groups`, block `h < groups·group_blocks`:
/// `a + r·lda + 8h .. + 8`, `asum + r·lds + g`, `b + 64h .. + 64` and
/// `cd/cm + g·code_step .. + 16` are readable.
#[target_feature(enable = "neon")]
#[allow(clippy::needless_range_loop)]
unsafe fn panel<const R: usize>(p: &Int4Ptrs) -> [[[uint32x4_t; 4]; 2]; MR] {
    let zero = vdupq_n_u32(0);
    let mask = vdupq_n_u8(0x0F);
    let mut out = [[[zero; 4]; 2]; MR];
    for g in 0..p.groups {
        // Per row and quad: columns 0-1 and 2-3 of the quad, two u32 lanes per column.
        let mut acc = [[[zero; 2]; 4]; R];
        for h in g * p.group_blocks..(g + 1) * p.group_blocks {
            // The row's activations of the block: k 0..4 and k 4..8, each in every 32-bit lane.
            let av: [(uint8x16_t, uint8x16_t); R] = std::array::from_fn(|r| {
                // SAFETY: row `r < R` and block `h < groups·group_blocks`: 8 readable bytes
                // (contract above).
                let raw = unsafe { vld1_u8(p.a.add(r * p.lda + 8 * h)) };
                let row = vreinterpret_u32_u8(raw);
                (
                    vreinterpretq_u8_u32(vdupq_lane_u32::<0>(row)),
                    vreinterpretq_u8_u32(vdupq_lane_u32::<1>(row)),
                )
            });
            for q in 0..4 {
                // SAFETY: block `h`, quad `q < 4`: 16 of its 64 readable bytes.
                let v = unsafe { vld1q_u8(p.b.add(BLOCK_BYTES * h + 16 * q)) };
                let (lo, hi) = (vandq_u8(v, mask), vshrq_n_u8::<4>(v));
                for r in 0..R {
                    let (a_lo, a_hi) = av[r];
                    let s01 = vmlal_u8(
                        vmull_u8(vget_low_u8(lo), vget_low_u8(a_lo)),
                        vget_low_u8(hi),
                        vget_low_u8(a_hi),
                    );
                    let s23 = vmlal_high_u8(vmull_high_u8(lo, a_lo), hi, a_hi);
                    acc[r][q][0] = vpadalq_u16(acc[r][q][0], s01);
                    acc[r][q][1] = vpadalq_u16(acc[r][q][1], s23);
                }
            }
        }
        // SAFETY: group `g < groups`: 16 readable codes each (contract above).
        let (cd, cm) = unsafe {
            (
                int4_codes(p.cd.add(g * p.code_step)),
                int4_codes(p.cm.add(g * p.code_step)),
            )
        };
        for r in 0..R {
            // SAFETY: row `r < R`, group `g < groups` (contract above).
            let asum = unsafe { *p.asum.add(r * p.lds + g) } as u32;
            for q in 0..4 {
                let t = vpaddq_u32(acc[r][q][0], acc[r][q][1]);
                out[r][0][q] = vmlaq_u32(out[r][0][q], t, cd[q]);
                out[r][1][q] = vmlaq_n_u32(out[r][1][q], cm[q], asum);
            }
        }
    }
    out
}

int4_gemm_entry!(1, 2);
