//! The dot-product 4-bit GEMM microkernel (`udot`, ARMv8.2; `README.md` of `int4`, "The
//! arithmetic").
//!
//! Levels are unsigned (`q ∈ 0..=15`) and activations u8, so `udot` (u8 × u8, four products per
//! i32 lane) takes both as they are: no sign flip and no column-sum correction, unlike the int8
//! kernel. A 16-byte quad of a `K8N16` block (4 columns × 4 bytes) unpacks with one `and` (k
//! 0..4 of each column) and one shift (k 4..8); each row's 8 activations of the block sit in
//! the low 64 bits of a register, lanes 0 and 1 of `udot .4b[lane]`.
//!
//! Per group, the sums are multiplied by the group's codes (`mla` with the 16 codes widened to
//! u32) into `Σ cd·P`, and the row's activation sum by `cm` (`mla` by scalar) into `Σ cm·A`.
//!
//! Exactness: every lane adds non-negative products (at most `4·255·15` per `udot`), and the
//! driver's chunks keep every sum below 2^31 (`int4::gemm`); u32 arithmetic is then exact.
//!
//! Tile: up to [`MR`] = 4 rows × 16 columns: 16 group sums, one quad's two unpacked vectors and
//! the rows' activations in registers; the two outputs (32 vectors) are updated once per group.

use super::int4_codes;
use crate::int4::kernel::{Int4Kernel, Int4Ptrs, Int4Tile};
use crate::int4::weight::BLOCK_BYTES;
use crate::isa::Isa;
use core::arch::aarch64::*;

/// Most rows of a tile.
const MR: usize = 4;

/// The 4-bit GEMM kernel of this path (and of one row on i8mm, whose CPUs have dotprod).
pub static GEMM_INT4: Int4Kernel = Int4Kernel {
    name: "dotprod_u8u4_i32_udot_4x16",
    isa: Isa::Dotprod,
    mr: MR,
    np: 1,
    func: gemm_entry,
};

/// `R` rows × 16 columns: `(Σ cd·P, Σ cm·A)`, 4 columns per vector.
///
/// # Safety
/// The CPU must have dotprod. For `r < R`, `g < groups`, block `h < groups·group_blocks`:
/// `a + r·lda + 8h .. + 8`, `asum + r·lds + g`, `b + 64h .. + 64` and
/// `cd/cm + g·code_step .. + 16` are readable.
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::needless_range_loop)]
unsafe fn panel<const R: usize>(p: &Int4Ptrs) -> [[[uint32x4_t; 4]; 2]; MR] {
    let zero = vdupq_n_u32(0);
    let mask = vdupq_n_u8(0x0F);
    let mut out = [[[zero; 4]; 2]; MR];
    for g in 0..p.groups {
        let mut t = [[zero; 4]; R];
        for h in g * p.group_blocks..(g + 1) * p.group_blocks {
            // SAFETY: rows `r < R` and block `h < groups·group_blocks`: 8 readable bytes each
            // (contract above).
            let av: [uint8x16_t; R] = std::array::from_fn(|r| unsafe {
                vcombine_u8(vld1_u8(p.a.add(r * p.lda + 8 * h)), vdup_n_u8(0))
            });
            for q in 0..4 {
                // SAFETY: block `h`, quad `q < 4`: 16 of its 64 readable bytes.
                let v = unsafe { vld1q_u8(p.b.add(BLOCK_BYTES * h + 16 * q)) };
                let (lo, hi) = (vandq_u8(v, mask), vshrq_n_u8::<4>(v));
                for r in 0..R {
                    t[r][q] = dot_lane!("udot", uint32x4_t, t[r][q], lo, av[r], 0);
                    t[r][q] = dot_lane!("udot", uint32x4_t, t[r][q], hi, av[r], 1);
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
                out[r][0][q] = vmlaq_u32(out[r][0][q], t[r][q], cd[q]);
                out[r][1][q] = vmlaq_n_u32(out[r][1][q], cm[q], asum);
            }
        }
    }
    out
}

int4_gemm_entry!(1, 2, 3, 4);
